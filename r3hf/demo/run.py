"""`r3hf demo`: when does R3HF help? Preference data → reward models (TRL; full-response and
prefix-aware) → critic-free RLOO and PPO-GAE with sparse rewards, R3HF on the RM's own prefix
scores and the recommended setting (a label-free potential head; the per-position baseline under
RLOO), on a synthetic task whose ground truth is known (see `r3hf.demo.task`). Offline, CPU-sized.
`--full` adds beta_c="auto", the two ingredients alone, more RMs and TRL's GRPOTrainer loop."""

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
from .reward_model import credit_diagnostic, credit_label_fn, make_reward_model, pairwise_accuracy, train_reward_model
from .train import fit_demo_potential, reward_settings, restrict_vocab, run_ppo


RM_KINDS = {
    "full": "trained on full responses only (what users have)",
    "prefix": "the full pairs plus cut copies of half of them, labelled by the task's credit in the kept tokens (label_fn)",
    "prefix-keep": "the full pairs plus cut copies of half of them, keeping the full pair's label (prefix_pairs' default)",
}


# The arms' third reward: the recommended setting (train.REWARD_SETTINGS["recommended"]): R3HF
# shaped by a potential head fit label-free on the start policy's samples (r3hf.models.fit_potential,
# default "regression" mode), R from the RM; under RLOO with the per-position group baseline
# (ops.group_advantages(..., baseline="position")). Every default run, table and verdict follows it.
RECOMMENDED = "recommended"


@dataclass
class DemoSettings:
    seeds: int = 12  # paired 2-SE verdicts need seeds: arms are dropped before seeds
    steps: int = 24
    batch_size: int = 48
    group_size: int = 4  # rloo: responses per prompt
    train_pairs: int = 2000
    test_pairs: int = 500
    rm_epochs: float = 2.0
    prefix_fraction: float = 0.5
    pretrain_steps: int = 150
    eval_prompts: int = 128
    diag_samples: int = 256
    potential_samples: int = 512  # start-policy responses the potential head is fit on
    lr: float = 1e-3
    label_noise: float = 1.0  # Bradley–Terry temperature, in units of earned tokens
    ppo_epochs: int = 2
    num_minibatches: int = 2
    samples_shown: int = 3
    critic_init: str = "policy"  # PPO's critic: the policy's backbone with a zero head ("reward-model": a copy of the RM)
    estimators: tuple = ("rloo", "ppo")
    rms: tuple = ("full",)  # reward models the policies are trained on (what users have)
    diagnose_rms: tuple = ("full", "prefix-keep")  # reward models trained and diagnosed
    rewards: tuple = ("sparse", "r3hf", RECOMMENDED)
    # the critic-free arm again in TRL's real GRPOTrainer loop (R3HFGRPOTrainer, r3hf.demo.trl_arm):
    # these rewards, arm "trl-rloo/<rm>/<reward>"; not in the default run (its time budget)
    trl_rewards: tuple = ()
    workers: int = 2  # processes running arms in parallel (one torch thread each)

    @classmethod
    def quick(cls) -> "DemoSettings":
        return cls(seeds=1, steps=5, batch_size=32, train_pairs=600, test_pairs=200, rm_epochs=1.0, pretrain_steps=40,
                   eval_prompts=64, diag_samples=96, potential_samples=256, samples_shown=2)

    @classmethod
    def full(cls) -> "DemoSettings":
        return cls(seeds=12, steps=40, batch_size=64, train_pairs=4000, eval_prompts=512, diag_samples=512,
                   rms=("full", "prefix", "prefix-keep"), diagnose_rms=("full", "prefix", "prefix-keep"),
                   rewards=("sparse", "r3hf", "auto", "position", "head", RECOMMENDED),
                   trl_rewards=("sparse", "position", RECOMMENDED))


