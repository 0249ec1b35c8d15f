"""r3hf demo: the synthetic task, reward-model training wiring, heatmaps, report, and the CLI end to end."""

import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from r3hf.demo import report, task

W = {w: i for i, w in enumerate(task.VOCAB)}


def ids(words: str) -> list[int]:
    return [W[w] for w in words.split()]


# --- the task --------------------------------------------------------------------------------

def test_ground_truth_hand_computed():
    prompts = torch.tensor([ids("sky sea leaf moss"), ids("sun sun sun sun")])
    # L = 8: first half wants red (cherry ruby rose wine), second half wants blue (sky sea jay ink)
    responses = torch.tensor([
        ids("cherry ruby sky rose   sea ink cherry jay"),  # credit 1 1 0 1 | 1 1 0 1
        ids("sky sea jay ink        cherry ruby rose wine"),  # right colours, wrong halves: 0
    ])
    credit = task.token_credit(prompts, responses)
    assert credit.tolist() == [[1, 1, 0, 1, 1, 1, 0, 1], [0] * 8]
    # +1 per credited word, −1/3 per other word (filler), over the frame length 8
    torch.testing.assert_close(task.ground_truth(prompts, responses), torch.tensor([(6 - 2 / 3) / 8, -1 / 3]))
    assert task.truncated(responses).all()  # no <eos>: both ran to the maximum


def test_variable_length_responses_mask_and_value():
    E, Z = task.EOS_ID, task.PAD_ID
    responses = torch.tensor([
        [W["cherry"], W["leaf"], E, Z, Z, Z, Z, Z],  # 3 tokens: +1 − 1/3 + 0
        [E, Z, Z, Z, Z, Z, Z, Z],  # ended at once: 0
        ids("cherry ruby rose wine sea ink jay sky"),  # truncated, all credited: 8
        [W["cherry"], E, W["sky"], Z, Z, Z, Z, Z],  # tokens after the first <eos> do not count
    ])
    mask = task.response_mask(responses)
    assert mask.sum(1).tolist() == [3, 1, 8, 2] and task.response_lengths(responses).tolist() == [3, 1, 8, 2]
    assert task.truncated(responses).tolist() == [False, False, True, False]
    torch.testing.assert_close(task.ground_truth(None, responses), torch.tensor([(1 - 1 / 3) / 8, 0.0, 1.0, 1 / 8]))
    # length alone earns nothing: appending filler lowers the score, appending <eos> changes nothing
    short = torch.tensor([[W["cherry"], E, Z, Z, Z, Z, Z, Z]])
    longer = torch.tensor([[W["cherry"], W["leaf"], W["sun"], E, Z, Z, Z, Z]])
    assert task.ground_truth(None, longer) < task.ground_truth(None, short)
    assert task.group_of(torch.tensor([W["<pad>"], W["cherry"], W["frog"], W["ink"], W["honey"]])).tolist() == [
        -1, 0, 1, 2, 3]


def test_tokenizer_round_trip_and_specials():
    tok = task.make_tokenizer()
    assert tok("cherry sky honey", add_special_tokens=False)["input_ids"] == ids("cherry sky honey")
    assert tok.pad_token_id == task.PAD_ID and tok.eos_token_id == task.EOS_ID
    assert tok.convert_ids_to_tokens(ids("lime ink")) == ["lime", "ink"]


def test_reference_policy_and_prompts():
    g = torch.Generator().manual_seed(0)
    ref = task.ReferencePolicy.make()
    assert torch.allclose(ref.transition.sum(1), torch.ones(len(task.WORD_IDS)))
    r = ref.sample(4000, g)
    p = task.sample_prompts(4000, g)
    assert r.shape == (4000, task.RESPONSE_LEN) and p.shape == (4000, task.PROMPT_LEN)
    assert p.min() >= task.WORD_IDS[0] and p.max() <= task.WORD_IDS[-1]
    mask = task.response_mask(r)
    words = r[mask & (r != task.EOS_ID)]
    assert words.min() >= task.WORD_IDS[0] and words.max() <= task.WORD_IDS[-1]
    assert bool((r[~mask] == task.PAD_ID).all())  # padding after <eos>, nothing else
    lengths = task.response_lengths(r)
    assert int(lengths.min()) >= task.MIN_LEN + 1  # at least MIN_LEN words, then <eos>
    assert 14 < lengths.float().mean() < 20 and 0.25 < task.truncated(r).float().mean() < 0.45
    q = task.ground_truth(p, r)
    assert -0.1 < q.mean().item() < 0.1  # the reference is far from the optimum (1.0)
    # no length loophole in the data: length and quality are (nearly) uncorrelated
    assert abs(torch.corrcoef(torch.stack([lengths.float(), q]))[0, 1].item()) < 0.1
    # the same task seed gives the same world
    assert torch.equal(task.ReferencePolicy.make().transition, ref.transition)


