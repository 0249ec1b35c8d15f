"""Fitting a potential head on a frozen reward model (`fit_potential`) and comparing it with the
RM's own prefix scores (`potential_diagnostics`).

Two modes, both starting from the RM's own score head, the backbone never trained:
- "regression" (default, label-free): ridge regression of Φ'(h_t) on the RM's own final score R of
  the same response, at every prefix position (the prompt's last token up to the token before
  the last), over sampled responses (best: the start policy's). Closed form from [D, D]
  statistics, the ridge (a shrinkage towards the RM's head) chosen by K-fold cross-validation
  over responses. This fits E[R | prefix] directly, the value R3HF's shaping wants.
- "bt": the Bradley–Terry loss on preference pairs cut at every common point (r3hf.models.
  prefix_pairs' cut pairs, all cuts of a pair at once from one backbone forward of each
  response), labelled by label_fn or, by default, with the full pair's label. The bias cancels in
  BT differences and keeps the RM's.
On the demo's task the regression gave the better potential (docs/when-r3hf-helps.md).
"""

from __future__ import annotations

import math
import random
import time
from numbers import Real

import torch
import torch.nn.functional as F
from torch import nn

from .heads import find_head
from .potential import PotentialHead, reward_model_info, with_final_score
from .potential_data import as_rows, is_pair, pad, to_pair, to_samples
from .ridge import RidgeStats, fit_ridge
from .scoring import MODEL_PAD, _model_device, check_ids, head_hidden_states, project

MODES = ("regression", "bt")


def progress_bar(total: int, desc: str, enabled: bool = True):
    """tqdm if installed and enabled, else a silent stand-in."""
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
        except ImportError:
            pass

    class _Silent:
        def update(self, n=1):
            pass

        def set_postfix(self, *a, **k):
            pass

        def close(self):
            pass

    return _Silent()


# --- positions ------------------------------------------------------------------------------

def phi_positions(prompt_len: torch.Tensor, response_mask: torch.Tensor, S: int):
    """Where the potential is read for each response token, and where R is.

    prompt_len int64 [B] (response token j of row b at column prompt_len[b] + j), response_mask
    bool [B, L] -> (phi_idx int64 [B, L]: column of the prefix before token j (j = 0: the prompt's
    last token); present bool [B, L]: token j is generated and not after the row's last one;
    last_idx int64 [B]: column of the last generated token, whose RM score is R; has bool [B]).
    """
    B, L = response_mask.shape
    j = torch.arange(L, device=response_mask.device)
    last = L - 1 - response_mask.flip(1).int().argmax(1)
    present = response_mask & (j[None, :] <= last[:, None])
    phi_idx = (prompt_len[:, None] + j[None, :] - 1).clamp(0, S - 1)
    return phi_idx, present, prompt_len + last, response_mask.any(1)


def _gather(hidden, idx):
    """hidden [B, S, D], idx [B, L] -> [B, L, D]."""
    return hidden.gather(1, idx[..., None].expand(*idx.shape, hidden.shape[-1]))


def regression_points(hidden, weight, bias, prompt_len, response_mask):
    """One batch's regression points: (x [N, D] hidden state before each generated token,
    y [N] the RM's final score R of that row, row [N] the row of each point, R [B])."""
    phi_idx, present, last_idx, _ = phi_positions(prompt_len, response_mask, hidden.shape[1])
    R = project(hidden.gather(1, last_idx[:, None, None].expand(-1, 1, hidden.shape[-1])), weight, bias)[:, 0]
    x = _gather(hidden, phi_idx)[present]
    rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None].expand_as(present)[present]
    return x, R[rows], rows, R


# --- data -----------------------------------------------------------------------------------

class _Samples:
    """Responses in the padded layout, forwarded in chunks: from lists (padded per chunk) or a
    dict of tensors (input_ids [B, S], attention_mask, prompt_len, response_mask)."""

    def __init__(self, prompts=None, responses=None, tensors=None):
        self.prompts, self.responses, self.tensors = prompts, responses, tensors

    def __len__(self):
        return len(self.prompts) if self.tensors is None else self.tensors[0].shape[0]

    def select(self, idx):
        if self.tensors is None:
            return _Samples([self.prompts[i] for i in idx], [self.responses[i] for i in idx])
        t = torch.as_tensor(idx, dtype=torch.long)
        return _Samples(tensors=tuple(x[t.to(x.device)] for x in self.tensors))

    def layout(self, device):
        """(input_ids, attention, prompt_len int64 [B], response_mask) of all rows on `device`."""
        if self.tensors is None:
            ids, att, P, rmask = pad(self.prompts, self.responses)
            p = torch.full((ids.shape[0],), P, dtype=torch.long)
            return ids.to(device), att.to(device), p.to(device), rmask.to(device)
        return tuple(x.to(device) for x in self.tensors)

    def chunks(self, batch_size, device):
        for i in range(0, len(self), batch_size):
            yield i, self.select(range(i, min(i + batch_size, len(self)))).layout(device)


