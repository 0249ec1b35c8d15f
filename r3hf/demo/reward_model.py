"""The demo's reward model: a tiny GPT-2 sequence classifier trained with TRL's RewardTrainer,
and its score at every prefix (what R3HF redistributes)."""

from __future__ import annotations

import math
import tempfile
import warnings

import torch

from . import task


def tiny_gpt2_config(num_labels: int | None = None, n_embd: int = 64, n_layer: int = 2):
    from transformers import GPT2Config

    kw = dict(
        vocab_size=len(task.VOCAB), n_positions=32, n_embd=n_embd, n_layer=n_layer, n_head=4,
        pad_token_id=task.PAD_ID, bos_token_id=task.EOS_ID, eos_token_id=task.EOS_ID,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    if num_labels is not None:
        kw["num_labels"] = num_labels
    return GPT2Config(**kw)


@torch.no_grad()
def init_gpt2_weights(model, seed: int):
    """Initialise a GPT-2 model's parameters ourselves, from a generator seeded with `seed`, so
    the start weights do not depend on the transformers release. Returns the model.

    Why: transformers 5.10.4's `GPT2PreTrainedModel._init_weights` never applied GPT-2's scaled
    residual init (it compared full parameter names with "c_proj.weight", which never matched), so
    the c_proj weights got std 0.02; 5.24.0 applies it (std 0.02 / sqrt(2 n_layer)) and draws the
    random numbers in another order. Same seed, different start weights, different reward models
    (docs/demo.md, "Reproducibility"). The scheme here is GPT-2's: weights N(0, 0.02), residual
    projections (c_proj) N(0, 0.02 / sqrt(2 n_layer)), biases 0, LayerNorm 1 and 0; parameters in
    `named_parameters()` order (tied weights once)."""
    gen = torch.Generator().manual_seed(seed)
    std = model.config.initializer_range
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.zero_()
        elif ".ln_" in name or name.startswith(("ln_f", "transformer.ln_f")):
            p.fill_(1.0)
        else:
            s = std / math.sqrt(2 * model.config.n_layer) if name.endswith("c_proj.weight") else std
            p.copy_(torch.randn(p.shape, generator=gen) * s)
    return model


def make_reward_model(seed: int = 0):
    """The demo's reward model, its start weights a function of `seed` alone (`init_gpt2_weights`)."""
    from transformers import GPT2ForSequenceClassification

    torch.manual_seed(seed)
    return init_gpt2_weights(GPT2ForSequenceClassification(tiny_gpt2_config(num_labels=1)), seed)


def train_reward_model(train_pairs, *, epochs: float = 2.0, batch_size: int = 32, lr: float = 3e-3, seed: int = 0,
                       device: str = "cpu", callbacks=None, model=None):
    """Train a tiny GPT-2 reward model on `train_pairs` (see `task.preference_pairs`) with TRL's
    RewardTrainer (Bradley–Terry loss). Returns (model in eval mode, the trainer's log history)."""
    from transformers.trainer_callback import PrinterCallback
    from trl import RewardConfig, RewardTrainer

    model = model if model is not None else make_reward_model(seed)
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        # transformers 5 warns about a deprecated field that TRL's config sets itself, not us.
        warnings.filterwarnings("ignore", category=FutureWarning)
        args = RewardConfig(
            output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=batch_size, learning_rate=lr,
            lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, seed=seed, report_to="none", save_strategy="no",
            logging_steps=10, disable_tqdm=True, use_cpu=(device == "cpu"), dataloader_num_workers=0,
            max_length=None,
            # fp32, as PPO reads the model: with RewardConfig's default bf16=True the trained model's
            # forward would run under bf16 autocast (r3hf.models follows it, at bf16 precision).
            bf16=False,
        )
        trainer = RewardTrainer(
            model=model, args=args, train_dataset=train_pairs, processing_class=task.make_tokenizer(),
            callbacks=callbacks,
        )
        trainer.remove_callback(PrinterCallback)  # the demo shows its own progress bar
        trainer.train()
        history = list(trainer.state.log_history)
    model = trainer.model.to(device).eval()
    return model, history


def _right_pad(rows, device):
    """Lists of ids of any lengths -> ([B, S] right-padded with <pad>, [B] lengths)."""
    lengths = torch.tensor([len(r) for r in rows], device=device)
    ids = torch.full((len(rows), int(lengths.max())), task.PAD_ID, dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(r, device=device)
    return ids, lengths


@torch.no_grad()
def sequence_scores(model, input_ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Score of each sequence at its last token -> [B] float32: input_ids [B, S] right-padded,
    lengths [B] (None: S). Read exactly as PPO reads it (`r3hf.models.prefix_scores`, causal, so
    the padding after a row's last token does not change its score)."""
    from ..models import prefix_scores

    scores = prefix_scores(model, input_ids)
    if lengths is None:
        return scores[:, -1]
    return scores.gather(1, (lengths - 1)[:, None]).squeeze(1)


def credit_label_fn(noise: float = 1.0, seed: int = 0):
    """label_fn for `r3hf.models.prefix_pairs` that knows the task: the cut pair is labelled by the
    ground-truth credit earned in the kept tokens, with the same Bradley–Terry noise as the full
    labels (P(chosen prefix ≻ rejected prefix) = σ((earned_c − earned_r)/noise)); earned = the kept
    tokens' `task.token_value` (credit − filler cost)."""
    gen = torch.Generator().manual_seed(seed)

    def label(prompt, chosen, rejected, example):
        c = task.token_value(None, torch.tensor([chosen]), task.RESPONSE_LEN).sum()
        r = task.token_value(None, torch.tensor([rejected]), task.RESPONSE_LEN).sum()
        return bool(torch.rand((), generator=gen) < torch.sigmoid((c - r) / noise))

    return label


@torch.no_grad()
def pairwise_accuracy(model, pairs, device: str = "cpu") -> dict:
    """Held-out accuracy: the fraction of pairs whose chosen response the RM scores higher, against
    the (noisy) labels and against the noise-free ground truth (pairs with equal quality skipped)."""
    sc = sequence_scores(model, *_right_pad(pairs["chosen_ids"], device))
    sr = sequence_scores(model, *_right_pad(pairs["rejected_ids"], device))
    gc, gr = torch.tensor(pairs["gt_chosen"], device=device), torch.tensor(pairs["gt_rejected"], device=device)
    distinct = (gc - gr).abs() > 1e-6  # equal quality (up to float rounding): skipped
    rm_prefers_gt_better = ((sc > sr) == (gc > gr))[distinct]
    return {
        "label_accuracy": (sc > sr).float().mean().item(),
        "ground_truth_accuracy": rm_prefers_gt_better.float().mean().item(),
        "label_agreement_with_ground_truth": torch.tensor(pairs["agrees"]).float().mean().item(),
        "n_pairs": len(pairs),
    }


@torch.no_grad()
def credit_diagnostic(model, prompts: torch.Tensor, responses: torch.Tensor) -> dict:
    """How well the RM's redistributed rewards match the hidden per-token credit: mean R3HF reward
    of tokens that earn ground-truth credit and of those that do not, and the fraction of tokens
    whose reward sign agrees (> 0 exactly for credited tokens). prompts [B, P], responses [B, L]."""
    from .. import ops
    from ..models import prefix_scores

    device = next(model.parameters()).device
    ids = torch.cat([prompts, responses], 1).to(device)
    scores = prefix_scores(model, ids)
    mask = task.response_mask(responses).to(device)
    dense = ops.redistribute(scores, mask, prompts.shape[1]).cpu()[mask.cpu()]
    credit = task.token_credit(prompts, responses).bool()[mask.cpu()]
    return {
        "mean_reward_credited_tokens": dense[credit].mean().item(),
        "mean_reward_other_tokens": dense[~credit].mean().item(),
        "sign_agreement": ((dense > 0) == credit).float().mean().item(),
        "n_tokens": int(credit.numel()),
    }
