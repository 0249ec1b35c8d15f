"""Tiny offline TRL GRPO set-up for the R3HFGRPOTrainer tests: word-level tokenizer built in code,
GPT-2-like policy and reward models from configs, an in-memory prompt dataset, a CPU GRPOConfig,
and trainer subclasses that record what `_generate_and_score_completions` hands to the loss."""

from __future__ import annotations

import os
import tempfile
import warnings

import pytest
import torch

# The TRL GRPO test modules' `pytestmark`: TRL and transformers warn on every tiny CPU run.
QUIET = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")

WORDS = ["<pad>", "<eos>", "the", "cat", "dog", "is", "good", "bad", "very", "a", "sat", "on", "mat", "and", "not",
         "it", "was"]
W = {w: i for i, w in enumerate(WORDS)}
PAD, EOS = W["<pad>"], W["<eos>"]
CHARS = sorted(set("".join(WORDS[2:]))) + [" "]
PROMPTS = ["the cat ", "a dog ", "the mat ", "it was ", "the dog sat ", "a cat is "]


def word_tokenizer():
    """One id per word; decodes words joined by single spaces."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(dict(W), unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")


def char_tokenizer():
    """Character-level (BPE without merges, spaces are tokens): a reward tokenizer unlike the policy's."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>"] + CHARS)}
    tk = Tokenizer(models.BPE(vocab, merges=[]))
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")


def _gpt2_config(vocab_size, **kw):
    from transformers import GPT2Config

    return GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=16, n_layer=1, n_head=2, pad_token_id=PAD,
                      bos_token_id=EOS, eos_token_id=EOS, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **kw)


def policy_path(root: str, seed: int = 0) -> str:
    """A tiny GPT-2 LM saved with its tokenizer (TRL builds its reference model from the path)."""
    from transformers import GPT2LMHeadModel

    path = os.path.join(root, f"policy{seed}")
    if not os.path.exists(os.path.join(path, "config.json")):
        torch.manual_seed(seed)
        GPT2LMHeadModel(_gpt2_config(len(WORDS))).save_pretrained(path)
        word_tokenizer().save_pretrained(path)
    return path


def reward_model(seed: int = 1, vocab_size: int | None = None, name: str = "rm"):
    from transformers import GPT2ForSequenceClassification

    torch.manual_seed(seed)
    cfg = _gpt2_config(vocab_size or len(WORDS), num_labels=1)
    cfg._name_or_path = name  # TRL names the reward function after it
    return GPT2ForSequenceClassification(cfg).eval()


def prompt_dataset(n: int = 12):
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [PROMPTS[i % len(PROMPTS)] for i in range(n)]})


def grpo_config(out: str, **kw):
    from trl import GRPOConfig

    base = dict(
        output_dir=out, per_device_train_batch_size=4, num_generations=2, max_completion_length=6, max_steps=1,
        learning_rate=1e-3, use_cpu=True, bf16=False, report_to="none", logging_steps=1, save_strategy="no",
        disable_tqdm=True, seed=0, beta=0.0, dataloader_num_workers=0, log_completions=False,
    )
    base.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GRPOConfig(**base)


def recording(cls):
    """cls subclass whose `_generate_and_score_completions` outputs are kept in `self.recorded`."""

    class Recording(cls):
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            if not hasattr(self, "recorded"):
                self.recorded = []
            row = {k: (x.detach().clone() if torch.is_tensor(x) else x) for k, x in out.items()}
            if getattr(self, "_r3hf_last", None) is not None:
                row["r3hf"] = {k: x.detach().clone() for k, x in self._r3hf_last.items()}
            self.recorded.append(row)
            return out

    Recording.__name__ = f"Recording{cls.__name__}"
    return Recording


def deterministic_rollout(prompts, trainer):
    """A `rollout_func` (TRL's custom generation hook) whose completion depends only on the prompt
    and the global row: the same batch on one process or several. Rows with an odd id get an
    environment-output span (env_mask 0: TRL's tool_mask); some rows end in EOS, others are
    truncated (no EOS)."""
    tok = trainer.processing_class
    start = trainer.accelerator.process_index * len(prompts)
    prompt_ids, completion_ids, env_mask, logprobs = [], [], [], []
    for i, p in enumerate(prompts):
        row = start + i
        ids = tok(p, add_special_tokens=False)["input_ids"]
        g = torch.Generator().manual_seed(1000 + row * 7 + sum(ids))
        n = 2 + int(torch.randint(0, 4, (1,), generator=g))
        words = torch.randint(2, len(WORDS), (n,), generator=g).tolist()
        mask = [1] * n
        if row % 2 == 1:  # a 2-token environment span in the middle
            words = words[:1] + [W["not"], W["very"]] + words[1:]
            mask = mask[:1] + [0, 0] + mask[1:]
        if row % 3 != 2:  # ends with EOS; every third row is truncated
            words, mask = words + [EOS], mask + [1]
        prompt_ids.append(ids)
        completion_ids.append(words)
        env_mask.append(mask)
        logprobs.append([0.0] * len(words))
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs, "env_mask": env_mask}


class ForwardCounter:
    """Counts forward calls of a module (hooks; removed by close())."""

    def __init__(self, module):
        self.n = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.n += 1

    def close(self):
        self.handle.remove()


def tmpdir():
    return tempfile.mkdtemp(prefix="r3hf-grpo-")


# Module-scoped fixtures shared by the TRL GRPO test modules (import them by name): one temporary
# folder and one saved tiny policy per module.
@pytest.fixture(scope="module")
def root():
    return tmpdir()


@pytest.fixture(scope="module")
def policy(root):
    return policy_path(root)