def _tensor_samples(data: dict, max_rows=None) -> _Samples:
    from .. import _validate as v

    if "input_ids" not in data or "prompt_len" not in data:
        raise ValueError("a dict of tensors needs input_ids [B, S] and prompt_len (int or [B]); optional "
                         "attention_mask [B, S] and response_mask [B, L]")
    ids, att = check_ids(data["input_ids"], data.get("attention_mask"))
    B, S = ids.shape
    p = v.as_prompt_len(data["prompt_len"], B, S, 1, ids.device, "prompt")
    if "response_mask" in data and data["response_mask"] is not None:
        rmask = v.as_mask("response_mask", data["response_mask"])
        if rmask.shape[0] != B or rmask.device != ids.device or int(p.max()) + rmask.shape[1] > S:
            raise ValueError(f"response_mask must be [B, L] with B = {B}, on {ids.device} and prompt_len + L <= S = {S}, "
                             f"got {list(rmask.shape)}")
    else:
        rmask = None
    L = rmask.shape[1] if rmask is not None else S - int(p.min())
    j = torch.arange(L, device=ids.device)
    col = p[:, None] + j[None, :]
    attended = att.gather(1, col.clamp_max(S - 1)) & (col < S)
    rmask = attended if rmask is None else rmask & attended  # a response token must be attended
    tensors = (ids, att, p, rmask)
    if max_rows is not None:
        tensors = tuple(x[:max_rows] for x in tensors)
    return _Samples(tensors=tensors)


