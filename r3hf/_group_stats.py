"""Group statistics of `ops.group_advantages`: the backend-independent middle layer (issue 12).

A backend (C++, Triton) implements `group_advantages` and `fused_reward_group_advantages` as two
kernels, a heavy per-row pass and a light finish pass, around the tiny statistics computed here in
torch on [B]-sized tensors (all-gathered across ranks when `group=` is given). This docstring is
the contract; `row_pass` and `finish` below are its executable torch form, and
`group_advantages(row_pass, finish, ...)` / `fused_reward_group_advantages(fused_row_pass, finish,
...)` wire a backend's kernels together. A backend function is then

    def group_advantages(rewards, response_mask, index, estimator, gamma, eps, scale, group):
        return _group_stats.group_advantages(my_row_pass, my_finish, rewards, response_mask, index,
                                             estimator, gamma, eps, scale, group)

The dispatcher calls a backend's `reward_to_go`, `group_advantages` and
`fused_reward_group_advantages` with keyword arguments named as in `r3hf.reference` (so `group`
is always passed; hand it to `affine`). reward_to_go(rewards, response_mask, gamma, holes) is the
row scan alone (holes "skip" as in step 1 below, or "discount": R = m_t·r_t + γ·R at every
position, still 0 written at masked positions). Inputs are the normalised arguments of
`r3hf._validate`: rewards [B, L] any float dtype (read as
fp32), response_mask bool [B, L], index int64 [B] (global group ids: rows with equal ids form a
group wherever they are; an int G has already become (global row offset + arange(B)) // G),
gamma float in [0, 1], eps float > 0, estimator in ESTIMATORS, scale in SCALES, group None or a
torch.distributed process group.

1. Row pass  `row_pass(rewards, response_mask, gamma) -> (returns, stats)`; no cross-row data.
   - returns: float32 [B, L], the masked reward-to-go G with holes="skip" (= ops.reward_to_go):
     per row backwards with R = 0, at a generated t R = r_t + γ·R and G_t = R; a masked t
     carries R unchanged and G_t = 0. Accumulate in fp32.
   - stats: float64 [B, 5], contiguous, columns (STAT_* constants):
       0 COUNT  n_i = number of generated tokens of the row (Σ_t m);
       1 SUM_R  s_i = Σ_t m·r_t                      (the row's score: Σ of its rewards);
       2 M2_R   Σ_t m·(r_t − s_i/n_i)²               (0 when n_i = 0);
       3 SUM_G  Σ_t m·G_t;
       4 M2_G   Σ_t m·(G_t − SUM_G/n_i)²             (0 when n_i = 0).
     `affine` reads only the columns the estimator needs (COLUMNS below: COUNT and SUM_R for
     grpo/rloo, + M2_R for grpo_process, COUNT/SUM_G/M2_G for reinforce_pp, + SUM_R for
     reinforce_pp_baseline); a row pass told the estimator may fill the others with NaN.
     Sums are over generated tokens only. Compute them in float64 (C++: double accumulators,
     one pass per M2 column around a per-row shift c, the row's value at its last generated
     token: M2 = Σ m·(x − c)² − (Σ m·x − n·c)²/n, which loses at most log2(n + 1) bits; SUM_G and
     M2_G are reduced inside the reverse scan itself, so G is never written). A GPU
     kernel may accumulate in fp32 per block if it combines blocks around the row mean (Chan et
     al.); results must match `row_pass` within the fuzz tolerance (rtol 1e-4, atol 2e-5·scale).
   The fused variant `fused_row_pass(hidden, weight, bias, response_mask, prompt_len, logprobs,
   ref_logprobs, kl_coef, kl_estimator, kl_clamp, first, beta_c, reward_clip, gamma) ->
   (rewards, returns, stats)` first forms rewards = ops.token_rewards(ops.prefix_scores(...))
   (float32 [B, L], returned) without a [B, S] scores tensor, then the same row pass on them.

2. Group statistics (here, `affine`): all-gather (COUNT..M2_G, index) across `group`, then one
   per-row affine map (shift_i, scale_i), float32 [B] each, and which finish applies. With
   ȳ_g and σ_g the mean and unbiased std of s over the rows of group g (every row counts, also an
   all-masked one whose s is 0, as in veRL), and "fewer than 2 values ⇒ mean 0, std 1"
   (veRL 0.9.1's singleton rule, applied to every statistic):
     grpo                  shift = ȳ_g; scale = 1/(σ_g + eps) ("group"), 1/(σ_batch(s) + eps)
                           ("batch"), 1 ("none").
     rloo                  shift = (Σ_{j∈g} s_j − s_i)/(|g| − 1), 0 for a singleton; scale = 1.
     reinforce_pp          token-level whitening of G over the whole batch: shift = mean of G,
                           scale = rsqrt(unbiased var of G + eps) (veRL's masked_whiten form).
     reinforce_pp_baseline the same whitening of G − ȳ_g: shift = ȳ_g + mean(G − ȳ), scale =
                           rsqrt(var(G − ȳ) + eps).
     grpo_process          over the generated tokens of the group: shift = μ_g^tok, scale =
                           1/(σ_g^tok + eps) ("group"), 1/(σ^tok over the batch + eps) ("batch"),
                           1 ("none"); here the finish works on rewards (ON_REWARDS).
   Token-level statistics merge the per-row (COUNT, SUM, M2) in float64 (Chan's parallel
   formula), so no [B, L] data crosses ranks. Without `group` this step makes no host sync
   (~40 tiny torch ops, ~0.5-1 ms on 2 CPU cores at B = 1024; a backend chasing launch latency
   may hand its own step 2 to the wiring, `affine_fn=`, if it returns the same: the C++ backend
   does, r3hf::group_row_affine, ~0.1 ms). The data errors (no
   generated token in the whole batch; fewer than 2 for the whitening estimators) are raised by
   r3hf._validate before the row pass, or, with `group`, here after the gather on every rank
   alike (`check_tokens`).

3. Finish pass  `finish(rewards, returns, response_mask, shift, scale, gamma, on_rewards) -> A`
   float32 [B, L], 0 at masked positions:
     on_rewards False:  A = m·(G − shift_i)·scale_i                        (elementwise);
     on_rewards True:   A = reward_to_go(m·(r − shift_i)·scale_i, m, γ)    (one more row scan,
                        holes="skip"; recomputed from r rather than G − shift·count-to-go, which
                        cancels badly when the shift is large).
   shift and scale are float32 [B]; compute in fp32.

Per-position baselines (issue 21, `baseline="position"`; semantics: r3hf.reference.group). The
passes take keyword arguments that select this mode and return more; the wiring below calls them
with `baseline` only when it is "position", so a backend without the mode never sees it (it must
not list "baseline" in its OPTIONS). Position p (0-based) of a generated token = the number of
generated tokens before it in its row (holes and padding skipped); n_i = the row's generated count.
Row i of group g "holds" H_{i,p} = G at its p-th generated token for p < n_i, and its last value
G_{i,n_i−1} (its last generated token's return, = its reward there) for p >= n_i; 0 for an
all-masked row. The positions' layout comes from `position_layout(index, response_mask, group,
cu_seqlens) -> Positions(ids, n_groups, width, squares)`:
   ids      int64 [B] dense group ids in [0, n_groups) (global over `group`'s ranks; `dense_ids`);
   n_groups int, > every id (exact on CPU and with `group`; B, an upper bound, on other devices,
            so no host sync: table rows no id maps to stay 0 and are never read);
   width    int W >= every n_i: L padded (max L over ranks with `group`), the longest response
            region packed (read on the host, as the packed reference does);
   squares  bool: whether the statistics need sums of squares (grpo with scale="group",
            reinforce_pp_baseline); when False a row pass may leave sums[1] unwritten (any value).
1p. Row pass  `row_pass(rewards, response_mask, gamma, positions=Positions) -> (returns, stats,
   sums, last)`, also in the row pass (no extra pass over [B, L] data):
   - returns, stats: as in step 1; only COUNT and SUM_R are read in this mode (others may be NaN);
   - sums float64 [2, n_groups, W], contiguous, zero-initialised by the pass:
       sums[0, g, p] = Σ_{i: ids_i = g, n_i > p} G_i at its p-th generated token,
       sums[1, g, p] = the same Σ of G² (the rows still generating at p only: `affine_position`
       adds the ended rows' held values from `last`, which is cheaper than writing them);
     accumulated in float64 in an order that does not depend on thread count or scheduling
     (C++: one group per task, its rows in row order; a GPU kernel may use float64 atomics only
     if it states the results are then order-dependent in the last bits).
   - last float64 [B]: G at the row's last generated token (0 for an all-masked row).
   `fused_row_pass(..., positions=Positions)` -> (rewards, returns, stats, sums, last) likewise.
2p. Group statistics  `affine_position(stats, sums, last, positions, estimator, eps, scale, group)
   -> (shift, scale)`, float32 [n_groups, W] each, contiguous. With `group` the per-position
   tables, group sizes and held values are all-reduced (summed) over the global dense ids. With
   c_g the rows of g (every row counts), S1/S2 = Σ_j H_{j,p} / H_{j,p}² over g, μ = S1/c_g, sd the
   unbiased std (singleton: μ = 0, sd = 1), all in float64:
     rloo                  shift = μ, scale = c_g/(c_g − 1) (singleton: 0, 1): m·(G − μ)·c/(c − 1)
                           = m·(G − mean of the other rows' H at p), since H_{i,p} = G there;
     grpo                  shift = μ, scale = 1/(sd + eps) ("group"), 1/(σ_batch(s) + eps)
                           ("batch", s = SUM_R as in row mode), 1 ("none");
     reinforce_pp_baseline x = G − μ whitened over every generated token of the batch: shift =
                           μ + mean(x), scale = rsqrt(unbiased var(x) + eps), from the tables
                           (Σx = Σ_{g,p} S1^act − D·μ, Σx² = Σ S2^act − 2μ·S1^act + D·μ², D the
                           rows still generating at p).
3p. Finish  `finish(rewards, returns, response_mask, shift, scale, gamma, False, ids=ids) -> A`:
   A_{i,t} = m·(G_{i,t} − shift[ids_i, p])·scale[ids_i, p] with p the position of t (fp32; G
   recomputed or read as in step 3). on_rewards is always False in this mode.
Packed: the same keywords next to `cu_seqlens`; ids are per sequence [N], positions count the
generated tokens of each sequence, and `last` is [N].
A backend may hand its own step 2p to the wiring (`affine_position_fn=`, same signature and results;
the C++ backend: one pass per group over its [W] slice, the torch form kept for `group`), and may
skip the wiring altogether where a group's statistics depend on its own rows only (rloo; grpo with
scale "group"/"none"; no `group`): the C++ backend then runs steps 1p-3p in one pass per group
(`r3hf::group_position_advantages`), bitwise equal to its three passes.

Packed batches (issue 16, `cu_seqlens` int64 [N + 1]): a sequence is a row. A backend listing
"cu_seqlens" in its OPTIONS for these ops is called with keyword `cu_seqlens`; its passes then take
it too: row_pass(rewards [T], response_mask [T], gamma, cu_seqlens=) -> (returns [T], stats [N, 5]),
finish(..., shift [N], scale [N], gamma, on_rewards, cu_seqlens=) -> [T], fused_row_pass(hidden
[T, D], ..., prompt_len=None, ..., cu_seqlens=). Each sequence's statistics cover its response
region only (r3hf.reference.packed); every position outside the response regions is 0.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

# The spec's data check and distributed helpers; names kept here for the backends.
from .reference.data_checks import check_tokens  # noqa: F401
from .reference.dist import all_gather_rows, world_sizes  # noqa: F401

ESTIMATORS = ("grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "grpo_process")
SCALES = ("group", "batch", "none")
N_STATS = 5
STAT_COUNT, STAT_SUM_R, STAT_M2_R, STAT_SUM_G, STAT_M2_G = range(N_STATS)
# The stats columns each estimator's group statistics read (the others may be NaN).
COLUMNS = {
    "grpo": (STAT_COUNT, STAT_SUM_R),
    "rloo": (STAT_COUNT, STAT_SUM_R),
    "reinforce_pp": (STAT_COUNT, STAT_SUM_G, STAT_M2_G),
    "reinforce_pp_baseline": (STAT_COUNT, STAT_SUM_R, STAT_SUM_G, STAT_M2_G),
    "grpo_process": (STAT_COUNT, STAT_SUM_R, STAT_M2_R),
}
BASELINES = ("row", "position")
POSITION_ESTIMATORS = ("grpo", "rloo", "reinforce_pp_baseline")  # the estimators with a group baseline
POSITION_COLUMNS = (STAT_COUNT, STAT_SUM_R)  # the stats columns read with baseline="position"


class Positions(NamedTuple):
    """The layout of the per-position tables (see the module docstring, "Per-position baselines")."""

    ids: torch.Tensor  # int64 [B] (packed: [N]) dense group ids
    n_groups: int
    width: int
    squares: bool


# --- 1 and 3: the torch form of the backend passes --------------------------------------------


def _scan(x: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Reward-to-go with holes="skip" in fp32 (x already 0 where masked)."""
    B, L = x.shape
    running = x.new_zeros(B)
    out = x.new_zeros(B, L)
    for t in reversed(range(L)):
        running = torch.where(mask[:, t], x[:, t] + gamma * running, running)
        out[:, t] = torch.where(mask[:, t], running, 0.0)
    return out


