"""Data for fitting a potential head: JSONL / datasets / dict rows -> pairs or samples, and the
padded layout (left-padded prompts ⊕ right-padded responses) the reward model reads.

Row formats (one JSON object per line of a .jsonl file, or a dict per row of a list or a
`datasets.Dataset`); token ids are the reward model's:
- a preference pair: {"chosen_ids": [...], "rejected_ids": [...]} (prompt ⊕ response ids, TRL's
  processed format; the prompt is `prompt_len` tokens if given (argument or a "prompt_len" field),
  else the row's "prompt_ids" length, else the longest common prefix of the two), or text
  {"prompt": str, "chosen": str, "rejected": str} (tokenised with the RM's tokenizer, special
  tokens added to the prompt only);
- a sample: {"prompt_ids": [...], "response_ids": [...]} or text {"prompt": str, "response": str}
  (e.g. start-policy samples: what the label-free regression wants most).
Bradley–Terry fitting needs pairs; the regression takes samples and pairs (both responses of a
pair are samples). Extra fields are kept and handed to `label_fn` as the example.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .prefix_pairs import pair_prompt_len


def read_jsonl(path, max_rows: int | None = None) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not a JSON object ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: each line must be a JSON object, got {type(row).__name__}")
            row["_where"] = f"{path}:{n}"
            rows.append(row)
            if max_rows is not None and len(rows) >= max_rows:
                break
    return rows


def as_rows(data, max_rows: int | None = None) -> list[dict]:
    """A .jsonl path, a `datasets.Dataset` or a list of dicts -> list of dicts."""
    if isinstance(data, (str, Path)):
        if not Path(data).is_file():
            raise FileNotFoundError(f"data file {str(data)!r} does not exist")
        return read_jsonl(data, max_rows)
    try:
        from datasets import Dataset
    except ImportError:  # datasets is optional for this path
        Dataset = ()
    if Dataset and isinstance(data, Dataset):
        n = len(data) if max_rows is None else min(len(data), max_rows)
        return [dict(data[i], _where=f"row {i}") for i in range(n)]
    if isinstance(data, (list, tuple)):
        rows = []
        for i, row in enumerate(data[:max_rows] if max_rows is not None else data):
            if not isinstance(row, dict):
                raise TypeError(f"data rows must be dicts, row {i} is {type(row).__name__}")
            rows.append(dict(row, _where=f"row {i}"))
        return rows
    raise TypeError("data must be a .jsonl path, a datasets.Dataset, a list of dicts or (regression) a dict of "
                    f"tensors with input_ids and prompt_len, got {type(data).__name__}")


def _ids(row, key):
    ids = row[key]
    if not isinstance(ids, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError(f"{row['_where']}: {key} must be a list of token ids (ints)")
    return list(ids)


def _tokenise(row, tokenizer, prompt_key, response_keys):
    if tokenizer is None:
        raise ValueError(f"{row['_where']}: text rows need the reward model's tokenizer (pass tokenizer=)")
    prompt = tokenizer(row[prompt_key])["input_ids"]
    return [prompt] + [tokenizer(row[k], add_special_tokens=False)["input_ids"] for k in response_keys]


def is_pair(row) -> bool:
    return ("chosen_ids" in row and "rejected_ids" in row) or ("chosen" in row and "rejected" in row)


def to_pair(row, tokenizer=None, prompt_len=None):
    """-> (prompt ids, chosen response ids, rejected response ids)."""
    where = row["_where"]
    if "chosen_ids" in row and "rejected_ids" in row:
        c, r = _ids(row, "chosen_ids"), _ids(row, "rejected_ids")
        ex = {"chosen_ids": c, "rejected_ids": r}
        if "prompt_ids" in row:
            ex["prompt_ids"] = _ids(row, "prompt_ids")
        if prompt_len is None and "prompt_len" in row:
            prompt_len = row["prompt_len"]
            if isinstance(prompt_len, bool) or not isinstance(prompt_len, int):
                raise ValueError(f"{where}: prompt_len must be an int, got {prompt_len!r}")
        elif isinstance(prompt_len, str):
            if prompt_len not in row:
                raise ValueError(f"{where}: prompt_len names field {prompt_len!r}, which the row does not have")
            ex[prompt_len] = row[prompt_len]
        p = pair_prompt_len(ex, prompt_len)
        if c[:p] != r[:p]:
            raise ValueError(f"{where}: chosen_ids and rejected_ids differ inside the prompt (prompt_len {p})")
        prompt, chosen, rejected = c[:p], c[p:], r[p:]
    elif "chosen" in row and "rejected" in row and "prompt" in row:
        prompt, chosen, rejected = _tokenise(row, tokenizer, "prompt", ("chosen", "rejected"))
    else:
        raise ValueError(f"{where}: a pair needs chosen_ids/rejected_ids or prompt/chosen/rejected")
    if not prompt:
        raise ValueError(f"{where}: empty prompt (the potential before the first response token is read at the "
                         "prompt's last token)")
    if not chosen or not rejected:
        raise ValueError(f"{where}: empty chosen or rejected response")
    return prompt, chosen, rejected


def to_samples(rows, tokenizer=None, prompt_len=None):
    """Rows -> (prompts, responses) lists of id lists; a pair gives its two responses."""
    prompts, responses = [], []
    for row in rows:
        if is_pair(row):
            p, c, r = to_pair(row, tokenizer, prompt_len)
            prompts += [p, p]
            responses += [c, r]
            continue
        if "prompt_ids" in row and "response_ids" in row:
            p, r = _ids(row, "prompt_ids"), _ids(row, "response_ids")
        elif "prompt" in row and "response" in row:
            p, r = _tokenise(row, tokenizer, "prompt", ("response",))
        else:
            raise ValueError(f"{row['_where']}: each row needs prompt_ids/response_ids, prompt/response (samples) or "
                             "chosen_ids/rejected_ids, prompt/chosen/rejected (pairs)")
        if not p or not r:
            raise ValueError(f"{row['_where']}: empty prompt or response")
        prompts.append(p)
        responses.append(r)
    return prompts, responses


def pad(prompts, responses):
    """Lists of id lists -> (input_ids [B, P + L] (left-padded prompts ⊕ right-padded responses, pad
    id 0), attention bool [B, P + L], P (every response starts there), response_mask bool [B, L])."""
    P, L = max(map(len, prompts)), max(map(len, responses))
    ids = torch.zeros(len(prompts), P + L, dtype=torch.long)
    attention = torch.zeros(len(prompts), P + L, dtype=torch.bool)
    for b, (p, r) in enumerate(zip(prompts, responses)):
        ids[b, P - len(p):P] = torch.tensor(p, dtype=torch.long)
        ids[b, P:P + len(r)] = torch.tensor(r, dtype=torch.long)
        attention[b, P - len(p):P + len(r)] = True
    return ids, attention, P, attention[:, P:].clone()
