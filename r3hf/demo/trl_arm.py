"""The demo's critic-free arm through TRL 1.16's real `GRPOTrainer` loop (`R3HFGRPOTrainer`).

What has to be bridged, and why (conventions, not math: the advantages come from the same op):
- TRL decodes completions with `skip_special_tokens=True`, which drops `<eos>` from the text the
  reward model re-reads. The demo's RM was trained on responses that end in `<eos>` and scores a
  response there, so `trl_tokenizer` keeps `<eos>` (only `<pad>` is skipped) and the RM re-reads
  exactly the demo's ids.
- Prompts are text: the prompt's words with a trailing space, so prompt + completion joins into
  the same words.
- TRL builds its reference model by reloading the policy's path, which would lose the demo's
  fixed `<pad>` bias (`train.restrict_vocab`, not a saved parameter); `make_trainer` hands it the
  in-memory start policy instead.
- The KL penalty goes into the rewards (`kl_in_reward`, k1, the demo's `kl_coef`) and TRL's loss
  KL is off (`beta=0`), as in the demo's loop.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
import warnings

import torch

from . import task


def trl_tokenizer():
    """The demo's word-level tokenizer, except that decoding with skip_special_tokens=True keeps
    `<eos>` (and drops `<pad>`): see the module docstring."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    class _KeepEos(PreTrainedTokenizerFast):
        def _decode(self, token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=None, **kwargs):
            if skip_special_tokens:
                ids = [token_ids] if isinstance(token_ids, int) else list(token_ids)
                token_ids = [int(t) for t in ids if int(t) != task.PAD_ID]
            return super()._decode(token_ids, skip_special_tokens=False,
                                   clean_up_tokenization_spaces=clean_up_tokenization_spaces, **kwargs)

    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(task.VOCAB)}, unk_token=task.PAD))
    tok.pre_tokenizer = WhitespaceSplit()
    return _KeepEos(tokenizer_object=tok, pad_token=task.PAD, eos_token=task.EOS, unk_token=task.PAD)


def prompt_text(prompt_ids) -> str:
    """[P] word ids -> "w1 w2 w3 w4 " (trailing space: the completion's words follow)."""
    return " ".join(task.decode(torch.as_tensor(prompt_ids))) + " "


def prompt_dataset(prompts: torch.Tensor):
    """[N, P] prompt ids -> a `datasets.Dataset` with a "prompt" text column."""
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [prompt_text(p) for p in prompts]})


def grpo_config(out: str, *, batch_size: int, group_size: int, steps: int, lr: float, seed: int, **kw):
    """A CPU GRPOConfig matching the demo's loop where TRL allows: `batch_size` completions per
    step in groups of `group_size`, up to task.RESPONSE_LEN tokens, temperature 1, no loss KL."""
    from trl import GRPOConfig

    base = dict(
        output_dir=out, per_device_train_batch_size=batch_size, num_generations=group_size,
        max_completion_length=task.RESPONSE_LEN, max_steps=steps, learning_rate=lr, use_cpu=True, bf16=False,
        report_to="none", logging_steps=1, save_strategy="no", disable_tqdm=True, seed=seed, beta=0.0,
        dataloader_num_workers=0, log_completions=False, temperature=1.0, shuffle_dataset=False,
        # the demo's optimiser: Adam at a constant rate, eps 1e-5, no weight decay
        lr_scheduler_type="constant", warmup_steps=0, adam_epsilon=1e-5, weight_decay=0.0, max_grad_norm=1.0,
    )
    base.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GRPOConfig(**base)