def _bar(total, desc):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=True)


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
    gt = task.ground_truth(qr[:, :P], qr[:, P:])
    lengths = task.response_lengths(qr[:, P:])
    rows = []
    for b in range(len(qr)):
        n = int(lengths[b])  # the response's tokens, <eos> included; no padding
        res = token_rewards_for(rm, qr[b, :P], qr[b, P:P + n])
        rows.append({
            "method": method,
            "seed": seed,
            "prompt_tokens": task.decode(qr[b, :P]),
            "response_tokens": task.decode(qr[b, P:P + n]),
            "rewards": res["rewards"].tolist(),
            "credit": credit[b, :n].tolist(),
            "marks": credit[b, :n].bool().tolist(),
            "name": f"{method}: {' '.join(task.decode(qr[b, :P]))}",
            "label": f"{method} policy (seed {seed}): RM score {res['prompt_score']:+.2f} (prompt) -> "
                     f"{res['final_score']:+.2f}; ground truth {gt[b]:.3f}, {n} tokens",
        })
    return rows


_SHARED: dict = {}  # what every arm needs, set before the worker processes fork


def _run_arm(job):
    """One (estimator, reward model, reward, seed) run; returns (arm, seed, result without the policy)."""
    estimator, rm_name, reward, seed = job
    s = _SHARED
    settings = s["settings"]
    torch.set_num_threads(1)
    config = PPOConfig(ppo_epochs=settings.ppo_epochs, num_minibatches=settings.num_minibatches)
    if estimator == "trl-rloo":
        from .trl_arm import run_trl

        res = run_trl(reward, seed, init_policy=s["policy0"], rm=s["rms"][rm_name], steps=settings.steps,
                      batch_size=settings.batch_size, group_size=settings.group_size, lr=settings.lr,
                      kl_coef=config.kl_coef, eval_prompts=s["eval_prompts"], device=s["device"],
                      potential=s["potentials"].get(rm_name))
        res.pop("policy")
        return report.arm_name(estimator, rm_name, reward), seed, res
    res = run_ppo(reward, seed, init_policy=s["policy0"], rm=s["rms"][rm_name], steps=settings.steps,
                  batch_size=settings.batch_size, lr=settings.lr, config=config, device=s["device"],
                  eval_prompts=s["eval_prompts"], critic_init=settings.critic_init, estimator=estimator,
                  group_size=settings.group_size, potential=s["potentials"].get(rm_name))
    policy = res.pop("policy")
    if seed == 0 and reward == "r3hf" and estimator == settings.estimators[0]:
        res["samples"] = _sample_rows(policy, s["rms"][rm_name], s["eval_prompts"][: settings.samples_shown].to(s["device"]),
                                      f"{estimator}/{rm_name}/{reward}", seed)
    return report.arm_name(estimator, rm_name, reward), seed, res


def _quarters(diagnostics: dict, which: str) -> str:
    """Held-out Var(R − Φ_t)/Var(R) by bucket from a PotentialHead's diagnostics ("rm" or "potential")."""
    return " · ".join(f"{b[f'{which}_var_ratio']:.2f}" for b in diagnostics.get("buckets", []))


# PPO has no group baseline, so these rewards are the same run as another arm there ("position" is
# "r3hf", "head" is "recommended"): not run twice.
PPO_DUPLICATES = {"position": "r3hf", "head": "recommended"}


def _jobs(settings):
    return [(e, rm, r, seed) for e in settings.estimators for rm in settings.rms for r in settings.rewards
            if not (e == "ppo" and PPO_DUPLICATES.get(r) in settings.rewards) for seed in range(settings.seeds)] + [
        ("trl-rloo", rm, r, seed) for rm in settings.rms for r in settings.trl_rewards for seed in range(settings.seeds)]