def _split(n: int, heldout, seed: int):
    if isinstance(heldout, bool) or not isinstance(heldout, Real) or not 0.0 <= float(heldout) < 1.0:
        raise ValueError(f"heldout must be a fraction in [0, 1), got {heldout!r}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = int(round(float(heldout) * n))
    return sorted(order[k:]), sorted(order[:k])


# --- diagnostics ----------------------------------------------------------------------------

@torch.no_grad()
def potential_diagnostics(model: nn.Module, potential, input_ids, attention_mask, prompt_len, *, response_mask=None,
                          buckets=4, bootstrap: int = 100, seed: int = 0, batch_size: int = 64, head=None, label=None,
                          pad_token_id=MODEL_PAD) -> dict:
    """The RM's own prefix scores and a potential side by side on sampled responses.

    Layout as `prefix_diagnostics` (input_ids [B, S] left-padded prompt ⊕ right-padded response,
    prompt_len int or [B], response_mask [B, L] or None). The potential's scores are Φ' at every
    prefix and the RM's R at each row's last generated token (the shaping rule), so its
    Var(R − Φ'_t)/Var(R) is the return's variance left with Φ' as the baseline. One backbone
    forward per batch_size rows reads both heads. Returns {"rm": prefix_diagnostics of the RM's own
    scores, "potential": the same for the potential, "compare": a JSON-ready summary (per bucket and
    per position: both ratios) with a verdict}.
    """
    from .diagnostics import prefix_diagnostics
    from .potential import as_potential

    pot = as_potential(potential)
    samples = _tensor_samples({"input_ids": input_ids, "attention_mask": attention_mask, "prompt_len": prompt_len,
                               "response_mask": response_mask})
    ids, att, p, rmask = samples.tensors
    h = find_head(model, head, label)
    pot.check(model, head=head, label=label)
    scores = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
    phi = torch.zeros_like(scores)
    for i in range(0, ids.shape[0], batch_size):
        hidden, w, b = head_hidden_states(h, ids[i:i + batch_size], att[i:i + batch_size], pad_token_id)
        m = att[i:i + batch_size]
        scores[i:i + batch_size] = project(hidden, w, b).masked_fill(~m, 0.0).to(scores.device)
        phi[i:i + batch_size] = pot(hidden).masked_fill(~m, 0.0).to(scores.device)
    _, _, last_idx, _ = phi_positions(p, rmask, ids.shape[1])
    shaped = with_final_score(phi, scores, last_idx)
    kw = dict(response_mask=rmask, buckets=buckets, bootstrap=bootstrap, seed=seed)
    rm = prefix_diagnostics(None, ids, att, p, scores=scores, **kw)
    po = prefix_diagnostics(None, ids, att, p, scores=shaped, **kw)
    diff = _paired_difference(scores, phi, p, rmask, bootstrap, seed)
    return {"rm": rm, "potential": po, "compare": compare(rm, po, diff)}


def _paired_difference(scores, phi, p, rmask, bootstrap: int, seed: int) -> dict:
    """Mean over response positions of Var(R − Φ'_t)/Var(R) − Var(R − Φ_t)/Var(R) (potential minus
    the RM's own), with a paired 95 % bootstrap interval over rows (None without bootstrap)."""
    from .diagnostics import _stats

    phi_idx, present, last_idx, has = phi_positions(p, rmask, scores.shape[1])
    R = scores.gather(1, last_idx[:, None])[:, 0][has]
    own, pot, present = scores.gather(1, phi_idx)[has], phi.gather(1, phi_idx)[has], present[has]

    def mean_diff(idx=None):
        r, a, b, m = (R, own, pot, present) if idx is None else (R[idx], own[idx], pot[idx], present[idx])
        sa, sb = _stats(r, a, m), _stats(r, b, m)
        ok = (sa["n"] >= 3) & (sa["var_r"] > 0)
        return float((sb["var_ratio"][ok] - sa["var_ratio"][ok]).mean()) if bool(ok.any()) else float("nan")

    out = {"mean": mean_diff(), "ci": None}
    if bootstrap:
        gen = torch.Generator().manual_seed(seed)
        n = int(R.shape[0])
        draws = torch.tensor([mean_diff(torch.randint(n, (n,), generator=gen).to(R.device))
                              for _ in range(bootstrap)])
        draws = draws[torch.isfinite(draws)]
        if draws.numel():
            out["ci"] = [float(draws.quantile(0.025)), float(draws.quantile(0.975))]
    return out


def compare(rm: dict, po: dict, difference: dict | None = None) -> dict:
    """Side-by-side summary of two prefix_diagnostics results (the RM's own Φ and a potential Φ')."""
    buckets = []
    for a, b in zip(rm["buckets"], po["buckets"]):
        buckets.append({"start": a["start"], "end": a["end"], "rm_var_ratio": a["var_ratio"],
                        "potential_var_ratio": b["var_ratio"], "rm_effect": a["effect"],
                        "potential_effect": b["effect"]})
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    rm_mean = mean([x["rm_var_ratio"] for x in buckets])
    po_mean = mean([x["potential_var_ratio"] for x in buckets])
    better = [x for x in buckets if x["potential_var_ratio"] < x["rm_var_ratio"]]
    ci = (difference or {}).get("ci")
    if ci is not None and ci[0] <= 0.0 <= ci[1]:
        text = (f"No clear difference between the potential and the RM's own prefix scores ({po_mean:.2f} vs "
                f"{rm_mean:.2f} of Var(R) left on average over the buckets; the paired 95 % interval of the "
                f"difference, [{ci[0]:+.3f}, {ci[1]:+.3f}], contains 0): more samples would tell.")
    elif po_mean < rm_mean and po_mean < 1.0:
        text = (f"The potential leaves {po_mean:.2f} of Var(R) on average over the buckets against {rm_mean:.2f} for the "
                f"RM's own prefix scores (lower in {len(better)} of {len(buckets)} buckets): shape with the "
                "potential (R from the RM, Φ' from the head).")
    elif po_mean < rm_mean:
        text = (f"The potential is better than the RM's own prefix scores ({po_mean:.2f} vs {rm_mean:.2f} of Var(R) "
                "left on average) but still no useful baseline (>= 1): prefer sparse rewards or refit on samples "
                "closer to the policy.")
    else:
        text = (f"The potential is not better than the RM's own prefix scores ({po_mean:.2f} vs {rm_mean:.2f} of "
                "Var(R) left on average): do not use it; refit (more or more on-policy samples).")
    if difference is not None and ci is not None and not ci[0] <= 0.0 <= ci[1]:
        text += (f" Paired difference (potential − RM, mean over positions) {difference['mean']:+.3f}, 95 % "
                 f"interval [{ci[0]:+.3f}, {ci[1]:+.3f}].")
    return {
        "rows": po["rows"],
        "buckets": buckets,
        "rm_var_ratio_mean": rm_mean,
        "potential_var_ratio_mean": po_mean,
        "rm_var_ratio": [x["var_ratio"] for x in rm["positions"]],
        "potential_var_ratio": [x["var_ratio"] for x in po["positions"]],
        "difference": difference,
        "rm_verdict": rm["verdict"],
        "potential_verdict": po["verdict"],
        "verdict": text,
    }


# --- fitting --------------------------------------------------------------------------------

def fit_potential(reward_model: nn.Module, data, *, mode: str = "regression", label_fn=None, tokenizer=None,
                  prompt_len=None, heldout: float = 0.1, ridge="cv", folds: int = 5, epochs: int = 10,
                  lr: float = 3e-2, minibatch: int = 512, min_cut: int = 1, batch_size: int = 32, head=None,
                  label=None, pad_token_id=MODEL_PAD, seed: int = 0, progress: bool = True, bootstrap: int = 100,
                  max_rows: int | None = None, name_or_path=None) -> PotentialHead:
    """Fit a potential head on a frozen reward model; it starts from the RM's own score head.

    reward_model: a causal sequence-classification RM (r3hf.models finds its backbone and head;
    head / label / pad_token_id as in `prefix_scores`). data: a .jsonl path, a `datasets.Dataset`
    or a list of dict rows (formats in `r3hf.models.potential_data`: pairs chosen_ids/rejected_ids
    or prompt/chosen/rejected; samples prompt_ids/response_ids or prompt/response; text rows need
    tokenizer=), or for "regression" a dict of tensors {input_ids [B, S], attention_mask, prompt_len,
    response_mask} in the PPO layout (e.g. rollouts).

    mode "regression" (default, label-free; every response of the data is a sample, both of a
    pair): ridge regression of Φ'(h_t) onto the RM's R of the same response at every prefix
    position; ridge "cv" (K = folds, over responses) or a relative λ >= 0 (0: least squares; λ
    shrinks towards the RM's head). mode "bt": Bradley–Terry on every common cut of each pair
    (k = min_cut .. shorter response − 1, cuts with equal prefixes skipped) and the full pair, all
    from one forward of the pair's two sequences; labels from label_fn(prompt, chosen, rejected,
    example) -> True / False (swap) / None (drop), as `prefix_pairs`, default: the full pair's
    label; Adam (lr, epochs, minibatch terms), the epoch of least held-out BT loss kept.

    heldout: the fraction of rows (pairs or samples) kept out of the fit for the diagnostics
    (Var(R − Φ'_t)/Var(R) by quarter against the RM's own prefix scores, `potential_diagnostics`;
    bootstrap resamples for their intervals) and, for "bt", the held-out loss. batch_size: rows
    (pairs) per backbone forward. progress: a tqdm bar if tqdm is installed. Returns a
    PotentialHead whose `fit` and `diagnostics` record all this (saved with it).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if label_fn is not None and not callable(label_fn):
        raise TypeError(f"label_fn must be callable or None, got {type(label_fn).__name__}")
    if label_fn is not None and mode != "bt":
        raise ValueError("label_fn labels cut pairs: it needs mode='bt' (the regression is label-free)")
    for name, val in (("batch_size", batch_size), ("epochs", epochs), ("minibatch", minibatch), ("min_cut", min_cut),
                      ("folds", folds)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"{name} must be a positive int, got {val!r}")
    if isinstance(lr, bool) or not isinstance(lr, Real) or not lr > 0 or not math.isfinite(lr):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0:
        raise ValueError(f"bootstrap must be a non-negative int, got {bootstrap!r}")
    if not isinstance(ridge, str):
        if isinstance(ridge, bool) or not isinstance(ridge, Real) or not ridge >= 0 or not math.isfinite(ridge):
            raise ValueError(f'ridge must be "cv" or a number >= 0, got {ridge!r}')
    elif ridge != "cv":
        raise ValueError(f'ridge must be "cv" or a number >= 0, got {ridge!r}')
    h = find_head(reward_model, head, label)
    device = _model_device(h.backbone)
    info = reward_model_info(reward_model, h, name_or_path)
    t0 = time.perf_counter()
    if isinstance(data, dict):
        if mode == "bt":
            raise ValueError("mode='bt' needs preference pairs (rows with chosen/rejected), not a dict of samples")
        samples, pairs = _tensor_samples(data, max_rows), None
    else:
        rows = as_rows(data, max_rows)
        if not rows:
            raise ValueError("data has no rows")
        if mode == "bt":
            bad = [r["_where"] for r in rows if not is_pair(r)]
            if bad:
                raise ValueError(f"mode='bt' needs preference pairs; {bad[0]} is not a pair (chosen_ids/rejected_ids "
                                 "or prompt/chosen/rejected)")
            pairs = [(*to_pair(r, tokenizer, prompt_len), {k: x for k, x in r.items() if k != "_where"}) for r in rows]
            samples = None
        else:
            samples, pairs = _Samples(*to_samples(rows, tokenizer, prompt_len)), None
    n = len(pairs) if pairs is not None else len(samples)
    train, held = _split(n, heldout, seed)
    if held and (2 * len(held) if pairs is not None else len(held)) < 3:
        raise ValueError(f"heldout={heldout} keeps fewer than 3 responses for the diagnostics; raise it or pass 0")
    common = dict(h=h, pad_token_id=pad_token_id, batch_size=batch_size, progress=progress)
    if mode == "regression":
        weight, bias, fit = _fit_regression(samples.select(train), ridge=ridge, folds=folds, seed=seed, device=device,
                                            **common)
        held_samples = samples.select(held) if held else None
    else:
        weight, bias, fit = _fit_bt([pairs[i] for i in train], [pairs[i] for i in held], label_fn=label_fn,
                                    epochs=epochs, lr=float(lr), minibatch=minibatch, min_cut=min_cut, seed=seed,
                                    device=device, **common)
        held_samples = None
        if held:
            hp = [pairs[i] for i in held]
            held_samples = _Samples([p for p, *_ in hp for _ in (0, 1)],
                                    [r for _, c, rj, _ in hp for r in (c, rj)])
    fit.update(mode=mode, rows_train=len(train), rows_heldout=len(held), seed=seed,
               seconds=time.perf_counter() - t0)
    pot = PotentialHead(weight, bias, reward_model=info, fit=fit)
    if held_samples is not None:
        ids, att, p, rmask = held_samples.layout(device)
        res = potential_diagnostics(reward_model, pot.to(device), ids, att, p, response_mask=rmask, buckets=4,
                                    bootstrap=bootstrap, seed=seed, batch_size=batch_size, head=head, label=label,
                                    pad_token_id=pad_token_id)
        pot.diagnostics = res["compare"]
    pot.fit["seconds_with_diagnostics"] = time.perf_counter() - t0
    return pot.to("cpu")


def _fit_regression(samples: _Samples, *, h, ridge, folds, seed, device, pad_token_id, batch_size, progress):
    n = len(samples)
    if n < 2:
        raise ValueError(f"the regression needs at least 2 training responses, got {n}")
    K = min(folds, n)
    gen = torch.Generator().manual_seed(seed)
    fold_of = (torch.randperm(n, generator=gen) % K).to(device)
    stats = RidgeStats(h.weight.numel(), K, device)
    bar = progress_bar(n, "fit-potential (regression)", progress)
    with torch.no_grad():
        for i, (ids, att, p, rmask) in samples.chunks(batch_size, device):
            hidden, w, b = head_hidden_states(h, ids, att, pad_token_id)
            x, y, rows, _ = regression_points(hidden, w, b, p, rmask)
            stats.add(x, y, fold_of[i + rows])
            bar.update(ids.shape[0])
    bar.close()
    if float(stats.n.sum()) < 2:
        raise ValueError("the regression found fewer than 2 response positions (empty responses?)")
    u0 = h.weight.detach().to(device, torch.float64)
    u, c, fit = fit_ridge(stats, u0, ridge)
    fit["folds"] = K
    return u.float(), c, fit


def _bt_terms(h, pairs, *, label_fn, min_cut, pad_token_id, batch_size, device, bar):
    """y·(h_chosen − h_rejected) [M, D] float32 for every labelled cut of every pair (and its full
    comparison), from one backbone forward of each pair's two sequences."""
    out = []
    with torch.no_grad():
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i:i + batch_size]
            n = len(chunk)
            ids, att, P, _ = pad([p for p, *_ in chunk] * 2, [c for _, c, _, _ in chunk] + [r for _, _, r, _ in chunk])
            hidden, _, _ = head_hidden_states(h, ids.to(device), att.to(device), pad_token_id)
            ci, ri, sign = [], [], []
            for k_pair, (prompt, c, r, ex) in enumerate(chunk):
                for k in range(min_cut, min(len(c), len(r))):
                    if c[:k] == r[:k]:
                        continue  # equal prefixes: nothing to order
                    y = True if label_fn is None else label_fn(prompt, c[:k], r[:k], ex)
                    if y is None:
                        continue
                    if not isinstance(y, (bool, int)) or isinstance(y, int) and y not in (0, 1):
                        raise TypeError(f"label_fn must return True, False or None, got {y!r}")
                    ci.append(k_pair * hidden.shape[1] + P + k - 1)
                    ri.append((n + k_pair) * hidden.shape[1] + P + k - 1)
                    sign.append(1.0 if y else -1.0)
                if c != r:
                    ci.append(k_pair * hidden.shape[1] + P + len(c) - 1)
                    ri.append((n + k_pair) * hidden.shape[1] + P + len(r) - 1)
                    sign.append(1.0)
            flat = hidden.reshape(-1, hidden.shape[-1]).float()
            if ci:
                s = torch.tensor(sign, device=flat.device)[:, None]
                out.append(s * (flat[torch.tensor(ci, device=flat.device)] - flat[torch.tensor(ri, device=flat.device)]))
            bar.update(n)
    D = h.weight.numel()
    return torch.cat(out) if out else torch.zeros(0, D, device=device)