def make_trainer(policy, rm, prompts: torch.Tensor, *, estimator: str = "rloo", baseline: str = "row",
                 beta_c: float = 1.0, kl_coef: float = 0.05, batch_size: int = 48, group_size: int = 4,
                 steps: int = 1, lr: float = 1e-3, seed: int = 0, rollout_func=None, trainer_cls=None,
                 out: str | None = None, potential=None, **config_kw):
    """An `R3HFGRPOTrainer` on a copy of the demo's policy and its RM (every row of `prompts` once,
    in order; TRL repeats each `group_size` times). `kl_coef` > 0 puts the k1 KL to the start
    policy into the rewards, as the demo's loop does. potential: a PotentialHead for R3HF's shaping
    (`R3HFGRPOTrainer(potential=)`), R still the RM's."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from ..integrations.trl import R3HFGRPOTrainer

    out = out or tempfile.mkdtemp(prefix="r3hf-demo-trl-")
    model = copy.deepcopy(policy).train()
    # TRL reloads the reference from the model's path: give it one (its reference is replaced below).
    path = os.path.join(out, "start_policy")
    if not os.path.exists(os.path.join(path, "config.json")):
        model.save_pretrained(path)
        trl_tokenizer().save_pretrained(path)
    model.config._name_or_path = path
    model.generation_config.pad_token_id = task.PAD_ID
    model.generation_config.eos_token_id = task.EOS_ID
    rm = copy.deepcopy(rm).eval()
    rm.config._name_or_path = "demo-rm"
    rm.config.pad_token_id = task.PAD_ID
    cls = trainer_cls or R3HFGRPOTrainer
    config = grpo_config(out, batch_size=batch_size, group_size=group_size, steps=steps, lr=lr, seed=seed,
                         **config_kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = cls(model=model, reward_funcs=[rm], args=config, train_dataset=prompt_dataset(prompts),
                      processing_class=trl_tokenizer(), reward_processing_classes=[trl_tokenizer()],
                      rollout_func=rollout_func, estimator=estimator, baseline=baseline, beta_c=beta_c,
                      kl_in_reward=kl_coef, **({"potential": potential} if potential is not None else {}))
    # disable_tqdm makes TRL print every step's log dict to stdout: 40 lines per run drown the
    # demo's own progress lines; trainer.state.log_history keeps every logged value.
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    if kl_coef > 0:
        ref = copy.deepcopy(policy).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        from trl.trainer.utils import add_fused_lm_head

        # as TRL prepares its own reference (log-probs read through its fused LM head, which keeps the bias)
        add_fused_lm_head(ref, temperature=trainer.temperature, cast_lm_head_to_fp32=trainer.args.cast_lm_head_to_fp32)
        trainer.ref_model = ref
    return trainer


def _recording_trainer():
    from ..integrations.trl import R3HFGRPOTrainer

    class _Recording(R3HFGRPOTrainer):
        """Keeps, per generation batch, what the demo reports per step."""

        def _generate_and_score_completions(self, inputs):
            t = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            P, L = task.PROMPT_LEN, task.RESPONSE_LEN
            ids = out["completion_ids"].detach().cpu()
            keep = out["completion_mask"].detach().cpu().bool()
            responses = torch.full((ids.shape[0], L), task.PAD_ID, dtype=torch.long)
            n = min(L, ids.shape[1])
            responses[:, :n] = ids[:, :n].masked_fill(~keep[:, :n], task.PAD_ID)
            prompts = out["prompt_ids"].detach().cpu()[:, -P:]
            last = self._r3hf_last
            mask = last["response_mask"].cpu()
            rows = torch.arange(mask.shape[0])
            final = last["scores"].cpu()[rows, mask.sum(1)]  # score column k = after k completion tokens
            self.r3hf_demo_history.append({
                "step": len(self.r3hf_demo_history) + 1,
                "gt_score": task.ground_truth(prompts, responses).mean().item(),
                "rm_score": final.mean().item(),
                "length": task.response_mask(responses).sum(1).float().mean().item(),
                "truncation_rate": task.truncated(responses).float().mean().item(),
                "time_r3hf_ops_s": float("nan"),
                "time_step_s": time.perf_counter() - t,  # generation and scoring (TRL's loss step not included)
            })
            return out

    return _Recording


def run_trl(method: str, seed: int, *, init_policy, rm, steps: int, batch_size: int = 48, group_size: int = 4,
            lr: float = 1e-3, kl_coef: float = 0.05, eval_prompts=None, device: str = "cpu", potential=None) -> dict:
    """One critic-free run in TRL's GRPOTrainer loop (`R3HFGRPOTrainer`, estimator "rloo", the
    reward's β_c and baseline from train.REWARD_SETTINGS): TRL generates, scores and takes its own
    loss step (one pass per batch, TRL's default loss). Same result layout as `train.run_ppo`
    (history per step, final evaluation). potential: the PotentialHead the "head" rewards need."""
    from .train import evaluate, reward_settings

    if torch.device(device).type != "cpu":
        raise ValueError("the TRL arm runs on the CPU (use_cpu=True)")
    rs = reward_settings(method)
    if rs["potential"] == "head" and potential is None:
        raise ValueError(f"reward {method!r} shapes with a potential head: pass potential= (fit_demo_potential)")
    if rs["beta_c"] == "auto":
        raise ValueError("R3HFGRPOTrainer takes a number for beta_c, not 'auto'")
    gen = torch.Generator().manual_seed(seed)
    prompts = task.sample_prompts(steps * batch_size // group_size, gen)
    trainer = make_trainer(init_policy, rm, prompts, estimator="rloo", baseline=rs["baseline"],
                           beta_c=float(rs["beta_c"]), kl_coef=kl_coef, batch_size=batch_size, group_size=group_size,
                           steps=steps, lr=lr, seed=seed, trainer_cls=_recording_trainer(),
                           potential=potential if rs["potential"] == "head" else None)
    trainer.r3hf_demo_history = []
    torch.manual_seed(seed)
    trainer.train()
    policy = trainer.model.eval()
    ref = copy.deepcopy(init_policy).eval()
    final = evaluate(policy, ref, rm, eval_prompts, torch.Generator().manual_seed(10_000 + seed)) \
        if eval_prompts is not None else {}
    for h, log in zip(trainer.r3hf_demo_history, [x for x in trainer.state.log_history if "loss" in x]):
        h["loss"] = log.get("loss")
    return {"method": method, "estimator": "trl-rloo", "seed": seed, "history": trainer.r3hf_demo_history,
            "final": final, "first_step": {}, "policy": policy}