def test_preference_pairs_labels_follow_ground_truth():
    g = torch.Generator().manual_seed(1)
    sharp = task.preference_pairs(400, g, noise=1e-3)
    assert set(sharp.column_names) >= {"chosen_ids", "rejected_ids", "gt_chosen", "gt_rejected", "agrees"}
    gc, gr = torch.tensor(sharp["gt_chosen"]), torch.tensor(sharp["gt_rejected"])
    assert bool((gc >= gr - 1e-6).all())  # with (almost) no noise, the better response is always chosen
    P = task.PROMPT_LEN
    assert all(x[-1] != task.PAD_ID for x in sharp["chosen_ids"])  # variable length, no padding

    def padded(rows):  # to the full frame, so that the halves are RESPONSE_LEN's
        return torch.tensor([x + [task.PAD_ID] * (P + task.RESPONSE_LEN - len(x)) for x in rows])

    c, r = padded(sharp["chosen_ids"]), padded(sharp["rejected_ids"])
    assert torch.equal(c[:, :P], r[:, :P])  # one prompt per pair
    assert torch.allclose(task.ground_truth(c[:, :P], c[:, P:]), gc)
    assert sharp[0]["prompt"].split() == task.decode(c[0, :P])
    noisy = task.preference_pairs(2000, g, noise=1e3)
    agree = torch.tensor(noisy["gt_chosen"]) > torch.tensor(noisy["gt_rejected"]) + 1e-6
    differ = (torch.tensor(noisy["gt_chosen"]) - torch.tensor(noisy["gt_rejected"])).abs() > 1e-6
    assert 0.4 < agree[differ].float().mean().item() < 0.6  # huge noise: coin flips
    mid = task.preference_pairs(2000, g, noise=1.0)
    a = torch.tensor(mid["gt_chosen"]) > torch.tensor(mid["gt_rejected"]) + 1e-6
    d = (torch.tensor(mid["gt_chosen"]) - torch.tensor(mid["gt_rejected"])).abs() > 1e-6
    assert 0.7 < a[d].float().mean().item() < 0.99


# --- reward model training wiring ------------------------------------------------------------

def test_reward_model_trains_with_trl_reward_trainer():
    from datasets import Dataset

    from r3hf.demo.reward_model import make_reward_model, pairwise_accuracy, train_reward_model

    g = torch.Generator().manual_seed(0)
    n = 96
    prompts = task.sample_prompts(n, g)
    good = torch.tensor(ids("cherry ruby rose wine sky sea jay ink")).expand(n, -1)
    bad = torch.tensor(ids("leaf lime moss frog sun corn lemon honey")).expand(n, -1)
    pairs = Dataset.from_dict({
        "chosen_ids": torch.cat([prompts, good], 1).tolist(),
        "rejected_ids": torch.cat([prompts, bad], 1).tolist(),
        "gt_chosen": [1.0] * n, "gt_rejected": [0.0] * n, "agrees": [True] * n,
    })
    untrained = make_reward_model(0)
    before = {k: v.clone() for k, v in untrained.state_dict().items()}
    model, history = train_reward_model(pairs, epochs=2, batch_size=16, model=untrained)
    assert not model.training
    assert any("loss" in h for h in history)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    acc = pairwise_accuracy(model, pairs)
    assert acc["label_accuracy"] == 1.0 and acc["ground_truth_accuracy"] == 1.0 and acc["n_pairs"] == n


# --- heatmaps --------------------------------------------------------------------------------