def _run_all(jobs, workers: int, echo):
    """Run the jobs, in `workers` forked processes when > 1; results in job order."""
    results = {}
    t0 = time.perf_counter()

    def done(arm, seed, res):
        results[(arm, seed)] = res
        gt = res["final"].get("gt_score", float("nan"))
        echo(f"  [{len(results):3d}/{len(jobs)}] {arm:22s} seed {seed}: final ground truth {gt:.3f} "
             f"({time.perf_counter() - t0:.0f} s)")

    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork")) as pool:
            futures = [pool.submit(_run_arm, j) for j in jobs]
            for f in as_completed(futures):
                done(*f.result())
    else:
        for j in jobs:
            done(*_run_arm(j))
    return [results[(report.arm_name(*j[:3]), j[3])] for j in jobs]


def _rm_data(kind, settings, train_pairs):
    from ..models import prefix_pairs

    if kind == "full":
        return train_pairs
    label_fn = credit_label_fn(settings.label_noise, seed=5) if kind == "prefix" else None
    return prefix_pairs(train_pairs, fraction=settings.prefix_fraction, prompt_len=task.PROMPT_LEN,
                        label_fn=label_fn, keep_full=True, seed=3)


def _train_rm_job(kind):
    s = _SHARED
    torch.set_num_threads(1)
    t = time.perf_counter()
    model, log = train_reward_model(_rm_data(kind, s["settings"], s["train_pairs"]), epochs=s["settings"].rm_epochs,
                                    device=s["device"])
    # The weights, not the trained module: the trainer leaves unpicklable hooks on it.
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return kind, state, log, time.perf_counter() - t


def _train_rms(settings, train_pairs, device, echo):
    """The reward models of the study: "full", "prefix" (label_fn) and "prefix-keep" (default
    label), trained in parallel worker processes when settings.workers > 1."""
    wanted = list(dict.fromkeys([*settings.diagnose_rms, *settings.rms]))
    unknown = [k for k in wanted if k not in RM_KINDS]
    if unknown:
        raise ValueError(f"unknown reward model kinds {unknown}; choose from {list(RM_KINDS)}")
    _SHARED.update(settings=settings, train_pairs=train_pairs, device=device)
    rms, logs = {}, {}

    def done(kind, state, log, seconds):
        model = make_reward_model(0)
        model.load_state_dict(state)
        rms[kind], logs[kind] = model.to(device).eval(), log
        echo(f"reward model {kind!r} ({RM_KINDS[kind]}): trained in {seconds:.0f} s")

    try:
        if settings.workers > 1 and len(wanted) > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(max_workers=settings.workers, mp_context=mp.get_context("fork")) as pool:
                for res in pool.map(_train_rm_job, wanted):
                    done(*res)
        else:
            for kind in wanted:
                done(*_train_rm_job(kind))
    finally:
        _SHARED.clear()
    return {k: rms[k] for k in wanted}, logs


def resolve_settings(*, quick: bool = False, full: bool = False, seeds: int | None = None, steps: int | None = None,
                     critic_init: str | None = None, workers: int | None = None, trl: bool = False) -> DemoSettings:
    """The study's settings from `r3hf demo`'s flags (None: the preset's value)."""
    if quick and full:
        raise ValueError("choose --quick or --full, not both")
    settings = DemoSettings.quick() if quick else DemoSettings.full() if full else DemoSettings()
    if seeds is not None:
        settings.seeds = seeds
    if steps is not None:
        settings.steps = steps
    if critic_init is not None:
        settings.critic_init = critic_init
    if workers is not None:
        settings.workers = workers
    if trl and not settings.trl_rewards:  # the critic-free arm in TRL's loop too (--full has it already)
        settings.trl_rewards = DemoSettings.full().trl_rewards
    if settings.seeds < 1 or settings.steps < 1 or settings.workers < 1:
        raise ValueError("--seeds, --steps and --workers must be at least 1")
    return settings