def _row_moments(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(count, sum, M2 around the row mean) of x over mask, float64 [B] each."""
    xd = torch.where(mask, x.double(), 0.0)
    n = mask.sum(1, dtype=torch.float64)
    total = xd.sum(1)
    mean = torch.where(n > 0, total / n.clamp_min(1), 0.0)
    m2 = torch.where(mask, (xd - mean[:, None]) ** 2, 0.0).sum(1)
    return n, total, m2


def row_pass(rewards: torch.Tensor, response_mask: torch.Tensor, gamma: float, cu_seqlens=None, *,
             positions: Positions | None = None):
    """-> (returns float32 [B, L], stats float64 [B, 5]); see the module docstring, step 1.
    Packed ([T], cu_seqlens [N + 1]) -> (returns [T], stats [N, 5]), a sequence per row.
    With `positions` (step 1p) -> (returns, stats, sums float64 [2, n_groups, W], last float64 [B])."""
    if cu_seqlens is not None:
        from .reference.packed import Packing

        p = Packing(cu_seqlens, response_mask)
        out = row_pass(p.rows(rewards), p.rows(response_mask), gamma, positions=positions)
        return (p.unpack(out[0]), *out[1:])
    r = torch.where(response_mask, rewards.float(), 0.0)
    returns = _scan(r, response_mask, gamma)
    n, s, m2_r = _row_moments(r, response_mask)
    _, sum_g, m2_g = _row_moments(returns, response_mask)
    stats = torch.stack([n, s, m2_r, sum_g, m2_g], dim=1)
    if positions is None:
        return returns, stats
    return (returns, stats, *position_sums(returns, response_mask, positions))


def _position_of(mask: torch.Tensor) -> torch.Tensor:
    """p of every position, int64 [B, L]: the generated tokens before it (−1 before the first)."""
    return mask.long().cumsum(1) - 1


def position_sums(returns: torch.Tensor, response_mask: torch.Tensor, positions: Positions):
    """The per-position tables of step 1p from G [B, L] -> (sums float64 [2, n_groups, W], last float64 [B])."""
    ids, n_groups, W, _ = positions
    B, L = response_mask.shape
    g = returns.double()
    # Masked positions go to a spare column W, dropped afterwards: no host sync for a nonzero().
    pos = torch.where(response_mask, _position_of(response_mask), W)
    rows = ids[:, None].expand(B, L)
    sums = torch.zeros(2, n_groups, W + 1, dtype=torch.float64, device=returns.device)
    sums[0].index_put_((rows, pos), torch.where(response_mask, g, 0.0), accumulate=True)
    sums[1].index_put_((rows, pos), torch.where(response_mask, g * g, 0.0), accumulate=True)
    n = response_mask.sum(1)
    last_t = torch.where(response_mask, torch.arange(L, device=returns.device), -1).amax(1, keepdim=True) if L else None
    last = torch.where(n > 0, g.gather(1, last_t.clamp_min(0))[:, 0], 0.0) if L else g.new_zeros(B)
    return sums[:, :, :W].contiguous(), last


def finish(rewards, returns, response_mask, shift, scale, gamma: float, on_rewards: bool, cu_seqlens=None, *,
           ids=None):
    """-> advantages float32 [B, L]; see the module docstring, step 3. Packed: [T], shift/scale [N].
    With `ids` (step 3p): shift and scale are float32 [n_groups, W] tables read at (ids_i, p)."""
    if cu_seqlens is not None:
        from .reference.packed import Packing

        p = Packing(cu_seqlens, response_mask)
        rows = finish(p.rows(rewards), p.rows(returns), p.rows(response_mask), shift, scale, gamma, on_rewards,
                      ids=ids)
        return p.unpack(rows)
    if ids is not None:
        p = _position_of(response_mask).clamp(0, max(shift.shape[1] - 1, 0))
        at = (ids[:, None].expand_as(p), p)
        return torch.where(response_mask, (returns - shift[at]) * scale[at], 0.0)
    if on_rewards:
        x = torch.where(response_mask, (rewards.float() - shift[:, None]) * scale[:, None], 0.0)
        return _scan(x, response_mask, gamma)
    return torch.where(response_mask, (returns - shift[:, None]) * scale[:, None], 0.0)


# --- distributed helpers ----------------------------------------------------------------------


def _dist():
    import torch.distributed as dist

    return dist


def row_offset(B: int, group, device) -> tuple[int, int]:
    """(this rank's first global row, global B): ranks hold consecutive rows in rank order."""
    sizes = world_sizes(B, group, device)
    rank = _dist().get_rank(group)
    return sum(sizes[:rank]), sum(sizes)


# --- 2: group statistics ------------------------------------------------------------------------


def _by_group(values: torch.Tensor, inverse: torch.Tensor, n_groups: int) -> torch.Tensor:
    return torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add_(0, inverse, values)


def _mean_std(values: torch.Tensor, inverse: torch.Tensor, n_groups: int):
    """Per-row mean and unbiased std of `values` over its group; mean 0, std 1 for a singleton."""
    k = _by_group(torch.ones_like(values), inverse, n_groups)
    mean = _by_group(values, inverse, n_groups) / k
    sq = _by_group((values - mean[inverse]) ** 2, inverse, n_groups)
    std = (sq / (k - 1).clamp_min(1)).sqrt()
    single = k < 2
    mean = torch.where(single, 0.0, mean)
    std = torch.where(single, 1.0, std)
    return mean[inverse], std[inverse], k[inverse]


def _merge(n, total, m2, inverse, n_groups):
    """Chan's merge of per-row (count, sum, M2) into per-group (count, mean, M2), float64 [G]."""
    N = _by_group(n, inverse, n_groups)
    mean = _by_group(total, inverse, n_groups) / N.clamp_min(1)
    row_mean = torch.where(n > 0, total / n.clamp_min(1), 0.0)
    M2 = _by_group(m2 + n * (row_mean - mean[inverse]) ** 2, inverse, n_groups)
    return N, mean, M2


def _token_mean_std(n, total, m2, inverse, n_groups):
    """Per-row mean and unbiased std over the generated tokens of its group (fewer than 2: 0, 1)."""
    N, mean, M2 = _merge(n, total, m2, inverse, n_groups)
    std = (M2 / (N - 1).clamp_min(1)).sqrt()
    few = N < 2
    return torch.where(few, 0.0, mean)[inverse], torch.where(few, 1.0, std)[inverse]


def _whiten(n, total, m2, eps: float):
    """Global (mean, rsqrt(unbiased var + eps)) over every generated token, as veRL's masked_whiten."""
    N, mean, M2 = _merge(n, total, m2, torch.zeros_like(n, dtype=torch.int64), 1)
    return mean[0], torch.rsqrt(M2[0] / (N[0] - 1).clamp_min(1) + eps)


def dense_ids(index: torch.Tensor) -> torch.Tensor:
    """Group ids -> 0..n_groups-1 (in sorted id order), without a host sync (unlike torch.unique)."""
    ids, order = torch.sort(index)
    starts = torch.ones_like(ids, dtype=torch.bool)
    starts[1:] = ids[1:] != ids[:-1]
    return torch.empty_like(ids).scatter_(0, order, starts.cumsum(0) - 1)


def affine(stats: torch.Tensor, index: torch.Tensor, estimator: str, eps: float, scale: str, group=None):
    """Row statistics [B, 5] float64 + index int64 [B] -> (shift, scale) float32 [B] each, and
    on_rewards (bool: which finish applies). Statistics span `group`'s ranks when it is given.

    Without `group` this makes no host sync (a few dozen tiny torch ops on [B] tensors): the data
    checks were made by r3hf._validate before the row pass. With `group`, the all-gather syncs
    anyway, and the checks are made here on the global batch, on every rank alike.
    """
    start, B = 0, stats.shape[0]
    if group is not None:
        stats, start = all_gather_rows(stats, group)
        index, _ = all_gather_rows(index, group)
        check_tokens(int(stats[:, STAT_COUNT].sum()), estimator)
    n, s, m2_r, sum_g, m2_g = stats.double().unbind(1)
    inverse = dense_ids(index)
    n_groups = inverse.shape[0]  # an upper bound: unused slots are never read back
    one = torch.ones_like(s)
    on_rewards = False
    if estimator == "grpo":
        shift, std, _ = _mean_std(s, inverse, n_groups)
        if scale == "batch":
            std = _batch_std(s)
        mult = one if scale == "none" else 1.0 / (std + eps)
    elif estimator == "rloo":
        mean, _, k = _mean_std(s, inverse, n_groups)
        # leave-one-out mean = (k·mean − s_i)/(k − 1); a singleton has mean 0 and keeps its return
        shift = torch.where(k > 1, (k * mean - s) / (k - 1).clamp_min(1), 0.0)
        mult = one
    elif estimator == "reinforce_pp":
        mean, inv_std = _whiten(n, sum_g, m2_g, eps)
        shift, mult = mean * one, inv_std * one
    elif estimator == "reinforce_pp_baseline":
        base, _, _ = _mean_std(s, inverse, n_groups)
        mean, inv_std = _whiten(n, sum_g - n * base, m2_g, eps)
        shift, mult = base + mean, inv_std * one
    elif estimator == "grpo_process":
        shift, std = _token_mean_std(n, s, m2_r, inverse, n_groups)
        if scale == "batch":
            _, std = _token_mean_std(n, s, m2_r, torch.zeros_like(inverse), 1)
        mult = one if scale == "none" else 1.0 / (std + eps)
        on_rewards = True
    else:
        raise ValueError(f"estimator must be one of {list(ESTIMATORS)}, got {estimator!r}")
    rows = slice(start, start + B)
    return shift[rows].float(), mult[rows].float(), on_rewards


def _batch_std(s: torch.Tensor) -> torch.Tensor:
    """Unbiased std of s over the batch (1 for fewer than 2 rows), broadcast to [B]."""
    std = s.std() if s.numel() >= 2 else s.new_tensor(1.0)
    return std * torch.ones_like(s)


# --- 1p and 2p: per-position baselines (issue 21) ---------------------------------------------


def position_layout(index: torch.Tensor, response_mask: torch.Tensor, estimator: str, scale: str, group=None,
                    cu_seqlens=None) -> Positions:
    """The tables' layout (module docstring, "Per-position baselines"): global dense ids, n_groups,
    width and whether sums of squares are needed. Syncs with the host only on CPU, with `group`
    (which syncs anyway) or for a packed width."""
    if group is not None:
        every, start = all_gather_rows(index, group)
        ids = dense_ids(every)
        n_groups = int(ids.max()) + 1 if ids.numel() else 0
        ids = ids[start : start + index.shape[0]]
    else:
        ids = dense_ids(index)
        on_cpu = ids.device.type == "cpu"
        n_groups = (int(ids.max()) + 1 if ids.numel() else 0) if on_cpu else ids.shape[0]
    if cu_seqlens is None:
        width = response_mask.shape[1]
    else:
        from .reference.packed import response_starts

        cu = cu_seqlens.to(torch.int64)
        region = cu[1:] - response_starts(cu, response_mask)
        width = int(region.max()) if region.numel() else 0
    if group is not None:
        width = max(world_sizes(width, group, response_mask.device))
    squares = estimator == "reinforce_pp_baseline" or (estimator == "grpo" and scale == "group")
    return Positions(ids, n_groups, max(width, 1), squares)


def affine_position(stats: torch.Tensor, sums: torch.Tensor, last: torch.Tensor, positions: Positions,
                    estimator: str, eps: float, scale: str, group=None):
    """Step 2p: row stats [B, 5], sums [2, n_groups, W], last [B] -> (shift, scale) float32
    [n_groups, W] each. Statistics span `group`'s ranks when it is given (one all-reduce)."""
    ids, n_groups, W, _ = positions
    dev = stats.device
    n = stats[:, STAT_COUNT].double()
    s = stats[:, STAT_SUM_R].double()
    last = last.double()
    # The rows that ended before p hold `last` there: a histogram at (id, n_i), summed along p.
    held = torch.zeros(3, n_groups, W + 1, dtype=torch.float64, device=dev)
    at = (ids, n.long().clamp(0, W))
    held[0].index_put_(at, torch.ones_like(last), accumulate=True)
    held[1].index_put_(at, last, accumulate=True)
    held[2].index_put_(at, last * last, accumulate=True)
    held = held.cumsum(2)[:, :, :W]
    size = torch.zeros(n_groups, dtype=torch.float64, device=dev).index_add_(0, ids, torch.ones_like(last))
    active = sums.double()
    if group is not None:
        flat = torch.cat([active.reshape(-1), held.reshape(-1), size, n.sum().reshape(1)])
        _dist().all_reduce(flat, group=group)
        k = active.numel()
        active = flat[:k].view_as(active)
        held = flat[k : k + held.numel()].view_as(held)
        size = flat[-n_groups - 1 : -1]
        check_tokens(int(flat[-1]), estimator)
        if estimator == "grpo" and scale == "batch":
            s, _ = all_gather_rows(s, group)
    c = size[:, None]
    S1 = active[0] + held[1]
    single = c < 2
    mu = torch.where(single, 0.0, S1 / c.clamp_min(1))
    one = torch.ones_like(S1)
    if estimator == "rloo":
        shift, mult = mu, torch.where(single, 1.0, c / (c - 1).clamp_min(1)) * one
    elif estimator == "grpo":
        shift = mu
        if scale == "group":
            S2 = active[1] + held[2]
            var = ((S2 - S1 * (S1 / c.clamp_min(1))) / (c - 1).clamp_min(1)).clamp_min(0.0)
            mult = 1.0 / (torch.where(single, 1.0, var.sqrt()) + eps)
        elif scale == "batch":
            mult = 1.0 / ((s.std() if s.numel() >= 2 else s.new_tensor(1.0)) + eps) * one
        else:
            mult = one
    elif estimator == "reinforce_pp_baseline":
        D = c - held[0]  # the rows still generating at p: the tokens there
        A, Q = active[0], active[1]
        N = D.sum()
        sx = (A - D * mu).sum()
        mean = sx / N.clamp_min(1)
        m2 = ((Q - 2.0 * mu * A + D * mu * mu).sum() - sx * mean).clamp_min(0.0)
        shift, mult = mu + mean, torch.rsqrt(m2 / (N - 1).clamp_min(1) + eps) * one
    else:
        raise ValueError(f"baseline='position' is defined for estimator in {list(POSITION_ESTIMATORS)}, got {estimator!r}")
    return shift.float().contiguous(), mult.float().contiguous()


# --- wiring -----------------------------------------------------------------------------------


def _packed(cu_seqlens) -> dict:
    """cu_seqlens for a backend's passes, handed over only for a packed batch."""
    return {} if cu_seqlens is None else {"cu_seqlens": cu_seqlens}


def group_advantages(row_pass_fn, finish_fn, rewards, response_mask, index, estimator, gamma, eps, scale, group,
                     cu_seqlens=None, baseline="row", affine_position_fn=None, affine_fn=None):
    """A backend's group_advantages from its two passes (see the module docstring). A backend may
    hand its own step 2 / 2p as `affine_fn` / `affine_position_fn` (same signatures and results as
    `affine` / `affine_position`)."""
    packed = _packed(cu_seqlens)
    affine_position_fn = affine_position_fn or affine_position
    affine_fn = affine_fn or affine
    if baseline == "position":
        pos = position_layout(index, response_mask, estimator, scale, group, cu_seqlens)
        returns, stats, sums, last = row_pass_fn(rewards, response_mask, gamma, **packed, positions=pos)
        shift, mult = affine_position_fn(stats, sums, last, pos, estimator, eps, scale, group)
        return finish_fn(rewards, returns, response_mask, shift, mult, gamma, False, **packed, ids=pos.ids)
    returns, stats = row_pass_fn(rewards, response_mask, gamma, **packed)
    shift, mult, on_rewards = affine_fn(stats, index, estimator, eps, scale, group)
    return finish_fn(rewards, returns, response_mask, shift, mult, gamma, on_rewards, **packed)


def fused_reward_group_advantages(
    fused_row_pass_fn, finish_fn, hidden, weight, bias, response_mask, prompt_len, index, estimator="grpo",
    logprobs=None, ref_logprobs=None, kl_coef=0.0, kl_estimator="k1", kl_clamp=None, first="prompt", beta_c=1.0,
    reward_clip=None, gamma=1.0, eps=1e-6, scale="group", group=None, cu_seqlens=None, baseline="row",
    potential_weight=None, potential_bias=None, affine_position_fn=None, affine_fn=None,
):
    """A backend's fused_reward_group_advantages from its fused row pass and finish -> (rewards, advantages).
    potential_weight/potential_bias (a potential head, issue 24) reach the row pass only when set."""
    packed = _packed(cu_seqlens)
    heads = {} if potential_weight is None else {"potential_weight": potential_weight, "potential_bias": potential_bias}
    if baseline == "position":
        pos = position_layout(index, response_mask, estimator, scale, group, cu_seqlens)
        rewards, returns, stats, sums, last = fused_row_pass_fn(
            hidden, weight, bias, response_mask, prompt_len, logprobs, ref_logprobs, kl_coef, kl_estimator, kl_clamp,
            first, beta_c, reward_clip, gamma, **packed, **heads, positions=pos,
        )
        shift, mult = (affine_position_fn or affine_position)(stats, sums, last, pos, estimator, eps, scale, group)
        return rewards, finish_fn(rewards, returns, response_mask, shift, mult, gamma, False, **packed, ids=pos.ids)
    rewards, returns, stats = fused_row_pass_fn(
        hidden, weight, bias, response_mask, prompt_len, logprobs, ref_logprobs, kl_coef, kl_estimator, kl_clamp,
        first, beta_c, reward_clip, gamma, **packed, **heads,
    )
    shift, mult, on_rewards = (affine_fn or affine)(stats, index, estimator, eps, scale, group)
    return rewards, finish_fn(rewards, returns, response_mask, shift, mult, gamma, on_rewards, **packed)


def fused_row_pass(
    hidden, weight, bias, response_mask, prompt_len, logprobs, ref_logprobs, kl_coef, kl_estimator, kl_clamp,
    first, beta_c, reward_clip, gamma, cu_seqlens=None, potential_weight=None, potential_bias=None, *,
    positions=None,
):
    """Torch form of the fused row pass -> (rewards, returns, stats); see step 1. Packed: hidden [T, D].
    With `positions` (step 1p) -> (rewards, returns, stats, sums, last)."""
    from .reference import prefix_scores, token_rewards

    potential = None if potential_weight is None else prefix_scores(hidden, potential_weight, potential_bias)
    rewards = token_rewards(
        prefix_scores(hidden, weight, bias), response_mask, prompt_len, logprobs, ref_logprobs, kl_coef,
        kl_estimator, kl_clamp, first, beta_c, reward_clip, cu_seqlens=cu_seqlens, potential=potential,
    )
    return (rewards, *row_pass(rewards, response_mask, gamma, cu_seqlens, positions=positions))
