"""prefix_diagnostics and `r3hf diagnose`: the statistics by hand, verdicts on known potentials,
any causal reward model, JSON/PNG outputs and the CLI end to end."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from r3hf import ops  # noqa: E402
from r3hf.models import prefix_diagnostics, prefix_scores, save_diagnostics  # noqa: E402


def process(B, L, kind, seed=0, P=2):
    """Prefix scores [B, P + L] with R = prompt term + Σ x_t; perfect Φ = credit so far, useless Φ = noise."""
    g = torch.Generator().manual_seed(seed)
    prompt = 0.3 * torch.randn(B, generator=g)
    credit = prompt[:, None] + torch.randn(B, L, generator=g).cumsum(1)
    scores = torch.zeros(B, P + L)
    scores[:, P - 1] = prompt
    scores[:, P:] = credit if kind == "perfect" else 4.0 * torch.randn(B, L, generator=g)
    scores[:, -1] = credit[:, -1]
    return scores, P


def test_statistics_by_hand_and_verdicts():
    B, L, P = 300, 8, 2
    for kind in ("perfect", "useless"):
        scores, _ = process(B, L, kind)
        ids = torch.ones(B, P + L, dtype=torch.long)
        res = prefix_diagnostics(None, ids, None, P, scores=scores, bootstrap=100)
        R = scores[:, -1].double()
        for t in (0, 3, L - 1):
            phi = scores[:, P - 1 + t].double()
            row = res["positions"][t]
            assert row["var_ratio"] == pytest.approx(float((R - phi).var() / R.var()), rel=1e-9)
            assert row["corr"] == pytest.approx(float(torch.corrcoef(torch.stack([phi, R]))[0, 1]), rel=1e-6)
            assert row["beta_opt"] == pytest.approx(float(torch.cov(torch.stack([phi, R]))[0, 1] / phi.var()), rel=1e-6)
            assert row["n"] == B and row["var_ratio_ci"][0] <= row["var_ratio"] <= row["var_ratio_ci"][1]
        phi0 = scores[:, P - 1].double()
        assert res["prompt_var_share"] == pytest.approx(float(phi0.var() / R.var()), rel=1e-6)
        dense = ops.redistribute(scores, torch.ones(B, L, dtype=torch.bool), P).abs()
        share = dense.max(1).values / dense.sum(1)
        assert res["largest_share"]["mean"] == pytest.approx(float(share.mean()), rel=1e-5)
        assert res["largest_share"]["uniform"] == pytest.approx(1 / L)
        effects = [r["effect"] for r in res["positions"]]
        if kind == "perfect":
            assert effects[1:] == ["reduces"] * (L - 1)
            assert "reduces the return's variance at response positions" in res["verdict"]
            assert "ADDS" not in res["verdict"]
        else:
            assert effects[1:-1] == ["adds"] * (L - 2)  # noise 4x the return's spread: worse than no baseline
            assert "ADDS variance" in res["verdict"] and "prefix_pairs" in res["verdict"]
    json.dumps(res)  # JSON-ready


def test_buckets_varlen_rows_and_bad_input():
    B, L, P = 64, 40, 3
    scores, _ = process(B, L, "perfect", P=P)
    mask = torch.ones(B, P + L, dtype=torch.bool)
    mask[::2, P + 30:] = False  # half the rows end after 30 tokens
    ids = torch.ones(B, P + L, dtype=torch.long)
    res = prefix_diagnostics(None, ids, mask, P, scores=scores.masked_fill(~mask, 0), bootstrap=0)
    assert len(res["buckets"]) == 16 and res["buckets"][0]["start"] == 0 and res["buckets"][-1]["end"] == L
    assert res["positions"][35]["n"] == B // 2 and res["positions"][5]["n"] == B
    # Each row's R is its own last token's score, not position L − 1.
    short = prefix_diagnostics(None, ids[::2], mask[::2], P, scores=scores.masked_fill(~mask, 0)[::2], bootstrap=0)
    assert short["response_positions"] == L and short["final_score"]["mean"] == pytest.approx(
        float(scores[::2, P + 29].mean()), rel=1e-6)
    assert len(prefix_diagnostics(None, ids, mask, P, scores=scores, buckets=4, bootstrap=0)["buckets"]) == 4
    with pytest.raises(ValueError, match="at least 3 rows"):
        prefix_diagnostics(None, ids[:2], None, P, scores=scores[:2])
    with pytest.raises(ValueError, match="prompt_len is required"):
        prefix_diagnostics(None, ids, None, None, scores=scores)
    with pytest.raises(ValueError, match="buckets"):
        prefix_diagnostics(None, ids, None, P, scores=scores, buckets=0)
    with pytest.raises(ValueError, match="scores must be"):
        prefix_diagnostics(None, ids, None, P, scores=scores[:, :-1])


def test_grouped_view_removes_the_prompt_term():
    # 4 responses per prompt; the prompt-only score varies a lot between prompts and Φ_t carries
    # it: across rows Φ_t adds variance, within groups (what RLOO sees) it reduces it.
    B, L, P, G = 400, 6, 2, 4
    g = torch.Generator().manual_seed(5)
    prompt = (5.0 * torch.randn(B // G, generator=g)).repeat_interleave(G)
    credit = torch.randn(B, L, generator=g).cumsum(1)
    scores = torch.zeros(B, P + L)
    scores[:, P - 1] = 3.0 * prompt
    scores[:, P:] = 3.0 * prompt[:, None] + credit  # the prompt term over-weighted in Φ
    scores[:, -1] = prompt + credit[:, -1]  # R
    ids = torch.ones(B, P + L, dtype=torch.long)
    plain = prefix_diagnostics(None, ids, None, P, scores=scores, bootstrap=50)
    grouped = prefix_diagnostics(None, ids, None, P, scores=scores, bootstrap=50, index=G)
    assert plain["positions"][3]["effect"] == "adds" and grouped["positions"][3]["effect"] == "reduces"
    assert grouped["grouped"] and "within groups" in grouped["verdict"]
    ids_index = torch.arange(B) // G * 7  # any integer ids
    same = prefix_diagnostics(None, ids, None, P, scores=scores, bootstrap=0, index=ids_index)
    assert same["positions"][3]["var_ratio"] == pytest.approx(grouped["positions"][3]["var_ratio"], rel=1e-9)
    R = scores[:, -1].double().view(-1, G)
    phi = scores[:, P + 2].double().view(-1, G)
    rc, pc = R - R.mean(1, keepdim=True), phi - phi.mean(1, keepdim=True)
    hand = float(((rc - pc) ** 2).sum() / (rc ** 2).sum())
    assert grouped["positions"][3]["var_ratio"] == pytest.approx(hand, rel=1e-9)
    with pytest.raises(ValueError, match="index"):
        prefix_diagnostics(None, ids, None, P, scores=scores, index=7)


def tiny_rm(pad_token_id=0):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=40, n_positions=64, n_embd=16, n_layer=1, n_head=2, num_labels=1,
                     pad_token_id=pad_token_id, bos_token_id=1, eos_token_id=1)
    return GPT2ForSequenceClassification(cfg).eval()


def test_any_causal_reward_model_left_padded_and_files(tmp_path):
    model = tiny_rm()
    g = torch.Generator().manual_seed(1)
    B, P, L = 24, 5, 6
    ids = torch.randint(2, 40, (B, P + L), generator=g)
    attention = torch.ones(B, P + L, dtype=torch.bool)
    attention[::3, :2] = False  # left-padded prompts
    ids = ids.masked_fill(~attention, 0)
    res = prefix_diagnostics(model, ids, attention, P, bootstrap=20, batch_size=7)
    scores = prefix_scores(model, ids, attention)
    direct = prefix_diagnostics(None, ids, attention, P, scores=scores, bootstrap=20)
    for a, b in zip(res["positions"], direct["positions"]):  # batched forward passes: same up to rounding
        assert a["var_ratio"] == pytest.approx(b["var_ratio"], rel=1e-5) and a["effect"] == b["effect"]
    paths = save_diagnostics(res, tmp_path / "diag.json", title="tiny")
    assert json.loads(open(paths["json"]).read())["rows"] == B
    import matplotlib.image as mpimg

    assert mpimg.imread(paths["png"]).ndim == 3


def test_cli_diagnose_end_to_end(tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from r3hf.cli import main

    words = ["<pad>", "<eos>"] + [f"w{i}" for i in range(38)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")
    model = tiny_rm()
    model.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    g = torch.Generator().manual_seed(2)
    with open(tmp_path / "samples.jsonl", "w") as f:
        for i in range(12):
            prompt = " ".join(f"w{int(x)}" for x in torch.randint(2, 38, (1 + i % 3,), generator=g)) if i % 2 == 0 \
                else prompt  # noqa: F821 - pairs of samples share a prompt
            response = " ".join(f"w{int(x)}" for x in torch.randint(2, 38, (4 + i % 2,), generator=g))
            f.write(json.dumps({"prompt": prompt, "response": response}) + "\n")
        f.write(json.dumps({"prompt_ids": [3, 4], "response_ids": [5, 6, 7]}) + "\n")
    assert main(["diagnose", "--model", str(tmp_path / "rm"), "--data", str(tmp_path / "samples.jsonl"),
                 "--out", str(tmp_path / "d"), "--bootstrap", "10"]) == 0
    out = capsys.readouterr().out
    assert "Var(R-Φ)/Var(R)" in out and "13 samples" in out and "wrote" in out
    res = json.loads((tmp_path / "d.json").read_text())
    assert res["rows"] == 13 and res["response_positions"] == 5 and (tmp_path / "d.png").exists()
    assert main(["diagnose", "--model", str(tmp_path / "rm"), "--data", str(tmp_path / "samples.jsonl"),
                 "--out", str(tmp_path / "g"), "--bootstrap", "0", "--group-by-prompt"]) == 0
    assert json.loads((tmp_path / "g.json").read_text())["grouped"] is True
    (tmp_path / "bad.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(ValueError, match="prompt/response"):
        main(["diagnose", "--model", str(tmp_path / "rm"), "--data", str(tmp_path / "bad.jsonl")])