def run(*, seeds: int | None = None, steps: int | None = None, out="r3hf-demo", device: str = "cpu",
        quick: bool = False, full: bool = False, threads: int | None = 1, critic_init: str | None = None,
        workers: int | None = None, trl: bool = False, echo=print) -> dict:
    """Run the whole study and write plots, JSON and heatmap into `out`. Returns the JSON dict."""
    settings = resolve_settings(quick=quick, full=full, seeds=seeds, steps=steps, critic_init=critic_init,
                                workers=workers, trl=trl)
    versions = package_versions()  # at the start: the code that produced the numbers
    if torch.device(device).type != "cpu":
        settings.workers = 1  # one process per accelerator
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
    train_pairs = task.preference_pairs(settings.train_pairs, data_gen, reference, noise=settings.label_noise)
    test_pairs = task.preference_pairs(settings.test_pairs, data_gen, reference, noise=settings.label_noise)
    timings["data_s"] = time.perf_counter() - t

    # 2. Reward models with TRL's RewardTrainer: full responses, and prefix-aware (prefix_pairs).
    t = time.perf_counter()
    rms, rm_logs = _train_rms(settings, train_pairs, device, echo)
    rm_metrics = {k: pairwise_accuracy(m, test_pairs, device=device) for k, m in rms.items()}
    diag_gen = torch.Generator().manual_seed(7)
    diag_prompts = task.sample_prompts(512, diag_gen)
    diag_ref = reference.sample(512, diag_gen)
    rm_credit = {k: credit_diagnostic(m, diag_prompts, diag_ref) for k, m in rms.items()}
    timings["reward_models_s"] = time.perf_counter() - t
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "writing shards" bar for a 100 kB model
    rms["full"].save_pretrained(out / "reward_model")
    hf_logging.enable_progress_bar()
    task.make_tokenizer().save_pretrained(out / "reward_model")

    # 3. Tiny policy pre-trained on reference samples (the start of every run and the KL reference).
    t = time.perf_counter()
    policy0 = restrict_vocab(make_policy(0)).to(device)
    bar = _bar(settings.pretrain_steps, "policy pre-training")
    pre_losses = pretrain(policy0, reference, steps=settings.pretrain_steps, generator=torch.Generator().manual_seed(1),
                          device=device, progress=bar)
    bar.close()
    timings["pretrain_s"] = time.perf_counter() - t
    eval_prompts = task.sample_prompts(settings.eval_prompts, torch.Generator().manual_seed(99))

    # 4. Prefix diagnostics of each reward model on the start policy's samples (no ground truth used).
    t = time.perf_counter()
    from ..models import prefix_diagnostics, save_diagnostics

    qr, _ = sample(policy0, task.sample_prompts(settings.diag_samples, torch.Generator().manual_seed(11)).to(device),
                   task.RESPONSE_LEN, torch.Generator().manual_seed(12))
    diag_mask = task.response_mask(qr[:, task.PROMPT_LEN:])
    diagnostics = {k: prefix_diagnostics(m, qr, None, task.PROMPT_LEN, response_mask=diag_mask, buckets=4,
                                         bootstrap=100) for k, m in rms.items()}
    for k, d in diagnostics.items():
        save_diagnostics(d, out / f"diagnostics_{k}", title=f"prefix diagnostics: {k} reward model")
    plot_all_diagnostics(diagnostics, out / "diagnostics.png")
    timings["diagnostics_s"] = time.perf_counter() - t

    # 5. The potential heads of the "head" rewards: label-free regression on start-policy samples.
    t = time.perf_counter()
    potentials = {}
    if any(reward_settings(r)["potential"] == "head" for r in settings.rewards):
        for k in settings.rms:
            potentials[k] = fit_demo_potential(rms[k], policy0, samples=settings.potential_samples, device=device)
            echo(f"potential head for the {k!r} RM: fit in {potentials[k].fit.get('seconds', float('nan')):.1f} s "
                 f"(ridge {potentials[k].fit.get('ridge')}); held-out Var(R - Φ'_t)/Var(R) by quarter: "
                 + _quarters(potentials[k].diagnostics, "potential") + " (the RM's own: "
                 + _quarters(potentials[k].diagnostics, "rm") + ")")
    timings["potential_s"] = time.perf_counter() - t

    # 6. Every arm: estimator × reward model × reward, same start, seeds and budget.
    t = time.perf_counter()
    _SHARED.update(settings=settings, policy0=policy0, rms=rms, eval_prompts=eval_prompts, device=device,
                   potentials=potentials)
    jobs = _jobs(settings)
    echo(f"{len(jobs)} runs ({len(jobs) // settings.seeds} arms x {settings.seeds} seed(s), {settings.steps} steps) "
         f"on {settings.workers} worker(s)")
    results = _run_all(jobs, settings.workers, echo)
    _SHARED.clear()
    runs, shown = {}, []
    for (e, rm, r, seed), res in zip(jobs, results):
        shown += res.pop("samples", [])
        runs.setdefault(report.arm_name(e, rm, r), []).append(res)
    timings["runs_s"] = time.perf_counter() - t
    from .train import evaluate

    start_eval = evaluate(policy0, policy0, rms["full"], eval_prompts.to(device), torch.Generator().manual_seed(10_000))

    # 7. Report.
    summary = report.summarise(runs)
    title = (f"responses of up to {task.RESPONSE_LEN} tokens: {settings.seeds} seed(s), {settings.steps} steps, "
             f"batch {settings.batch_size}")
    report.plot(runs, out / "scores.png", title)
    report.plot_lengths(runs, out / "lengths.png", title)
    from ..viz import heatmap_html, heatmap_png

    note = ("Responses of final R3HF policies (seed 0) on held-out prompts, each token coloured by its reward "
            "model's redistributed reward. Underlined tokens earn ground-truth credit (a red word in the first "
            "half, a blue word in the second).")
    (out / "heatmap.html").write_text(heatmap_html(shown, note=note), encoding="utf-8")
    heatmap_png(shown, out / "heatmap.png", title="R3HF token rewards of final-policy samples (seed 0)")
    timings["total_s"] = time.perf_counter() - t_total
    result = {
        "date_utc": started.isoformat(timespec="seconds"),
        "machine": _machine(device),
        "settings": asdict(settings),
        "ppo_config": asdict(PPOConfig(ppo_epochs=settings.ppo_epochs, num_minibatches=settings.num_minibatches)),
        "versions": _with_end_commit(versions),
        "task": {
            "vocab": list(task.VOCAB), "prompt_len": task.PROMPT_LEN, "max_response_len": task.RESPONSE_LEN,
            "filler_cost": task.FILLER_COST, "truncation_cost": task.TRUNCATION_COST,
            "reference_min_len": task.MIN_LEN, "reference_eos_prob": task.EOS_PROB,
            "rule": "a red word in the first half or a blue word in the second half of the max-length frame earns 1, "
                    "any other word costs filler_cost, <eos> 0; quality = sum / max_response_len",
        },
        "preference_data": _data_summary(train_pairs),
        "reward_models": {k: {"kind": RM_KINDS[k], "held_out": rm_metrics[k], "credit_on_reference_samples": rm_credit[k],
                              "diagnostics": _diag_summary(diagnostics[k]), "train_log": rm_logs[k]} for k in rms},
        "reward_settings": {r: reward_settings(r) for r in settings.rewards},
        "potential_heads": {k: {"fit": h.fit, "diagnostics": h.diagnostics} for k, h in potentials.items()},
        "pretrain": {"loss_first": pre_losses[0], "loss_last": pre_losses[-1]},
        "start_policy": start_eval,
        "summary": summary,
        "runs": runs,
        "samples": shown,
        "timings_s": timings,
        "files": {"learning_curves": "scores.png", "lengths": "lengths.png", "diagnostics": "diagnostics.png", "heatmap_html": "heatmap.html",
                  "heatmap_png": "heatmap.png", "reward_model": "reward_model/ (the full-response RM)"},
    }
    (out / "results.json").write_text(json.dumps(result, indent=1, default=float), encoding="utf-8")

    echo("")
    for k in rms:
        m, c, d = rm_metrics[k], rm_credit[k], diagnostics[k]
        echo(f"reward model {k!r}: held-out accuracy {m['label_accuracy']:.3f} (noisy labels), "
             f"{m['ground_truth_accuracy']:.3f} (ground truth); R3HF reward {c['mean_reward_credited_tokens']:+.3f} on "
             f"credited tokens vs {c['mean_reward_other_tokens']:+.3f} on others")
        echo("  Var(R - Φ_t)/Var(R) by quarter of the response: "
             + ", ".join(f"{b['var_ratio']:.2f} ({b['effect']})" for b in d["buckets"]))
    echo(f"start policy: ground truth {start_eval['gt_score']:.3f}")
    echo("")
    echo(report.table(summary))
    echo(f"(AUC: mean rollout ground truth over the {settings.steps} steps; final: held-out ground truth of the final "
         f"policy; steps to {report.THRESHOLD}: {report.SMOOTH}-step mean, * = not reached by some seed, counted as "
         f"{settings.steps + 1}; verdicts: paired over seeds, 2 standard errors)")
    echo("")
    for line in summary["verdicts"]:
        echo(line)
    echo(f"wrote {out}/scores.png, diagnostics.png, results.json, heatmap.html, heatmap.png, reward_model/ "
         f"in {timings['total_s']:.0f} s on {result['machine']['device']}")
    return result


