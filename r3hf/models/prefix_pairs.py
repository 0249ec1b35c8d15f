"""Prefix-aware reward-model training data: truncated preference pairs for TRL's RewardTrainer.

A reward model trained only on full responses never sees a prefix, so its prefix scores (R3HF's
potential Φ_t) are extrapolations and often poor value estimates (`prefix_diagnostics` shows
it). Adding pairs cut at a common point, the prompt kept, teaches it to score prefixes.
"""

from __future__ import annotations

import random
from numbers import Real

from .._extras import require

COLUMNS = ("chosen_ids", "rejected_ids")
CUT_COLUMN = "cut"  # response tokens kept in a cut pair; -1 for an original (full) pair


def _common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def pair_prompt_len(ex, prompt_len=None) -> int:
    """Where the responses of a pair row start: `prompt_len` an int, a column name, or None (the
    row's `prompt_ids` length if it has one, else the longest common prefix of chosen_ids and
    rejected_ids, TRL's implicit prompt)."""
    if prompt_len is None:
        return len(ex["prompt_ids"]) if "prompt_ids" in ex else _common_prefix(ex["chosen_ids"], ex["rejected_ids"])
    if isinstance(prompt_len, str):
        return int(ex[prompt_len])
    return int(prompt_len)


def prefix_pairs(dataset, fraction: float = 0.5, *, prompt_len=None, label_fn=None, keep_full: bool = True,
                 min_cut: int = 1, seed: int = 0):
    """Add (or substitute) preference pairs cut to a common response length, the prompt kept.

    dataset: a `datasets.Dataset` in TRL's processed format (`chosen_ids`, `rejected_ids`: token
    ids of prompt ⊕ response, any other columns carried along). fraction ∈ (0, 1]: the share of
    pairs that get a cut copy (drawn at random). For each such pair a cut point k is drawn
    uniformly from [min_cut, min(len chosen response, len rejected response) − 1] and both
    responses are truncated to their first k tokens (pairs whose shorter response has fewer than
    min_cut + 1 tokens are skipped: a cut must drop something).

    prompt_len: where the responses start: None (a `prompt_ids` column's length if there is one,
    else the longest common prefix of chosen and rejected, TRL's implicit prompt), an int, or
    a column name holding the lengths.

    Labels of cut pairs:
    - label_fn(prompt, chosen, rejected, example) -> True (the cut chosen is preferred), False
      (the cut rejected is: the pair is swapped) or None (drop it), for data that can label
      prefixes (a process reward, a rubric, a verifier, a known task). prompt / chosen /
      rejected are lists of ids (responses already cut), example the original row.
    - default (label_fn None): the pair keeps its full-response label, i.e. the prefix of the
      response that ended up preferred is assumed preferred. Real preference data has only
      full-response labels, so this is the only choice there; it is noisier (a good ending
      does not make a better beginning), see docs/models.md for how much it keeps on the demo.

    keep_full=True returns the original pairs followed by the cut ones (more pairs to train on);
    False substitutes each cut pair for its original (same dataset size and training cost).
    Adds a `cut` column (response tokens kept, −1 for a full pair); a `margin` column is set to
    0.0 on cut pairs. Returns a new `datasets.Dataset`, usable by `trl.RewardTrainer` unchanged.
    """
    require("hf", "prefix_pairs", packages=("datasets",))
    from datasets import Dataset, concatenate_datasets

    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a datasets.Dataset with chosen_ids/rejected_ids, got {type(dataset).__name__}")
    missing = [c for c in COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"dataset needs TRL's processed columns chosen_ids and rejected_ids (token ids of prompt + response); "
            f"missing {missing}. Tokenise text pairs first (the columns RewardTrainer builds)."
        )
    if CUT_COLUMN in dataset.column_names:
        raise ValueError(f"dataset already has a {CUT_COLUMN!r} column: it was already passed through prefix_pairs")
    if isinstance(fraction, bool) or not isinstance(fraction, Real) or not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if isinstance(min_cut, bool) or not isinstance(min_cut, int) or min_cut < 1:
        raise ValueError(f"min_cut must be an int >= 1 (response tokens kept at least), got {min_cut!r}")
    if label_fn is not None and not callable(label_fn):
        raise TypeError(f"label_fn must be callable or None, got {type(label_fn).__name__}")
    if prompt_len is not None and not (isinstance(prompt_len, str) or (isinstance(prompt_len, int)
                                                                      and not isinstance(prompt_len, bool))):
        raise TypeError(f"prompt_len must be None, an int or a column name, got {type(prompt_len).__name__}")
    if isinstance(prompt_len, int) and prompt_len < 0:
        raise ValueError(f"prompt_len must be >= 0, got {prompt_len}")
    if isinstance(prompt_len, str) and prompt_len not in dataset.column_names:
        raise ValueError(f"prompt_len names column {prompt_len!r}, which the dataset does not have")

    rng = random.Random(seed)
    n = len(dataset)
    chosen_rows = sorted(rng.sample(range(n), round(float(fraction) * n)))
    cut_rows, replaced = [], []
    for i in chosen_rows:
        ex = dataset[i]
        c, r = list(ex["chosen_ids"]), list(ex["rejected_ids"])
        p = pair_prompt_len(ex, prompt_len)
        if c[:p] != r[:p]:
            raise ValueError(f"row {i}: chosen_ids and rejected_ids differ inside the prompt (prompt_len {p})")
        shorter = min(len(c), len(r)) - p
        if shorter < min_cut + 1:
            continue
        k = rng.randint(min_cut, shorter - 1)
        cc, rc = c[: p + k], r[: p + k]
        if label_fn is not None:
            label = label_fn(c[:p], cc[p:], rc[p:], ex)
            if label is None:
                continue
            if not isinstance(label, (bool, int)) or isinstance(label, int) and label not in (0, 1):
                raise TypeError(f"label_fn must return True, False or None, got {label!r}")
            if not label:
                cc, rc = rc, cc
        row = dict(ex)
        row["chosen_ids"], row["rejected_ids"] = cc, rc
        row[CUT_COLUMN] = k
        if "margin" in row:
            row["margin"] = 0.0
        cut_rows.append(row)
        replaced.append(i)

    full = dataset.add_column(CUT_COLUMN, [-1] * n)
    if not cut_rows:
        return full
    cut = Dataset.from_list(cut_rows, features=full.features)
    if keep_full:
        return concatenate_datasets([full, cut])
    gone = set(replaced)
    kept = full.select([i for i in range(n) if i not in gone])
    return concatenate_datasets([kept, cut])