def bt_loss(terms: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean Bradley–Terry loss −log σ(Φ'(chosen) − Φ'(rejected)) of difference terms [M, D]."""
    from .. import ops

    margin = ops.prefix_scores(terms[None], weight.to(terms.dtype))[0]
    return F.softplus(-margin).mean()


def _fit_bt(train, held, *, h, label_fn, epochs, lr, minibatch, min_cut, seed, device, pad_token_id, batch_size,
            progress):
    if not train:
        raise ValueError("mode='bt' needs at least 1 training pair")
    bar = progress_bar(len(train) + len(held), "fit-potential (bt: features)", progress)
    kw = dict(label_fn=label_fn, min_cut=min_cut, pad_token_id=pad_token_id, batch_size=batch_size, device=device,
              bar=bar)
    tr = _bt_terms(h, train, **kw)
    ho = _bt_terms(h, held, **kw) if held else None
    bar.close()
    if tr.shape[0] == 0:
        raise ValueError("no labelled comparison in the training pairs (label_fn dropped all, or chosen == rejected)")
    u0 = h.weight.detach().to(device, torch.float32)
    u = u0.clone().requires_grad_(True)
    opt = torch.optim.Adam([u], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    watch = ho if ho is not None and ho.shape[0] else tr

    def loss_on(t):
        with torch.no_grad():
            return float(bt_loss(t, u))

    history = [loss_on(watch)]
    best, best_u, best_epoch = history[0], u.detach().clone(), 0
    init_train = loss_on(tr)
    ebar = progress_bar(epochs, "fit-potential (bt: epochs)", progress)
    for epoch in range(1, epochs + 1):
        order = torch.randperm(tr.shape[0], generator=gen).to(tr.device)
        for s in range(0, tr.shape[0], minibatch):
            loss = bt_loss(tr[order[s:s + minibatch]], u)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        history.append(loss_on(watch))
        if history[-1] < best:
            best, best_u, best_epoch = history[-1], u.detach().clone(), epoch
        ebar.update(1)
        ebar.set_postfix(loss=history[-1])
    ebar.close()
    with torch.no_grad():
        final_train = float(bt_loss(tr, best_u))
    fit = {"epochs": epochs, "lr": lr, "minibatch": minibatch, "min_cut": min_cut, "best_epoch": best_epoch,
           "label": "label_fn" if label_fn is not None else "full-pair label",
           "terms_train": int(tr.shape[0]), "terms_heldout": int(ho.shape[0]) if ho is not None else 0,
           "bt_loss_train": {"start": init_train, "end": final_train},
           ("bt_loss_heldout" if watch is not tr else "bt_loss_watched"): {"start": history[0], "end": best,
                                                                           "per_epoch": history}}
    bias = h.bias if h.bias is not None else torch.zeros(1)
    return best_u.float(), bias.float(), fit
