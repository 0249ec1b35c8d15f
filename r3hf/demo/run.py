"""`r3hf demo`: preference data → reward model (TRL) → PPO with sparse vs R3HF rewards, on a
synthetic task whose ground truth is known (see `r3hf.demo.task`). Offline, CPU-sized."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .. import ops
from ..ppo import PPOConfig
from . import report, task
from .policy import make_policy, pretrain, sample
from .reward_model import credit_diagnostic, pairwise_accuracy, train_reward_model
from .train import run_ppo


@dataclass
class DemoSettings:
    seeds: int = 3
    steps: int = 40
    batch_size: int = 64
    train_pairs: int = 4000
    test_pairs: int = 500
    rm_epochs: float = 2.0
    pretrain_steps: int = 150
    eval_prompts: int = 512
    lr: float = 1e-3
    label_noise: float = 1.0  # Bradley–Terry temperature, in units of earned tokens
    samples_shown: int = 4
    critic_init: str = "reward-model"  # TRL's convention; "policy" for a zero-head critic on the policy backbone

    @classmethod
    def quick(cls) -> "DemoSettings":
        return cls(seeds=1, steps=8, train_pairs=800, test_pairs=200, rm_epochs=1.0, pretrain_steps=40,
                   eval_prompts=128, samples_shown=3)


def _bar(total, desc):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=True)


def _trainer_progress_callback():
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        bar = None

        def on_train_begin(self, args, state, control, **kw):
            self.bar = _bar(state.max_steps, "reward model (TRL RewardTrainer)")

        def on_step_end(self, args, state, control, **kw):
            self.bar.update(1)

        def on_train_end(self, args, state, control, **kw):
            self.bar.close()

    return Progress()


def _machine(device: str) -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    try:
        info["fused_reward_gae_backend"] = ops.backends()["ops"]["fused_reward_gae"][torch.device(device).type]
    except Exception as exc:  # noqa: BLE001 - informational only
        info["fused_reward_gae_backend"] = f"unknown ({exc})"
    return info


def _sample_rows(policy, rm, prompts, method, seed):
    """A few responses of a final policy, each token with its R3HF reward and ground-truth credit."""
    from ..viz import token_rewards_for

    qr, _ = sample(policy, prompts, task.RESPONSE_LEN, torch.Generator().manual_seed(20_000 + seed))
    qr = qr.cpu()
    P = task.PROMPT_LEN
    credit = task.token_credit(qr[:, :P], qr[:, P:])
    rows = []
    for b in range(len(qr)):
        res = token_rewards_for(rm, qr[b, :P], qr[b, P:])
        rows.append({
            "method": method,
            "seed": seed,
            "prompt_tokens": task.decode(qr[b, :P]),
            "response_tokens": task.decode(qr[b, P:]),
            "rewards": res["rewards"].tolist(),
            "credit": credit[b].tolist(),
            "marks": credit[b].bool().tolist(),
            "name": f"{method}: {' '.join(task.decode(qr[b, :P]))}",
            "label": f"{method} policy (seed {seed}): RM score {res['prompt_score']:+.2f} (prompt) -> "
                     f"{res['final_score']:+.2f}; ground truth {credit[b].mean():.3f} "
                     f"(credited tokens: {', '.join(str(j) for j in credit[b].nonzero().flatten().tolist()) or 'none'})",
        })
    return rows


def run(*, seeds: int | None = None, steps: int | None = None, out="r3hf-demo", device: str = "cpu",
        quick: bool = False, threads: int | None = 1, critic_init: str | None = None, echo=print) -> dict:
    """Run the whole demo and write plot, JSON and heatmap into `out`. Returns the JSON dict."""
    settings = DemoSettings.quick() if quick else DemoSettings()
    if seeds is not None:
        settings.seeds = seeds
    if steps is not None:
        settings.steps = steps
    if critic_init is not None:
        settings.critic_init = critic_init
    if settings.seeds < 1 or settings.steps < 1:
        raise ValueError("--seeds and --steps must be at least 1")
    if threads:
        torch.set_num_threads(threads)  # tiny models: one thread is fastest and steady on a shared CPU
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_total = time.perf_counter()
    timings = {}
    started = _dt.datetime.now(_dt.timezone.utc)

    # 1. Preference data from the reference policy, labelled by the hidden ground truth.
    t = time.perf_counter()
    data_gen = torch.Generator().manual_seed(0)
    reference = task.ReferencePolicy.make()
    bar = _bar(2, "preference pairs")
    train_pairs = task.preference_pairs(settings.train_pairs, data_gen, reference, noise=settings.label_noise)
    bar.update(1)
    test_pairs = task.preference_pairs(settings.test_pairs, data_gen, reference, noise=settings.label_noise)
    bar.update(1)
    bar.close()
    timings["data_s"] = time.perf_counter() - t

    # 2. Reward model with TRL's RewardTrainer; held-out pairwise accuracy.
    t = time.perf_counter()
    rm, rm_history = train_reward_model(train_pairs, epochs=settings.rm_epochs, device=device,
                                        callbacks=[_trainer_progress_callback()])
    rm_metrics = pairwise_accuracy(rm, test_pairs, device=device)
    diag_gen = torch.Generator().manual_seed(7)
    diag_prompts = task.sample_prompts(512, diag_gen)
    rm_credit = credit_diagnostic(rm, diag_prompts, reference.sample(512, diag_gen))
    timings["reward_model_s"] = time.perf_counter() - t
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "writing shards" bar for a 100 kB model
    rm.save_pretrained(out / "reward_model")
    hf_logging.enable_progress_bar()
    task.make_tokenizer().save_pretrained(out / "reward_model")

    # 3. Tiny policy pre-trained on reference samples (the PPO start and the KL reference).
    t = time.perf_counter()
    policy0 = make_policy(0).to(device)
    bar = _bar(settings.pretrain_steps, "policy pre-training")
    pre_losses = pretrain(policy0, reference, steps=settings.pretrain_steps, generator=torch.Generator().manual_seed(1),
                          device=device, progress=bar)
    bar.close()
    timings["pretrain_s"] = time.perf_counter() - t
    eval_prompts = task.sample_prompts(settings.eval_prompts, torch.Generator().manual_seed(99))

    # 4. PPO, sparse vs R3HF, same start, same seeds, same budget.
    config = PPOConfig()
    runs = {m: [] for m in report.METHODS}
    shown = []
    t = time.perf_counter()
    for method in report.METHODS:
        for seed in range(settings.seeds):
            bar = _bar(settings.steps, f"PPO {method:6s} seed {seed}")
            res = run_ppo(method, seed, init_policy=policy0, rm=rm, steps=settings.steps,
                          batch_size=settings.batch_size, lr=settings.lr, config=config, device=device,
                          eval_prompts=eval_prompts, progress=bar, critic_init=settings.critic_init)
            bar.close()
            if seed == 0:
                shown += _sample_rows(res["policy"], rm, eval_prompts[: settings.samples_shown].to(device), method, seed)
            res.pop("policy")
            runs[method].append(res)
    timings["ppo_s"] = time.perf_counter() - t
    from .train import evaluate

    start_eval = evaluate(policy0, policy0, rm, eval_prompts.to(device), torch.Generator().manual_seed(10_000))

    # 5. Report.
    summary = report.summarise(runs)
    title = (f"sparse vs R3HF PPO on the synthetic task: {settings.seeds} seed(s), {settings.steps} steps, "
             f"batch {settings.batch_size}")
    report.plot(runs, out / "scores.png", title)
    from ..viz import heatmap_html, heatmap_png

    note = ("Responses of the final sparse and R3HF policies (seed 0) on held-out prompts, each token coloured by "
            "the reward model's redistributed reward. Underlined tokens earn ground-truth credit (a red word "
            "in the first half, a blue word in the second).")
    (out / "heatmap.html").write_text(heatmap_html(shown, note=note), encoding="utf-8")
    heatmap_png(shown, out / "heatmap.png", title="R3HF token rewards of final-policy samples (seed 0)")
    timings["total_s"] = time.perf_counter() - t_total
    result = {
        "date_utc": started.isoformat(timespec="seconds"),
        "machine": _machine(device),
        "settings": asdict(settings),
        "ppo_config": asdict(config),
        "task": {
            "vocab": list(task.VOCAB), "prompt_len": task.PROMPT_LEN, "response_len": task.RESPONSE_LEN,
            "rule": "red word in the first half or blue word in the second half earns 1; quality = mean",
        },
        "reward_model": {"held_out": rm_metrics, "credit_on_reference_samples": rm_credit, "train_log": rm_history},
        "pretrain": {"loss_first": pre_losses[0], "loss_last": pre_losses[-1]},
        "start_policy": start_eval,
        "summary": summary,
        "runs": runs,
        "samples": shown,
        "timings_s": timings,
        "files": {"plot": "scores.png", "heatmap_html": "heatmap.html", "heatmap_png": "heatmap.png",
                  "reward_model": "reward_model/"},
    }
    (out / "results.json").write_text(json.dumps(result, indent=1, default=float), encoding="utf-8")

    echo("")
    echo(f"reward model: held-out pairwise accuracy {rm_metrics['label_accuracy']:.3f} on noisy labels, "
         f"{rm_metrics['ground_truth_accuracy']:.3f} against the ground truth "
         f"(labels agree with the ground truth on {rm_metrics['label_agreement_with_ground_truth']:.3f} of pairs)")
    echo(f"reward model credit assignment on reference samples: mean R3HF reward {rm_credit['mean_reward_credited_tokens']:+.3f} "
         f"on tokens with ground-truth credit vs {rm_credit['mean_reward_other_tokens']:+.3f} on the others; "
         f"sign agrees on {rm_credit['sign_agreement']:.3f} of tokens")
    echo(f"critic initialised from: {settings.critic_init}")
    echo(f"start policy: ground truth {start_eval['gt_score']:.3f}, RM score {start_eval['rm_score']:+.3f}")
    echo("")
    echo(report.table(summary))
    echo("")
    echo(summary["verdict"])
    echo(f"steps to reach: first PPO step where the {report.SMOOTH}-step moving average of the mean rollout ground "
         f"truth reaches the sparse run's final value ({summary['target_gt_for_steps_to_reach']:.3f}).")
    echo(f"wrote {out}/scores.png, results.json, heatmap.html, heatmap.png, reward_model/ "
         f"in {timings['total_s']:.0f} s on {result['machine']['device']}")
    return result

