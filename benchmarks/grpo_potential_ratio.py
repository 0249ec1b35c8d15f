"""End-to-end step time of TRL 1.16 GRPO: `R3HFGRPOTrainer(potential=head)` against plain
`trl.GRPOTrainer`, on the same tiny offline models (issue 24, part 5; target ratio <= 1.02).

Both trainers run the same config: a GPT-2-style policy and reward model built from configs
(hidden 256, word-level tokenizer built in code, nothing downloaded), 64-token completions
(min_new_tokens = max_completion_length), CPU. Each run trains `--steps` steps; a run's time is the
median of TRL's own per-step `step_time` after the first (warm-up) step. Runs alternate
(plain, r3hf, plain, r3hf, ...) so machine drift hits both; the ratio is median(r3hf runs) /
median(plain runs) over `--repeats` runs each (default 3).

    python benchmarks/grpo_potential_ratio.py [--steps 4] [--repeats 3] [--with-r3hf] [--json out.json]

--with-r3hf adds a third arm, `R3HFGRPOTrainer` without a potential, so the potential's own cost
(r3hf+potential / r3hf) is told apart from R3HF's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import warnings

import torch

WORDS = ["<pad>", "<eos>"] + [f"w{i}" for i in range(62)]
PROMPTS = ["w1 w2 ", "w3 w4 w5 ", "w6 ", "w7 w8 w9 w10 "]


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")


def gpt2_config(**kw):
    from transformers import GPT2Config

    return GPT2Config(vocab_size=len(WORDS), n_positions=128, n_embd=256, n_layer=2, n_head=4, pad_token_id=0,
                      bos_token_id=1, eos_token_id=1, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **kw)


def build(root: str):
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

    path = os.path.join(root, "policy")
    torch.manual_seed(0)
    GPT2LMHeadModel(gpt2_config()).save_pretrained(path)
    tokenizer().save_pretrained(path)

    def reward_model():
        torch.manual_seed(1)
        cfg = gpt2_config(num_labels=1)
        cfg._name_or_path = "rm"
        return GPT2ForSequenceClassification(cfg).eval()

    return path, reward_model


def run_once(cls, policy, reward_model, root, steps, **trainer_kw) -> list[float]:
    from datasets import Dataset
    from trl import GRPOConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = GRPOConfig(
            output_dir=os.path.join(root, cls.__name__), per_device_train_batch_size=8, num_generations=4,
            max_completion_length=64, generation_kwargs={"min_new_tokens": 64}, max_steps=steps,
            learning_rate=1e-4, use_cpu=True, bf16=False, report_to="none", logging_steps=1, save_strategy="no",
            disable_tqdm=True, seed=0, beta=0.0, dataloader_num_workers=0, log_completions=False,
        )
        trainer = cls(model=policy, reward_funcs=[reward_model()], args=args,
                      train_dataset=Dataset.from_dict({"prompt": [PROMPTS[i % 4] for i in range(64)]}),
                      processing_class=tokenizer(), reward_processing_classes=[tokenizer()], **trainer_kw)
        trainer.train()
    times = [h["step_time"] for h in trainer.state.log_history if "step_time" in h]
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    if len(times) != steps or any(n != 64 for n in lengths):
        raise RuntimeError(f"expected {steps} steps of 64-token completions, got times {times}, lengths {lengths}")
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    p.add_argument("--with-r3hf", action="store_true")
    a = p.parse_args(argv)
    from trl import GRPOTrainer

    from r3hf.integrations.trl import R3HFGRPOTrainer
    from r3hf.models import PotentialHead

    root = tempfile.mkdtemp(prefix="r3hf-grpo-bench-")
    policy, reward_model = build(root)
    g = torch.Generator().manual_seed(2)
    head = PotentialHead(torch.randn(256, generator=g) * 0.05, 0.1)
    head_dir = os.path.join(root, "potential")
    head.save_pretrained(head_dir)  # passed as a folder, as a user would
    runs = {"plain": [], "r3hf+potential": []} | ({"r3hf": []} if a.with_r3hf else {})
    for r in range(a.repeats):
        for name in runs:
            if name == "plain":
                times = run_once(GRPOTrainer, policy, reward_model, root, a.steps)
            elif name == "r3hf":
                times = run_once(R3HFGRPOTrainer, policy, reward_model, root, a.steps)
            else:
                times = run_once(R3HFGRPOTrainer, policy, reward_model, root, a.steps, potential=head_dir)
            runs[name].append(statistics.median(times[1:]))
            print(f"repeat {r} {name:15s} step times {[round(t, 3) for t in times]} -> {runs[name][-1]:.4f} s")
    plain, ours = statistics.median(runs["plain"]), statistics.median(runs["r3hf+potential"])
    result = {"plain_s": plain, "r3hf_potential_s": ours, "ratio": ours / plain, "runs": runs, "steps": a.steps,
              "repeats": a.repeats, "torch_threads": torch.get_num_threads(), "target": 1.02}
    print(f"median step time: plain {plain:.4f} s, R3HF + potential {ours:.4f} s, ratio {ours / plain:.3f} "
          f"(target <= 1.02)")
    if a.with_r3hf:
        r3hf = statistics.median(runs["r3hf"])
        result |= {"r3hf_s": r3hf, "ratio_r3hf": r3hf / plain, "ratio_potential_vs_r3hf": ours / r3hf}
        print(f"R3HF without potential {r3hf:.4f} s: ratio {r3hf / plain:.3f}; potential / no potential {ours / r3hf:.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
