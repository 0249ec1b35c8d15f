"""Backward (GAE-direction) scans over one chunk of positions, and the GAE combine.

GAE as a composition of affine maps. Walking a row backwards, position t maps the state
(a, v') that arrives from t + 1 (a = running advantage, v' = value of the next generated
token, or the bootstrap) to the state it hands to t − 1:

    generated t:  a ← γλ·a + γ·v' + (r_t − V_t),   v' ← V_t          (a is then adv_t)
    masked t:     a ← a,                           v' ← v'           (identity)

Every such map, and every composition of them, has the form
    a ← α·a + β·v' + ka,    v' ← μ·v' + kv        (μ ∈ {0, 1})
so an element is the 5-tuple (α, β, μ, ka, kv): (γλ, γ, 0, r − V, V) at a generated position,
(1, 0, 1, 0, 0) (the identity) at a masked one or past the end of the row.

Combine order relied on. `tl.associative_scan` calls combine(acc, new), where acc is the
composition of the elements already scanned and new the next element in scan order (checked
in the interpreter for both directions). Our scans always run from later positions to earlier
ones, so acc = the later positions (applied first) and new = the earlier position:

    combine(x, y) = y ∘ x:
        α = α_y·α_x
        β = α_y·β_x + β_y·μ_x
        μ = μ_y·μ_x
        ka = α_y·ka_x + β_y·kv_x + ka_y
        kv = μ_y·kv_x + kv_y

The scan value at t is then the map for positions t..chunk end; applied to the carry (a, v')
arriving from the later chunks it gives adv_t = α·a + β·v' + ka.

Scan direction. With FLIP (the default, R3HF_TRITON_SCAN=flip) a chunk is loaded in reverse
order (lane k holds position start + BLOCK − 1 − k) and scanned forwards; otherwise it is loaded
in order and scanned with reverse=True. Triton issue #4362 reported wrong reverse scans of this
kind on GPU in Triton 3.0; tests/test_triton_backend.py checks both paths on a GPU.
"""

import triton
import triton.language as tl


@triton.jit
def chunk_offsets(start, BLOCK: tl.constexpr, FLIP: tl.constexpr):
    """Positions held by the lanes of a chunk that starts at `start`."""
    if FLIP:
        return start + (BLOCK - 1) - tl.arange(0, BLOCK)
    else:
        return start + tl.arange(0, BLOCK)


@triton.jit
def lane_of(q, start, BLOCK: tl.constexpr, FLIP: tl.constexpr):
    """Lane holding position q (for tl.gather), clamped into the chunk."""
    k = q - start
    if FLIP:
        k = (BLOCK - 1) - k
    return tl.minimum(tl.maximum(k, 0), BLOCK - 1)


@triton.jit
def first_lane(BLOCK: tl.constexpr, FLIP: tl.constexpr):
    """Lane of the chunk's first position, where a backward scan holds the whole chunk."""
    if FLIP:
        return BLOCK - 1
    else:
        return 0


@triton.jit
def lane_value(x, lane, BLOCK: tl.constexpr):
    """x[lane] as a scalar (a sum of one selected element, so order does not matter)."""
    return tl.sum(tl.where(tl.arange(0, BLOCK) == lane, x, tl.zeros_like(x)), axis=0)


@triton.jit
def gae_combine(al_x, be_x, mu_x, ka_x, kv_x, al_y, be_y, mu_y, ka_y, kv_y):
    # x = acc (later positions), y = new (earlier position): returns y ∘ x (see module doc).
    return (
        al_y * al_x,
        al_y * be_x + be_y * mu_x,
        mu_y * mu_x,
        al_y * ka_x + be_y * kv_x + ka_y,
        mu_y * kv_x + kv_y,
    )


@triton.jit
def min_combine(x, y):
    return tl.minimum(x, y)


@triton.jit
def gae_elements(r, v, m, gamma, lam):
    """The 5-tuple of each lane from rewards r, values v (fp32) and mask m (int1)."""
    one = tl.full(r.shape, 1.0, tl.float32)
    zero = tl.zeros(r.shape, tl.float32)
    al = tl.where(m, one * (gamma * lam), one)
    be = tl.where(m, one * gamma, zero)
    mu = tl.where(m, zero, one)
    ka = tl.where(m, r - v, zero)
    kv = tl.where(m, v, zero)
    return al, be, mu, ka, kv


@triton.jit
def backward_scan5(al, be, mu, ka, kv, FLIP: tl.constexpr):
    if FLIP:
        return tl.associative_scan((al, be, mu, ka, kv), 0, gae_combine)
    else:
        return tl.associative_scan((al, be, mu, ka, kv), 0, gae_combine, reverse=True)


@triton.jit
def backward_min(x, FLIP: tl.constexpr):
    """min over positions >= t within the chunk, at every t."""
    if FLIP:
        return tl.associative_scan(x, 0, min_combine)
    else:
        return tl.associative_scan(x, 0, min_combine, reverse=True)


@triton.jit
def store_chunk_map(s_ptr, plane, base, i_c, al, be, mu, ka, kv, BLOCK_T: tl.constexpr, FLIP: tl.constexpr):
    """Store the chunk's composed map (the scan value at its first position) into [5, plane] at chunk
    id base + i_c (base: the row's chunk 0, see kernels/varlen.py)."""
    k = first_lane(BLOCK_T, FLIP)
    p_s = s_ptr + base + i_c
    tl.store(p_s, lane_value(al, k, BLOCK_T))
    tl.store(p_s + plane, lane_value(be, k, BLOCK_T))
    tl.store(p_s + 2 * plane, lane_value(mu, k, BLOCK_T))
    tl.store(p_s + 3 * plane, lane_value(ka, k, BLOCK_T))
    tl.store(p_s + 4 * plane, lane_value(kv, k, BLOCK_T))


@triton.jit
def carry_from_later(s_ptr, plane, base, c, nC, a, vn, BLOCK_C: tl.constexpr):
    """Apply the summaries of chunks nC − 1 … c + 1 of a row (later first) to the carry (a, v').

    s_ptr: fp32 [5, plane] chunk summaries (α, β, μ, ka, kv), the row's chunk j at id base + j
    (base = b·nC for a padded row, the sequence's first chunk id when packed). Blocks of BLOCK_C
    summaries are loaded later-first and composed with a forward scan (the same combine), so
    any number of chunks works.
    """
    lane = tl.arange(0, BLOCK_C)
    for blk in range(0, nC - 1 - c, BLOCK_C):
        cid = nC - 1 - blk - lane
        ok = cid > c
        p = s_ptr + base + cid
        al = tl.load(p, mask=ok, other=1.0)
        be = tl.load(p + plane, mask=ok, other=0.0)
        mu = tl.load(p + 2 * plane, mask=ok, other=1.0)
        ka = tl.load(p + 3 * plane, mask=ok, other=0.0)
        kv = tl.load(p + 4 * plane, mask=ok, other=0.0)
        al, be, mu, ka, kv = tl.associative_scan((al, be, mu, ka, kv), 0, gae_combine)
        last = BLOCK_C - 1
        A = lane_value(al, last, BLOCK_C)
        Bt = lane_value(be, last, BLOCK_C)
        M = lane_value(mu, last, BLOCK_C)
        KA = lane_value(ka, last, BLOCK_C)
        KV = lane_value(kv, last, BLOCK_C)
        a, vn = A * a + Bt * vn + KA, M * vn + KV
    return a, vn