VERSIONED = ("torch", "transformers", "tokenizers", "trl", "datasets", "accelerate", "numpy", "triton", "matplotlib")


def _with_end_commit(versions: dict) -> dict:
    """`versions` (taken when the run started), plus r3hf_commit_at_end when the checkout's HEAD
    moved during the run (a long run in a working checkout)."""
    end = package_versions().get("r3hf_commit")
    return versions if end == versions.get("r3hf_commit") else {**versions, "r3hf_commit_at_end": end}


def package_versions() -> dict:
    """The version of every package that changes the numbers (None: not installed), and r3hf's commit."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("r3hf", *VERSIONED):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    try:
        import subprocess

        root = Path(__file__).resolve().parents[2]
        out["r3hf_commit"] = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                            text=True, timeout=10).stdout.strip() or None
    except Exception:  # not a git checkout (an installed wheel)
        out["r3hf_commit"] = None
    return out


def _data_summary(pairs) -> dict:
    """Lengths in the preference data and how they relate to quality (the length-loophole check)."""
    L = torch.tensor([len(r) - task.PROMPT_LEN for r in [*pairs["chosen_ids"], *pairs["rejected_ids"]]]).float()
    q = torch.tensor([*pairs["gt_chosen"], *pairs["gt_rejected"]])
    truncated = [r[-1] != task.EOS_ID for r in [*pairs["chosen_ids"], *pairs["rejected_ids"]]]
    return {"mean_response_length": L.mean().item(), "truncated_fraction": sum(truncated) / len(truncated),
            "corr_length_quality": torch.corrcoef(torch.stack([L, q]))[0, 1].item(),
            "chosen_longer_fraction": sum(len(c) > len(r) for c, r in zip(pairs["chosen_ids"], pairs["rejected_ids"]))
            / len(pairs)}


def _diag_summary(d: dict) -> dict:
    return {k: d[k] for k in ("buckets", "prompt_var_share", "prompt_r2", "verdict")} | {
        "largest_share_mean": d["largest_share"]["mean"],
        "var_ratio_per_position": [p["var_ratio"] for p in d["positions"]],
        "corr_per_position": [p["corr"] for p in d["positions"]],
    }


def plot_all_diagnostics(diagnostics: dict, path) -> None:
    """One row of diagnostic panels per reward model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..models import plot_diagnostics

    fig, axes = plt.subplots(len(diagnostics), 3, figsize=(12, 3.0 * len(diagnostics)), squeeze=False)
    for row, (k, d) in zip(axes, diagnostics.items()):
        plot_diagnostics(d, None, axes=row)
        row[0].set_ylabel(f"{k} RM", fontsize=9)
    fig.suptitle("prefix-score diagnostics of each reward model on the start policy's samples", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
