"""Per-token heatmaps of R3HF rewards: which tokens a reward model credits, and by how much.

    from r3hf.viz import explain
    result = explain(reward_model, tokenizer, "prompt text", "response text", out="heat.html")

`explain` scores every prefix of prompt ⊕ response in one forward pass (`r3hf.models.prefix_scores`),
redistributes with `r3hf.ops.redistribute` (token t gets R(x, y≤t) − R(x, y<t), the first token
against the prompt-only score) and renders the response with each token coloured by its reward:
green for positive, red for negative, white for 0, on one scale for all rows shown.
`r3hf explain --model DIR --prompt … --response …` does the same from the command line.
"""

from __future__ import annotations

import html
from pathlib import Path

import torch

from ._extras import require
from . import ops


def token_rewards_for(model, prompt_ids, response_ids, *, first: str = "prompt") -> dict:
    """R3HF rewards of one response: prompt_ids [P], response_ids [L] (lists or 1-D tensors) ->
    {"scores": prefix scores [P + L], "rewards": [L], "final_score", "prompt_score"}."""
    from .models import prefix_scores

    device = next(model.parameters()).device
    p = torch.as_tensor(list(prompt_ids), dtype=torch.long)
    r = torch.as_tensor(list(response_ids), dtype=torch.long)
    if p.numel() == 0 and first == "prompt":
        raise ValueError("prompt_ids is empty: first='prompt' needs a prompt (use first='zero')")
    if r.numel() == 0:
        raise ValueError("response_ids is empty")
    ids = torch.cat([p, r])[None].to(device)
    scores = prefix_scores(model, ids)
    mask = torch.ones(1, r.numel(), dtype=torch.bool, device=device)
    rewards = ops.redistribute(scores, mask, p.numel(), first=first)
    return {
        "scores": scores[0].cpu(),
        "rewards": rewards[0].cpu(),
        "final_score": scores[0, -1].item(),
        "prompt_score": scores[0, p.numel() - 1].item() if p.numel() else 0.0,
    }


def _colour(value: float, scale: float) -> str:
    """White at 0, green for positive, red for negative, saturating at |value| = scale."""
    x = max(-1.0, min(1.0, value / scale)) if scale > 0 else 0.0
    if x >= 0:
        r, g, b = 255 - int(155 * x), 255 - int(40 * x), 255 - int(155 * x)
    else:
        r, g, b = 255 - int(30 * -x), 255 - int(160 * -x), 255 - int(160 * -x)
    return f"rgb({r},{g},{b})"


def _scale(rows) -> float:
    m = max((abs(float(v)) for row in rows for v in row["rewards"]), default=0.0)
    return m if m > 0 else 1.0


def heatmap_html(rows, title: str = "R3HF token rewards", note: str = "") -> str:
    """A self-contained HTML page. rows: dicts with "prompt_tokens" (list of str), "response_tokens"
    (list of str), "rewards" (floats, one per response token), optional "label" (str) and optional
    "marks" (bools, one per response token: those tokens are underlined, e.g. known-good ones).
    `heatmap_png` labels each line with the row's optional "name" (default: its prompt)."""
    scale = _scale(rows)
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;}"
        ".row{margin:1em 0;padding:.5em;border-bottom:1px solid #ddd;}"
        ".prompt{color:#666;font-family:monospace;}"
        ".tok{font-family:monospace;padding:.15em .3em;margin:0 .1em;border-radius:.2em;border:1px solid #ccc;"
        "display:inline-block;}"
        ".label{font-size:.85em;color:#333;}</style>",
        "</head>", "<body>", f"<h1>{html.escape(title)}</h1>",
    ]
    if note:
        parts.append(f"<p>{html.escape(note)}</p>")
    parts.append(
        f"<p>Green: the token raised the reward model's score; red: it lowered it. Colour saturates at "
        f"|reward| = {scale:.3g}. Hover a token for its reward.</p>"
    )
    for row in rows:
        parts.append('<div class="row">')
        if row.get("label"):
            parts.append(f'<div class="label">{html.escape(str(row["label"]))}</div>')
        parts.append(f'<span class="prompt">{html.escape(" ".join(row["prompt_tokens"]))}</span> &rarr; ')
        marks = row.get("marks") or [False] * len(row["rewards"])
        for tok, val, mark in zip(row["response_tokens"], row["rewards"], marks):
            val = float(val)
            emphasis = "text-decoration:underline;font-weight:bold;" if mark else ""
            parts.append(
                f'<span class="tok" style="{emphasis}background:{_colour(val, scale)}" title="{val:+.4f}">'
                f"{html.escape(str(tok))}</span>"
            )
        parts.append("</div>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def heatmap_png(rows, path, title: str = "R3HF token rewards") -> Path:
    """The same heatmap as a PNG: one line per row, each response token a cell coloured by its
    reward (diverging colour map, one scale), its text and value written inside."""
    require("demo", "heatmap_png", packages=("matplotlib", "numpy"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(rows)
    L = max(len(r["rewards"]) for r in rows)
    grid = np.full((n, L), np.nan)
    for i, row in enumerate(rows):
        grid[i, : len(row["rewards"])] = [float(v) for v in row["rewards"]]
    scale = _scale(rows)
    fig, ax = plt.subplots(figsize=(1.0 + 1.0 * L, 0.9 + 0.6 * n))
    im = ax.imshow(grid, cmap="RdYlGn", vmin=-scale, vmax=scale, aspect="auto")
    for i, row in enumerate(rows):
        for j, (tok, val) in enumerate(zip(row["response_tokens"], row["rewards"])):
            ax.text(j, i, f"{tok}\n{float(val):+.2f}", ha="center", va="center", fontsize=7)
    ax.set_yticks(range(n))
    ax.set_yticklabels([r.get("name") or " ".join(r["prompt_tokens"])[-28:] for r in rows], fontsize=7)
    ax.set_xticks(range(L))
    ax.set_xlabel("response token")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03, label="redistributed reward")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def explain(model, tokenizer, prompt: str, response: str, *, out=None, first: str = "prompt") -> dict:
    """Heatmap of one response's R3HF rewards under any causal reward model.

    Tokenises prompt and response separately (no special tokens), scores every prefix, and
    returns {"prompt_tokens", "response_tokens", "rewards", "final_score", "prompt_score", "html"};
    with `out` ("x.html") writes the HTML page there and a PNG beside it ("x.png")."""
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    res = token_rewards_for(model, p_ids, r_ids, first=first)
    row = {
        "prompt_tokens": tokenizer.convert_ids_to_tokens(p_ids),
        "response_tokens": tokenizer.convert_ids_to_tokens(r_ids),
        "rewards": res["rewards"].tolist(),
        "label": f"score {res['prompt_score']:+.3f} (prompt only) -> {res['final_score']:+.3f} (full response)",
    }
    page = heatmap_html([row])
    if out is not None:
        out = Path(out)
        out.write_text(page, encoding="utf-8")
        heatmap_png([row], out.with_suffix(".png"))
    return {**row, "final_score": res["final_score"], "prompt_score": res["prompt_score"], "html": page}