class _Checker(HTMLParser):
    VOID = {"meta", "br", "img", "link"}

    def __init__(self):
        super().__init__()
        self.stack, self.tok_spans, self.errors = [], 0, []

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        self.stack.append(tag)
        if tag == "span" and ("class", "tok") in attrs:
            self.tok_spans += 1
            style = dict(attrs)["style"]
            assert "background:rgb(" in style

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def _check_html(page: str) -> _Checker:
    assert page.startswith("<!DOCTYPE html>")
    c = _Checker()
    c.feed(page)
    c.close()
    assert not c.errors and not c.stack, (c.errors, c.stack)
    return c


def test_heatmap_html_valid_and_escaped():
    from r3hf.viz import heatmap_html

    rows = [
        {"prompt_tokens": ["a", "<b>"], "response_tokens": ["x", "<script>", "&"], "rewards": [0.5, -1.0, 0.0],
         "label": "row <1>", "marks": [True, False, False]},
        {"prompt_tokens": ["c"], "response_tokens": ["y"], "rewards": [2.0]},
    ]
    page = heatmap_html(rows, note="n & m")
    c = _check_html(page)
    assert c.tok_spans == 4
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;" in page
    assert 'title="-1.0000"' in page and "underline" in page
    # one colour scale: the largest |reward| saturates (2.0 -> the deepest green), 0 is white
    assert "rgb(100,215,100)" in page and "rgb(255,255,255)" in page


