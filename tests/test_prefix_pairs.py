"""prefix_pairs: truncated preference pairs at a common cut point (prompt kept), label_fn and the
default labelling rule, and a real (tiny) TRL RewardTrainer run on the result."""

from __future__ import annotations

import pytest
import torch

datasets = pytest.importorskip("datasets")
pytest.importorskip("transformers")

from r3hf.models import prefix_pairs  # noqa: E402


def pairs(n=40, P=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = {"chosen_ids": [], "rejected_ids": [], "margin": [], "note": []}
    for i in range(n):
        prompt = torch.randint(2, 20, (P,), generator=g).tolist()
        rows["chosen_ids"].append(prompt + torch.randint(20, 30, (6 + i % 3,), generator=g).tolist())
        rows["rejected_ids"].append(prompt + torch.randint(30, 40, (5 + i % 4,), generator=g).tolist())
        rows["margin"].append(1.0)
        rows["note"].append(f"row{i}")
    return datasets.Dataset.from_dict(rows)


def test_cut_pairs_common_point_prompt_kept_default_label():
    ds = pairs()
    out = prefix_pairs(ds, fraction=0.5, seed=1)
    assert len(out) == 60 and out.column_names == ds.column_names + ["cut"]
    full, cut = out.select(range(40)), out.select(range(40, 60))
    assert full["cut"] == [-1] * 40 and full["chosen_ids"] == ds["chosen_ids"]  # originals unchanged, first
    by_note = {r["note"]: r for r in ds}
    for r in cut:
        src = by_note[r["note"]]
        k = r["cut"]
        shorter = min(len(src["chosen_ids"]), len(src["rejected_ids"])) - 3
        assert 1 <= k <= shorter - 1  # a cut drops something from both responses
        # default rule: the pair keeps its full-response label (chosen stays chosen)
        assert r["chosen_ids"] == src["chosen_ids"][: 3 + k] and r["rejected_ids"] == src["rejected_ids"][: 3 + k]
        assert r["margin"] == 0.0  # a full-response margin says nothing about a prefix
    assert prefix_pairs(ds, fraction=0.5, seed=1)["chosen_ids"] == out["chosen_ids"]  # seeded
    replaced = prefix_pairs(ds, fraction=0.5, seed=1, keep_full=False)
    assert len(replaced) == 40 and sorted(replaced["note"]) == sorted(ds["note"])
    assert sum(c >= 0 for c in replaced["cut"]) == 20
    assert ds.column_names == ["chosen_ids", "rejected_ids", "margin", "note"]  # input untouched


def test_label_fn_swaps_drops_and_sees_the_cut_tokens():
    ds = pairs()
    seen = []

    def label_fn(prompt, chosen, rejected, example):
        seen.append((prompt, chosen, rejected, example["note"]))
        if example["note"].endswith("3"):
            return None  # cannot tell: drop
        return sum(chosen) > sum(rejected)  # here the "rejected" tokens (30–39) make the better prefixes

    out = prefix_pairs(ds, fraction=1.0, label_fn=label_fn, seed=0)
    cut = [r for r in out if r["cut"] >= 0]
    assert len(cut) == 40 - sum(1 for n in ds["note"] if n.endswith("3"))
    for prompt, chosen, rejected, _ in seen:
        assert len(prompt) == 3 and len(chosen) == len(rejected) >= 1
    for r in cut:  # swapped: the better prefix (ids >= 30) is now chosen
        assert min(r["chosen_ids"][3:]) >= 30 and max(r["rejected_ids"][3:]) < 30
    with pytest.raises(TypeError, match="label_fn must return"):
        prefix_pairs(ds, fraction=0.2, label_fn=lambda *a: 0.7)


def test_prompt_len_sources_and_bad_input():
    ds = pairs(P=4)
    # Implicit prompt = common prefix; an explicit int or a column gives the same cuts here.
    a = prefix_pairs(ds, fraction=1.0, seed=3)
    b = prefix_pairs(ds, fraction=1.0, seed=3, prompt_len=4)
    c = prefix_pairs(ds.add_column("plen", [4] * len(ds)), fraction=1.0, seed=3, prompt_len="plen")
    assert a["chosen_ids"] == b["chosen_ids"] == c["chosen_ids"]
    short = datasets.Dataset.from_dict({"chosen_ids": [[1, 2, 3]], "rejected_ids": [[1, 2, 4]]})
    assert len(prefix_pairs(short, fraction=1.0)) == 1  # a 1-token response cannot be cut: skipped
    with pytest.raises(ValueError, match="chosen_ids and rejected_ids"):
        prefix_pairs(datasets.Dataset.from_dict({"chosen": ["a"], "rejected": ["b"]}))
    with pytest.raises(ValueError, match="fraction"):
        prefix_pairs(ds, fraction=0.0)
    with pytest.raises(TypeError, match="datasets.Dataset"):
        prefix_pairs({"chosen_ids": []})
    with pytest.raises(ValueError, match="differ inside the prompt"):
        prefix_pairs(ds, fraction=1.0, prompt_len=5)
    with pytest.raises(ValueError, match="already"):
        prefix_pairs(a)
    with pytest.raises(ValueError, match="column"):
        prefix_pairs(ds, prompt_len="nope")


def test_trl_reward_trainer_runs_on_prefix_pairs_unchanged(tmp_path):
    trl = pytest.importorskip("trl")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2ForSequenceClassification, PreTrainedTokenizerFast

    from r3hf.models import prefix_scores

    words = ["<pad>", "<eos>"] + [f"w{i}" for i in range(38)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")
    ds = prefix_pairs(pairs(64), fraction=0.5, seed=0)
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(GPT2Config(vocab_size=40, n_positions=32, n_embd=16, n_layer=1, n_head=2,
                                                     num_labels=1, pad_token_id=0, bos_token_id=1, eos_token_id=1))
    args = trl.RewardConfig(output_dir=str(tmp_path), max_steps=12, per_device_train_batch_size=16, learning_rate=1e-2,
                            report_to="none", save_strategy="no", logging_strategy="no", use_cpu=True,
                            disable_tqdm=True, seed=0, bf16=False)
    trainer = trl.RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    trainer.train()
    model = trainer.model.eval()
    # Chosen tokens (20–29) were preferred in full and cut pairs: even 1-token prefixes now score higher.
    prompt = [5, 6, 7]
    ids = torch.tensor([prompt + [21, 22, 23, 24], prompt + [31, 32, 33, 34]])
    s = prefix_scores(model, ids)
    assert bool((s[0, 3:] > s[1, 3:]).all())