def test_heatmap_png_opens(tmp_path):
    import matplotlib.image as mpimg

    from r3hf.viz import heatmap_png

    rows = [{"prompt_tokens": ["p"], "response_tokens": ["a", "b", "c"], "rewards": [0.1, -0.2, 0.3]},
            {"prompt_tokens": ["q"], "response_tokens": ["d"], "rewards": [1.0], "name": "short row"}]
    path = heatmap_png(rows, tmp_path / "h.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50


def test_explain_rewards_are_prefix_score_differences(tmp_path):
    from r3hf.demo.reward_model import make_reward_model
    from r3hf.viz import explain

    model = make_reward_model(3).eval()
    tok = task.make_tokenizer()
    res = explain(model, tok, "sky sea leaf", "cherry ruby honey ink", out=tmp_path / "e.html")
    full = torch.tensor(ids("sky sea leaf cherry ruby honey ink"))
    with torch.no_grad():  # the model's own score of each truncated sequence
        own = [model(input_ids=full[None, : t + 1]).logits[0, 0].item() for t in range(len(full))]
    expected = [own[3 + j] - own[2 + j] for j in range(4)]
    assert res["rewards"] == pytest.approx(expected, abs=1e-5)
    assert res["response_tokens"] == ["cherry", "ruby", "honey", "ink"]
    assert res["final_score"] == pytest.approx(own[-1], abs=1e-5)
    assert sum(res["rewards"]) == pytest.approx(own[-1] - own[2], abs=1e-5)
    _check_html((tmp_path / "e.html").read_text())
    assert (tmp_path / "e.png").read_bytes()[:4] == b"\x89PNG"


# --- report ----------------------------------------------------------------------------------

def _runs(curves, finals, lengths=None):
    lengths = lengths or [17.0] * len(curves)
    return [{"seed": i, "history": [{"gt_score": x, "rm_score": x, "time_r3hf_ops_s": 0.001, "time_step_s": 0.1,
                                     "length": n, "truncation_rate": 0.3} for x in c],
             "final": {"gt_score": f, "rm_score": f, "kl_to_ref": 1.0, "length": n, "truncation_rate": 0.3}}
            for i, (c, f, n) in enumerate(zip(curves, finals, lengths))]


def test_report_metrics_paired_verdicts_and_table():
    assert report.smooth([0, 2, 4, 6], k=2) == [0, 1, 3, 5]
    assert report.steps_to_reach([0.1, 0.3, 0.5], 0.3) == 2
    assert report.steps_to_reach([0.1, 0.2], 0.3) is None
    rising = [0.1 * i for i in range(10)]  # smoothed (3 steps) reaches 0.6 at step 8
    m = report.run_metrics(_runs([rising], [0.7])[0], threshold=0.6)
    assert m == {"auc": pytest.approx(0.45), "final": 0.7, "steps": 8, "reached": True, "length": 17.0}
    assert report.run_metrics(_runs([rising], [0.7])[0])["steps"] == 5  # default threshold 0.267
    assert report.run_metrics(_runs([[0.1] * 10], [0.1])[0])["steps"] == 11  # censored: steps + 1
    fast = [min(1.0, 0.2 * i) for i in range(10)]
    runs = {
        "rloo/full/sparse": _runs([rising, [x + 0.01 for x in rising], [x + 0.02 for x in rising]], [0.70, 0.71, 0.72]),
        "rloo/full/r3hf": _runs([fast, [x + 0.01 for x in fast], [x + 0.03 for x in fast]], [0.90, 0.92, 0.91]),
        "rloo/full/auto": _runs([rising, [x + 0.02 for x in rising], [x + 0.01 for x in rising]], [0.71, 0.70, 0.72]),
    }
    s = report.summarise(runs)
    cmp = {c["arm"]: c for c in s["comparisons"]}
    assert set(cmp) == {"rloo/full/r3hf", "rloo/full/auto"}  # each against the sparse arm of its cell
    assert cmp["rloo/full/r3hf"]["auc"]["verdict"] == "better" and cmp["rloo/full/r3hf"]["steps"]["verdict"] == "better"
    assert cmp["rloo/full/auto"]["auc"]["verdict"] == "no clear difference"
    assert any("R3HF (β_c = 1) BEAT sparse" in v for v in s["verdicts"])
    runs["rloo/full/r3hf"] = _runs([[0.0] * 10] * 3, [0.10, 0.12, 0.11])
    s = report.summarise(runs)
    assert any("LOST to sparse" in v for v in s["verdicts"])
    assert s["arms"]["rloo/full/r3hf"]["reached_per_seed"] == [False] * 3
    text = report.table(s)
    assert "WORSE" in text and "11.0*" in text and "rloo" in text
    one = {"ppo/prefix/sparse": _runs([rising], [0.4]), "ppo/prefix/r3hf": _runs([fast], [0.8])}
    assert "single seed" in report.summarise(one)["verdicts"][0]
    # three seeds give a verdict, marked as indicative (a 2-SE interval covers ~82 % at 2 dof)
    assert all("only 3 seeds: indicative" in v for v in s["verdicts"])
    twelve = {k: [dict(r, seed=i) for i in range(4) for r in rs] for k, rs in runs.items()}
    assert not any("indicative" in v for v in report.summarise(twelve)["verdicts"])


def test_length_drift_flag_paired_against_sparse():
    curve = [0.1] * 5
    base = _runs([curve] * 4, [0.3] * 4, lengths=[16.0, 17.0, 18.0, 17.5])
    longer = _runs([curve] * 4, [0.3] * 4, lengths=[20.0, 21.2, 21.9, 21.4])
    same = _runs([curve] * 4, [0.3] * 4, lengths=[16.5, 16.4, 18.6, 17.4])
    s = report.summarise({"ppo/full/sparse": base, "ppo/full/r3hf": longer, "ppo/full/auto": same})
    cmp = {c["arm"]: c["length"] for c in s["comparisons"]}
    assert cmp["ppo/full/r3hf"]["verdict"] == "LONGER" and cmp["ppo/full/r3hf"]["diff"] == pytest.approx(4.0)
    assert cmp["ppo/full/auto"]["verdict"] == "no drift"
    assert report.length_drift([10.0, 11.0], [14.0, 15.1])["verdict"] == "SHORTER"
    assert "LONGER" in report.table(s) and any("tokens (LONGER)" in v for v in s["verdicts"])
    arm = s["arms"]["ppo/full/r3hf"]
    assert arm["length_per_step"] == [pytest.approx(21.125)] * 5 and arm["truncation_rate_per_step"] == [0.3] * 5
    assert report.compare([1.0, 2.0], [1.0, 2.0], "steps")["verdict"] == "no clear difference"


def test_policy_never_samples_pad_and_ends_with_eos():
    from r3hf import ppo
    from r3hf.demo.policy import make_policy, sample
    from r3hf.demo.train import restrict_vocab

    policy = restrict_vocab(make_policy(0)).eval()
    with torch.no_grad():
        head = policy.get_output_embeddings().weight
        head[task.PAD_ID] += 50.0  # make pad overwhelmingly likely: still never sampled
        head[task.EOS_ID] += 0.5  # and <eos> a little more likely than a word
    prompts = task.sample_prompts(64, torch.Generator().manual_seed(0))
    qr, logp = sample(policy, prompts, 6, torch.Generator().manual_seed(1))
    resp = qr[:, task.PROMPT_LEN:]
    mask = task.response_mask(resp)
    assert not bool((resp[mask] == task.PAD_ID).any())  # words and <eos> only
    assert bool((resp[~mask] == task.PAD_ID).all()) and bool((logp[~mask] == 0).all())  # padding after <eos>
    lengths = task.response_lengths(resp)
    assert int(lengths.min()) < 6 and int(lengths.max()) == 6  # some end early, some run to the maximum
    again, _ = ppo.response_logprobs(policy, qr, task.PROMPT_LEN, 6)
    # sampling and PPO see one distribution on every response token
    torch.testing.assert_close(again[mask], logp[mask], rtol=1e-4, atol=1e-4)


def test_start_weights_do_not_depend_on_the_transformers_release():
    """transformers 5.10.4 and 5.24.0 initialise GPT-2 differently for the same seed (5.10.4 never
    applied the scaled c_proj init), which changed the demo's reward models (docs/demo.md,
    "Reproducibility"). The demo initialises its models itself: these checksums were recorded
    under both releases (5.10.4 + tokenizers 0.22.2 and 5.24.0 + tokenizers 0.23.3) and agree."""
    import hashlib

    from r3hf.demo.policy import make_policy
    from r3hf.demo.reward_model import make_reward_model

    def checksum(m):
        flat = torch.cat([v.detach().flatten().float() for _, v in m.named_parameters()])  # no buffers
        return hashlib.sha1(flat.numpy().tobytes()).hexdigest()[:10]

    rm, policy = make_reward_model(0), make_policy(0)
    assert checksum(rm) == "0f36702b4f" and checksum(policy) == "85ca1039de"
    assert checksum(make_reward_model(1)) != checksum(rm)
    c_proj = rm.transformer.h[0].mlp.c_proj.weight
    assert abs(c_proj.std().item() - 0.02 / 2) < 0.002  # GPT-2's scaled residual init, 0.02/sqrt(2 n_layer)


def test_prefix_label_fn_uses_credit_of_kept_tokens():
    from r3hf.demo.reward_model import credit_label_fn

    sharp = credit_label_fn(noise=1e-3)
    red, green = ids("cherry ruby rose"), ids("leaf lime moss")
    assert sharp([2, 3], red, green, {}) is True and sharp([2, 3], green, red, {}) is False
    # the halves refer to the full response length: a blue word early earns nothing
    blue = ids("sky sea jay")
    assert sharp([2, 3], blue, green, {}) in (True, False)
    assert task.token_credit(None, torch.tensor([blue]), task.RESPONSE_LEN).sum() == 0
    # labels weigh filler: two reds and a green beat one red alone? no: +2 − 1/3 > +1, yes
    assert sharp([2, 3], ids("cherry ruby leaf"), ids("cherry sun sun"), {}) is True


def test_reference_check_flags_changes():
    from r3hf.demo import reference

    result = {
        "settings": {"seeds": 1, "steps": 5, "batch_size": 32, "train_pairs": 600},
        "reward_models": {"full": {"held_out": {"label_accuracy": 0.8, "ground_truth_accuracy": 0.9}}},
        "runs": {"rloo/full/sparse": [{"seed": 0, "first_step": {"mean_abs_advantage": 0.5, "lengths": [10, 14]}}]},
    }
    ref = reference.fingerprint(result)
    assert ref["arms"]["rloo/full/sparse"]["mean_length"] == 12.0 and reference.compare(result, ref) == []
    result["reward_models"]["full"]["held_out"]["ground_truth_accuracy"] = 0.91  # within 0.02
    assert reference.compare(result, ref) == []
    result["reward_models"]["full"]["held_out"]["ground_truth_accuracy"] = 0.75
    result["runs"]["rloo/full/sparse"][0]["first_step"]["mean_abs_advantage"] = 0.6
    bad = reference.compare(result, ref)
    assert len(bad) == 2 and "ground_truth_accuracy" in bad[0] and "advantage" in bad[1]
    result["settings"]["steps"] = 6
    assert "settings differ" in reference.compare(result, ref)[0]


# --- the command, end to end -----------------------------------------------------------------

def test_r3hf_demo_quick_writes_outputs_that_parse(tmp_path):
    import matplotlib.image as mpimg

    out = tmp_path / "demo"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    # The console script beside this Python, as a user runs it (`python -m r3hf` is run below).
    script = Path(sys.executable).parent / "r3hf"
    assert script.exists(), f"no `r3hf` console script beside {sys.executable}: is r3hf installed there?"
    proc = subprocess.run([str(script), "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "AUC of GT" in proc.stdout and "sparse" in proc.stdout and "recommended" in proc.stdout
    result = json.loads((out / "results.json").read_text())
    settings = result["settings"]
    assert settings["seeds"] == 1 and settings["steps"] == 5
    arms = result["summary"]["arms"]
    assert set(arms) == {f"{e}/full/{r}" for e in ("rloo", "ppo") for r in ("sparse", "r3hf", "recommended")}
    for name, row in arms.items():
        assert -1 / 3 <= row["auc"]["mean"] <= 1.0 and -1 / 3 <= row["final"]["mean"] <= 1.0
        assert len(result["runs"][name][0]["history"]) == 5
    for k in ("full", "prefix-keep"):
        rm = result["reward_models"][k]
        assert 0.0 <= rm["held_out"]["label_accuracy"] <= 1.0 and len(rm["diagnostics"]["buckets"]) == 4
        assert (out / f"diagnostics_{k}.png").exists() and (out / f"diagnostics_{k}.json").exists()
    for line in result["summary"]["verdicts"]:
        assert line in proc.stdout
    for png in ("scores.png", "heatmap.png", "diagnostics.png"):
        assert mpimg.imread(out / png).ndim == 3
    c = _check_html((out / "heatmap.html").read_text())
    assert c.tok_spans == sum(len(x["response_tokens"]) for x in result["samples"])
    assert mpimg.imread(out / "lengths.png").ndim == 3
    assert {"torch", "transformers", "tokenizers", "trl", "datasets", "accelerate"} <= set(result["versions"])
    for name, row in arms.items():
        assert len(row["length_per_step"]) == 5 and all(1 <= x <= task.RESPONSE_LEN for x in row["length_per_step"])
        assert all(0.0 <= x <= 1.0 for x in row["truncation_rate_per_step"])
        assert len(result["runs"][name][0]["first_step"]["advantages_row0"]) == result["runs"][name][0]["first_step"]["lengths"][0]
    # the fixed-seed run matches the committed reference (r3hf/demo/reference.py's tolerances) where
    # the stack is the reference's; with R3HF_REQUIRE_DEMO_REFERENCE=1 (CI's main suite, .ci/run)
    # on any stack, and the reference file must be there.
    from r3hf.demo import reference

    ref_path = Path(__file__).parent / "data" / "demo_quick_reference.json"
    required = bool(os.environ.get("R3HF_REQUIRE_DEMO_REFERENCE"))
    assert ref_path.exists() or not required, f"R3HF_REQUIRE_DEMO_REFERENCE=1 but {ref_path} is missing"
    if ref_path.exists():  # the floors step copies tests/*.py without tests/data
        ref = json.loads(ref_path.read_text())
        same_stack = all(result["versions"].get(k) == ref["versions"].get(k) for k in ("torch", "transformers", "trl"))
        if same_stack or required:
            assert reference.compare(result, ref) == []
    # the saved reward model works with `r3hf explain` and `r3hf diagnose`
    html_out = tmp_path / "x.html"
    proc = subprocess.run([sys.executable, "-m", "r3hf", "explain", "--model", str(out / "reward_model"),
                           "--prompt", "sky sea leaf moss", "--response", "cherry ruby sky ink",
                           "--out", str(html_out)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "full response" in proc.stdout and html_out.exists() and html_out.with_suffix(".png").exists()


# --- the arms (issue 22): recommended = potential head (+ per-position baseline under RLOO) ------

def test_default_run_arms_and_full_grid():
    from r3hf.demo.run import RECOMMENDED, DemoSettings, _jobs

    s = DemoSettings()
    assert s.seeds >= 12 and RECOMMENDED == "recommended"
    assert {j[:3] for j in _jobs(s)} == {(e, "full", r) for e in ("rloo", "ppo") for r in ("sparse", "r3hf", RECOMMENDED)}
    full = {j[:3] for j in _jobs(DemoSettings.full())}
    # PPO has no group baseline: "position" and "head" would rerun "r3hf" and "recommended" there
    assert ("ppo", "full", "position") not in full and ("ppo", "full", "head") not in full
    assert ("rloo", "full", "position") in full and ("trl-rloo", "full", "position") in full
    assert ("trl-rloo", "full", "sparse") in full and ("trl-rloo", "full", RECOMMENDED) in full


def test_reward_settings_and_a_missing_potential_is_an_error():
    from r3hf.demo.train import REWARD_SETTINGS, reward_settings, run_ppo

    assert reward_settings("recommended") == {"beta_c": 1.0, "potential": "head", "baseline": "position"}
    assert reward_settings("sparse")["beta_c"] == 0.0 and set(REWARD_SETTINGS) >= {"r3hf", "auto", "position", "head"}
    with pytest.raises(ValueError, match="reward must be one of"):
        reward_settings("dense")
    with pytest.raises(ValueError, match="potential="):
        run_ppo("recommended", 0, init_policy=None, rm=None, steps=1)


def test_goal_lines_say_what_was_reached():
    from r3hf.demo import report

    def cmp(arm, auc, se, fin=0.0, fse=0.01, fin_verdict="no clear difference", length="no drift"):
        return {"arm": arm, "auc": {"diff": auc, "se": se, "verdict": "better" if auc > 2 * se else "no clear difference"},
                "final": {"diff": fin, "se": fse, "verdict": fin_verdict},
                "steps": {"diff": 0.0, "se": 0.1, "verdict": "no clear difference"},
                "length": {"diff": 0.1, "se": 0.1, "verdict": length}}

    lines = report.goal_lines([cmp("rloo/full/recommended", 0.03, 0.004), cmp("ppo/full/recommended", 0.03, 0.004),
                               cmp("ppo/full/r3hf", 0.1, 0.001)])
    assert len(lines) == 2
    assert "target ≥ +0.02 at 2 SE: MET" in lines[0] and "no drift" in lines[0]
    assert "target ≥ +0.04 at 2 SE: NOT met" in lines[1]
    worse = report.goal_lines([cmp("rloo/full/recommended", 0.03, 0.02, -0.05, 0.01, "worse", "SHORTER")])[0]
    assert "NOT met: worse" in worse and "NOT met: SHORTER" in worse and "AUC +0.030 ± 0.040 (target ≥ +0.02 at 2 SE: NOT met)" in worse


def test_trl_flag_adds_the_trl_arm_to_any_preset(monkeypatch):
    import importlib

    import r3hf.demo
    from r3hf import cli

    demo_run = importlib.import_module("r3hf.demo.run")  # the module (r3hf.demo.run is also the function)
    default = demo_run.resolve_settings()
    assert default.trl_rewards == () and default.seeds == 12
    with_trl = demo_run.resolve_settings(trl=True)
    assert with_trl.trl_rewards == demo_run.DemoSettings.full().trl_rewards
    assert (with_trl.seeds, with_trl.steps, with_trl.rewards) == (default.seeds, default.steps, default.rewards)
    assert demo_run.resolve_settings(quick=True, trl=True).trl_rewards == with_trl.trl_rewards
    assert demo_run.resolve_settings(full=True, trl=True).trl_rewards == demo_run.DemoSettings.full().trl_rewards
    with pytest.raises(ValueError, match="--quick or --full"):
        demo_run.resolve_settings(quick=True, full=True)
    with pytest.raises(ValueError, match="at least 1"):
        demo_run.resolve_settings(seeds=0)
    seen = {}
    monkeypatch.setattr(r3hf.demo, "run", lambda **kw: seen.update(kw))
    assert cli.main(["demo", "--trl", "--seeds", "3"]) == 0
    assert seen["trl"] is True and seen["seeds"] == 3 and seen["full"] is False


def test_versions_keep_the_start_commit_and_flag_a_moved_head(monkeypatch):
    import importlib

    demo_run = importlib.import_module("r3hf.demo.run")
    start = {"python": "3", "r3hf_commit": "a" * 40}
    monkeypatch.setattr(demo_run, "package_versions", lambda: {"python": "3", "r3hf_commit": "a" * 40})
    assert demo_run._with_end_commit(start) == start
    monkeypatch.setattr(demo_run, "package_versions", lambda: {"python": "3", "r3hf_commit": "b" * 40})
    assert demo_run._with_end_commit(start) == {**start, "r3hf_commit_at_end": "b" * 40}
    assert start == {"python": "3", "r3hf_commit": "a" * 40}  # the start record is not modified
