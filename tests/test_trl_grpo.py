"""R3HFGRPOTrainer in TRL 1.16's real GRPOTrainer loop: tiny offline GPT-2-like policy and reward
models built from configs, a word-level tokenizer built in code, a few CPU steps per test.

"TRL's own advantages" are always recorded from a real `trl.GRPOTrainer` run on the same batch
(same seed, same models; the completions are checked to be identical)."""

from __future__ import annotations

import warnings

import pytest
import torch

trl = pytest.importorskip("trl")
pytest.importorskip("datasets")
from trl import GRPOTrainer  # noqa: E402

from r3hf import ops  # noqa: E402
from r3hf.integrations.trl import R3HFGRPOTrainer  # noqa: E402
from r3hf.integrations.trl.grpo_advantages import token_level_advantages  # noqa: E402
from r3hf.models import UnsupportedModelError  # noqa: E402

from trl_grpo_harness import (  # noqa: E402
    EOS,
    PAD,
    W,
    ForwardCounter,
    char_tokenizer,
    deterministic_rollout,
    grpo_config,
    prompt_dataset,
    recording,
    reward_model,
    word_tokenizer,
)
from trl_grpo_harness import CHARS, QUIET, policy, root  # noqa: E402,F401  (fixtures: by name)

pytestmark = QUIET


def plain_reward(completions, **kwargs):
    """A rule-based, sequence-level reward."""
    return [float("good" in c) - 0.1 * len(c.split()) for c in completions]


def run(cls, policy, root, reward_funcs, *, rm_tokenizers=None, trainer_kw=None, train=True, **config):
    rmt = rm_tokenizers if rm_tokenizers is not None else [
        word_tokenizer() if isinstance(f, torch.nn.Module) else None for f in reward_funcs
    ]
    args = grpo_config(f"{root}/{cls.__name__}", **config)
    trainer = recording(cls)(
        model=policy, reward_funcs=reward_funcs, args=args, train_dataset=prompt_dataset(),
        eval_dataset=prompt_dataset(4) if "num_generations_eval" in config else None,
        processing_class=word_tokenizer(), reward_processing_classes=rmt, **(trainer_kw or {}),
    )
    if train:
        trainer.train()
    elif train is not None:
        trainer.evaluate()
    return trainer


def loss_mask(rec):
    m = rec["completion_mask"].bool()
    return m & rec["tool_mask"].bool() if "tool_mask" in rec else m


def assert_same_batch(a, b):
    for k in ("prompt_ids", "completion_ids", "completion_mask"):
        assert torch.equal(a[k], b[k]), f"the two runs saw different {k}"


def assert_matches_trl(ours, stock, atol=1e-5):
    """Our [B, T] advantages equal TRL's scalar ones broadcast, wherever the loss reads them."""
    assert_same_batch(ours, stock)
    m = loss_mask(ours)
    want = stock["advantages"][:, None].expand_as(ours["advantages"]) * m
    assert ours["advantages"].shape == m.shape
    torch.testing.assert_close(ours["advantages"], want, rtol=1e-4, atol=atol)
    return m


# --- parity with TRL's own GRPO advantages ---------------------------------------------------


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_sparse_grpo_equals_trl_and_outcome_estimator_trap(scale, policy, root):
    """beta_c=0 + estimator="grpo" gives TRL's advantages at every loss position, with a reward
    model and a rule-based function mixed by reward_weights; "grpo_outcome" (sums rows first)
    with DENSE rewards gives them too where the prompt term cancels (group/none), and warns."""
    cfg = dict(scale_rewards=scale, reward_weights=[1.0, 0.5], per_device_train_batch_size=6, num_generations=3)
    stock = run(GRPOTrainer, policy, root, [reward_model(), plain_reward], **cfg).recorded[0]
    ours = run(R3HFGRPOTrainer, policy, root, [reward_model(), plain_reward], trainer_kw=dict(beta_c=0.0), **cfg)
    assert_matches_trl(ours.recorded[0], stock)
    assert any(k.startswith("r3hf/dense_reward/pos_") for k in ours.state.log_history[0])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome = run(R3HFGRPOTrainer, policy, root, [reward_model(), plain_reward],
                      trainer_kw=dict(estimator="grpo_outcome", beta_c=1.0), **cfg).recorded[0]
    trap = [w for w in caught if "change nothing" in str(w.message)]
    if scale == "batch":  # the batch std of R − R(prompt) differs from that of R: no warning, other numbers
        assert not trap
        assert not torch.allclose(outcome["advantages"], stock["advantages"][:, None] * loss_mask(outcome))
    else:
        assert len(trap) == 1
        assert_matches_trl(outcome, stock, atol=2e-5)
        # ...while the dense rewards themselves differ from the sparse ones
        assert not torch.allclose(outcome["r3hf"]["rewards"], ours.recorded[0]["r3hf"]["rewards"])
    if scale == "group":  # token-level grpo on dense rewards: TRL's advantage at the first token only
        dense = run(R3HFGRPOTrainer, policy, root, [reward_model(), plain_reward], **cfg).recorded[0]
        assert_same_batch(dense, stock)
        torch.testing.assert_close(dense["advantages"][:, 0], stock["advantages"], rtol=1e-4, atol=2e-5)
        assert not torch.allclose(dense["advantages"], stock["advantages"][:, None] * loss_mask(dense))


def test_token_level_grpo_is_the_op_on_r3hf_rewards(policy, root):
    """Default estimator: ops.group_advantages of the R3HF rewards, and the rewards telescope to
    the reward model's score of the whole text (TRL's reward) minus its prompt-only score."""
    rm = reward_model()
    tok = word_tokenizer()
    trainer = run(R3HFGRPOTrainer, policy, root, [rm], per_device_train_batch_size=4, num_generations=2)
    rec = trainer.recorded[0]
    r, mask = rec["r3hf"]["rewards"], rec["r3hf"]["response_mask"]
    want = ops.group_advantages(r, mask, 2, "grpo", eps=1e-4, scale="group") * loss_mask(rec)
    torch.testing.assert_close(rec["advantages"], want)
    for b in range(r.shape[0]):
        prompt = tok.decode(rec["prompt_ids"][b][rec["prompt_mask"][b].bool()]) + " "
        completion = tok.decode(rec["completion_ids"][b], skip_special_tokens=True)
        full = own_score(rm, tok, prompt + completion)
        torch.testing.assert_close(r[b].sum(), full - own_score(rm, tok, prompt), rtol=1e-4, atol=1e-5)


@torch.no_grad()
def own_score(rm, tok, text):
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    return rm(input_ids=ids).logits[0, 0] if ids.shape[1] else torch.tensor(0.0)


def test_one_reward_model_forward_per_batch(policy, root):
    rm = reward_model()
    top, backbone = ForwardCounter(rm), ForwardCounter(rm.transformer)
    trainer = run(R3HFGRPOTrainer, policy, root, [rm, plain_reward], max_steps=3)
    assert len(trainer.recorded) == 3
    assert top.n == 0, "TRL's scalar reward path ran the reward model"
    assert backbone.n == 3, f"expected one backbone forward per batch, got {backbone.n} for 3 batches"


# --- a different reward tokenizer ------------------------------------------------------------


def test_reward_model_with_its_own_tokenizer(policy, root):
    """A character-level reward model next to a word-level one (reward_weights 1 and 0.5): TRL's
    rewards unchanged (beta_c=0 parity), each model run once per batch; and each policy token's
    dense reward is the change of the character model's own score of the text up to its end."""
    ctok = char_tokenizer()
    vocab = len(CHARS) + 2
    cfg = dict(reward_weights=[1.0, 0.5])
    stock = run(GRPOTrainer, policy, root, [reward_model(), reward_model(3, vocab, "crm")],
                rm_tokenizers=[word_tokenizer(), ctok], **cfg).recorded[0]
    rms = [reward_model(), reward_model(3, vocab, "crm")]
    counters = [ForwardCounter(m.transformer) for m in rms] + [ForwardCounter(m) for m in rms]
    sparse = run(R3HFGRPOTrainer, policy, root, rms, rm_tokenizers=[word_tokenizer(), ctok],
                 trainer_kw=dict(beta_c=0.0), **cfg).recorded[0]
    assert_matches_trl(sparse, stock)
    assert [c.n for c in counters] == [1, 1, 0, 0]

    rm = reward_model(3, vocab, "crm")
    rec = run(R3HFGRPOTrainer, policy, root, [rm], rm_tokenizers=[ctok]).recorded[0]
    wtok = word_tokenizer()
    r = rec["r3hf"]["rewards"]
    for b in range(r.shape[0]):
        prompt = wtok.decode(rec["prompt_ids"][b][rec["prompt_mask"][b].bool()]) + " "
        ids = rec["completion_ids"][b][rec["completion_mask"][b].bool()].tolist()
        prev = own_score(rm, ctok, prompt)
        for k in range(len(ids)):
            now = own_score(rm, ctok, prompt + wtok.decode(ids[: k + 1], skip_special_tokens=True))
            torch.testing.assert_close(r[b, k], now - prev, rtol=1e-4, atol=1e-5, msg=f"row {b} token {k}")
            prev = now


# --- tool_mask holes, truncated completions, unscorable rows, eval groups ----------------------


@pytest.mark.parametrize("mask_truncated", [False, True])
def test_tool_mask_holes_and_truncated_completions(mask_truncated, policy, root):
    """Environment output (TRL's tool_mask = 0) gets no reward and no advantage; its score change is
    credited to the generated token before it; truncated rows still count in their group's
    statistics and, with mask_truncated_completions, get no loss, as in TRL."""
    cfg = dict(per_device_train_batch_size=6, num_generations=3, mask_truncated_completions=mask_truncated,
               reward_weights=[1.0, 0.5])
    kw = dict(rollout_func=deterministic_rollout)
    stock = run(GRPOTrainer, policy, root, [reward_model(), plain_reward], trainer_kw=kw, **cfg).recorded[0]
    sparse = run(R3HFGRPOTrainer, policy, root, [reward_model(), plain_reward],
                 trainer_kw=dict(kw, beta_c=0.0), **cfg).recorded[0]
    assert "tool_mask" in stock and not stock["tool_mask"].bool().all()
    m = assert_matches_trl(sparse, stock)
    truncated = stock["completion_ids"][:, -1:].ne(EOS).squeeze(1) & stock["completion_ids"].ne(PAD).all(1)
    if mask_truncated:
        assert not m[truncated].any() and not sparse["advantages"][truncated].any()

    rm = reward_model()
    cfg.pop("reward_weights")
    rec = run(R3HFGRPOTrainer, policy, root, [rm], trainer_kw=kw, **cfg).recorded[0]
    r, a, gen = rec["r3hf"]["rewards"], rec["advantages"], rec["r3hf"]["response_mask"]
    holes = rec["completion_mask"].bool() & ~rec["tool_mask"].bool()
    assert holes.any() and not r[holes].any() and not a[holes].any()
    tok = word_tokenizer()
    for b in range(r.shape[0]):
        prompt = tok.decode(rec["prompt_ids"][b][rec["prompt_mask"][b].bool()]) + " "
        ids = rec["completion_ids"][b].tolist()
        n = int((rec["completion_ids"][b] != PAD).sum())
        texts = [prompt + tok.decode(ids[: k + 1], skip_special_tokens=True) for k in range(n)]
        for k in range(n):
            if not gen[b, k]:
                continue
            # Φ after the token: the score after the hole span that follows it, if any
            j = k
            while j + 1 < n and not gen[b, j + 1]:
                j += 1
            before = own_score(rm, tok, texts[k - 1] if k else prompt)
            torch.testing.assert_close(r[b, k], own_score(rm, tok, texts[j]) - before, rtol=1e-4, atol=1e-5)


def counted_none_reward(completions, **kwargs):
    """Rows 0 and 4 of each batch are unscorable (None), the rest get a rule-based score."""
    return [None if i in (0, 4) else float("good" in c) + 0.1 * len(c) for i, c in enumerate(completions)]


@pytest.mark.parametrize("scale", ["group", "batch"])
def test_unscorable_rows_get_zero_advantage_as_in_trl(scale, policy, root):
    """Every reward function returned None: TRL leaves the row out of the statistics and gives it
    advantage 0; a group left with one scorable completion has no baseline (0 as well)."""
    cfg = dict(per_device_train_batch_size=6, num_generations=2, scale_rewards=scale)
    kw = dict(rollout_func=deterministic_rollout)
    stock = run(GRPOTrainer, policy, root, [counted_none_reward], trainer_kw=kw, **cfg).recorded[0]
    with pytest.warns(UserWarning, match="no reward model"):
        ours = run(R3HFGRPOTrainer, policy, root, [counted_none_reward], trainer_kw=kw, **cfg).recorded[0]
    assert_matches_trl(ours, stock)
    assert not ours["advantages"][[0, 1, 4, 5]].any()
    assert ours["advantages"][[2, 3]].any()


def test_num_generations_eval_groups(policy, root):
    """Evaluation groups have num_generations_eval rows (here 2, training uses 3)."""
    cfg = dict(per_device_train_batch_size=6, num_generations=3, num_generations_eval=2, per_device_eval_batch_size=4)
    stock = run(GRPOTrainer, policy, root, [reward_model(), plain_reward], train=False, **cfg).recorded
    ours = run(R3HFGRPOTrainer, policy, root, [reward_model(), plain_reward], train=False,
               trainer_kw=dict(beta_c=0.0), **cfg).recorded
    assert len(stock) == len(ours) >= 1
    for s, o in zip(stock, ours):
        assert_matches_trl(o, s)


# --- KL in the reward ----------------------------------------------------------------------


@torch.no_grad()
def sequence_logprobs(model, rec):
    ids = torch.cat([rec["prompt_ids"], rec["completion_ids"]], 1)
    attn = torch.cat([rec["prompt_mask"], rec["completion_mask"]], 1)
    T = rec["completion_ids"].shape[1]
    logits = model(input_ids=ids, attention_mask=attn).logits[:, -T - 1:-1].float()
    return torch.log_softmax(logits, -1).gather(-1, rec["completion_ids"][..., None]).squeeze(-1)


class Snapshotting(R3HFGRPOTrainer):
    """Keeps the policy weights that sampled each batch."""

    def _generate_and_score_completions(self, inputs):
        if not hasattr(self, "snapshots"):
            self.snapshots = []
        self.snapshots.append({k: p.detach().clone() for k, p in self.model.state_dict().items()})
        return super()._generate_and_score_completions(inputs)


def test_kl_in_reward_through_token_rewards(policy, root):
    """kl_in_reward with beta=0: TRL's loss has no KL term; the rewards are the R3HF rewards minus
    coef·(log π_sampling − log π_ref) on generated tokens (k1)."""
    from transformers import GPT2LMHeadModel

    trainer = run(Snapshotting, policy, root, [reward_model()], max_steps=3, trainer_kw=dict(kl_in_reward=0.5))
    assert trainer.beta == 0.0 and trainer.args.beta == 0.0 and trainer.ref_model is not None
    assert "kl" not in trainer.state.log_history[0]  # TRL logs its KL only when it is a loss term
    ref = GPT2LMHeadModel.from_pretrained(policy).eval()
    sampler = GPT2LMHeadModel.from_pretrained(policy).eval()
    for k in (0, 2):
        rec = trainer.recorded[k]
        sampler.load_state_dict(trainer.snapshots[k])
        mask = rec["r3hf"]["response_mask"]
        kl = sequence_logprobs(sampler, rec) - sequence_logprobs(ref, rec)
        want = ops.token_rewards(rec["r3hf"]["scores"], mask, 1) - 0.5 * torch.where(mask, kl, 0.0)
        torch.testing.assert_close(rec["r3hf"]["rewards"], want, rtol=1e-4, atol=1e-5)
        assert (k == 0) == (kl[mask].abs().max() < 1e-6)  # the first batch is sampled by the reference itself


# --- a real run with a RewardTrainer-trained reward model -----------------------------------


@pytest.fixture(scope="module")
def trained_rm(root):
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    gen = torch.Generator().manual_seed(0)
    words = ["the", "cat", "dog", "mat", "a"]
    rows = {"chosen": [], "rejected": []}
    for _ in range(32):  # the preferred answer says "good", the other "bad"
        n = int(torch.randint(1, 4, (1,), generator=gen))
        prompt = " ".join(words[int(i)] for i in torch.randint(0, len(words), (n,), generator=gen))
        rows["chosen"].append(prompt + " is good")
        rows["rejected"].append(prompt + " is bad")
    args = RewardConfig(output_dir=f"{root}/rm", max_steps=8, per_device_train_batch_size=8, learning_rate=5e-3,
                        report_to="none", save_strategy="no", logging_strategy="no", use_cpu=True,
                        disable_tqdm=True, seed=0, bf16=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = RewardTrainer(model=reward_model(5, name="trained_rm"), args=args,
                                train_dataset=Dataset.from_dict(rows), processing_class=word_tokenizer())
        trainer.train()
    return trainer.model.cpu().eval()


def test_train_with_a_reward_trainer_model(trained_rm, policy, root):
    tok = word_tokenizer()
    good = own_score(trained_rm, tok, "the cat is good") - own_score(trained_rm, tok, "the cat is bad")
    assert good > 0, "the reward model did not learn its preference"
    before = {k: p.detach().clone() for k, p in trained_rm.named_parameters()}
    trainer = run(R3HFGRPOTrainer, policy, root, [trained_rm, plain_reward], max_steps=3,
                  reward_weights=[1.0, 0.2], trainer_kw=dict(estimator="rloo"))
    logs = trainer.state.log_history
    assert len(trainer.recorded) == 3 and all(r["advantages"].dim() == 2 for r in trainer.recorded)
    for key in ("loss", "reward", "reward_std", "rewards/trained_rm/mean", "rewards/plain_reward/mean",
                "r3hf/dense_reward/pos_0", "r3hf/prompt_score", "r3hf/token_reward_sum"):
        assert key in logs[0], key
    # TRL's logged reward is still the weighted mean of the per-function scores
    weighted = logs[0]["rewards/trained_rm/mean"] + 0.2 * logs[0]["rewards/plain_reward/mean"]
    assert abs(logs[0]["reward"] - weighted) < 1e-4
    # the policy trained, the reward model did not
    assert all(torch.equal(p, before[k]) for k, p in trained_rm.named_parameters())
    from transformers import GPT2LMHeadModel

    init = GPT2LMHeadModel.from_pretrained(policy)
    moved = any(not torch.equal(p.cpu(), q) for p, q in zip(trainer.model.parameters(), init.parameters()))
    assert moved


# --- baseline="position" (issue 21) -------------------------------------------------------------


def test_position_baseline_in_trls_loop(policy, root):
    """baseline="position" in the real GRPOTrainer loop, with tool-output holes and completions of
    different lengths: the advantages are ops.group_advantages(..., baseline="position") of the
    R3HF rewards (not the row baseline's); sparse (beta_c=0) with "grpo" they are TRL's own."""
    cfg = dict(per_device_train_batch_size=6, num_generations=3)
    kw = dict(rollout_func=deterministic_rollout)
    rec = run(R3HFGRPOTrainer, policy, root, [reward_model()],
              trainer_kw=dict(kw, estimator="rloo", baseline="position"), **cfg).recorded[0]
    r, mask = rec["r3hf"]["rewards"], rec["r3hf"]["response_mask"]
    assert (mask.sum(1) != mask.sum(1)[0]).any() and (rec["completion_mask"].bool() & ~mask).any()
    want = ops.group_advantages(r, mask, 3, "rloo", baseline="position") * loss_mask(rec)
    torch.testing.assert_close(rec["advantages"], want)
    row = ops.group_advantages(r, mask, 3, "rloo") * loss_mask(rec)
    assert not torch.allclose(rec["advantages"], row)

    stock = run(GRPOTrainer, policy, root, [reward_model(), plain_reward], trainer_kw=kw, **cfg).recorded[0]
    sparse = run(R3HFGRPOTrainer, policy, root, [reward_model(), plain_reward],
                 trainer_kw=dict(kw, beta_c=0.0, baseline="position"), **cfg).recorded[0]
    assert_matches_trl(sparse, stock)


def test_bad_baseline(policy, root):
    with pytest.raises(ValueError, match="baseline"):
        run(R3HFGRPOTrainer, policy, root, [reward_model()], train=None, trainer_kw=dict(baseline="column"))
    for estimator in ("reinforce_pp", "grpo_process"):
        with pytest.raises(ValueError, match=f"baseline='position'.*estimator={estimator!r}"):
            run(R3HFGRPOTrainer, policy, root, [reward_model()], train=None,
                trainer_kw=dict(estimator=estimator, baseline="position"))
    scores, mask, sparse = torch.randn(4, 6), torch.ones(4, 5, dtype=torch.bool), torch.zeros(4)
    with pytest.raises(TypeError, match="baseline"):
        token_level_advantages(scores, sparse, mask, 2, estimator="rloo", baseline=None)
    _, pos = token_level_advantages(scores, sparse, mask, 2, estimator="rloo_outcome", baseline="position")
    _, row = token_level_advantages(scores, sparse, mask, 2, estimator="rloo_outcome")
    torch.testing.assert_close(pos, row)  # one reward per row: the per-position baseline is the row one


# --- configuration errors ----------------------------------------------------------------


def test_bad_configuration(policy, root):
    from transformers import BertConfig, BertForSequenceClassification

    with pytest.raises(ValueError, match="estimator"):
        run(R3HFGRPOTrainer, policy, root, [reward_model()], train=None, trainer_kw=dict(estimator="ppo"))
    with pytest.raises(ValueError, match="beta_c"):
        run(R3HFGRPOTrainer, policy, root, [reward_model()], trainer_kw=dict(beta_c=1.5))
    with pytest.raises(ValueError, match="kl_in_reward"):
        run(R3HFGRPOTrainer, policy, root, [reward_model()], trainer_kw=dict(kl_in_reward=-1.0))
    bert = BertForSequenceClassification(BertConfig(vocab_size=len(W), hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=16, num_labels=1))
    bert.config._name_or_path = "bert"
    with pytest.raises(UnsupportedModelError, match=r"reward_funcs\[0\].*causal sequence-classification"):
        run(R3HFGRPOTrainer, policy, root, [bert], train=None)
    with pytest.raises(ValueError, match="sum_then_normalize"):
        run(R3HFGRPOTrainer, policy, root, [reward_model()], train=False,
            multi_objective_aggregation="normalize_then_sum")
    with pytest.warns(UserWarning, match="token-level credit assignment is lost"):
        run(R3HFGRPOTrainer, policy, root, [reward_model()], train=None, importance_sampling_level="sequence")
    with pytest.raises(ValueError, match="scale_rewards='batch' is not used"):
        run(R3HFGRPOTrainer, policy, root, [reward_model()], train=None, trainer_kw=dict(estimator="rloo"),
            scale_rewards="batch")


def test_token_level_advantages_validates_and_keeps_inputs():
    scores = torch.randn(4, 6)
    mask = torch.ones(4, 5, dtype=torch.bool)
    sparse = torch.zeros(4)
    copies = scores.clone(), mask.clone()
    with pytest.raises(ValueError, match="estimator"):
        token_level_advantages(scores, sparse, mask, 2, estimator="gae")
    with pytest.raises(ValueError, match="num_generations"):
        token_level_advantages(scores, sparse, mask, 0)
    with pytest.raises(ValueError, match="sparse"):
        token_level_advantages(scores, torch.zeros(3), mask, 2)
    with pytest.raises(ValueError, match="unscorable"):
        token_level_advantages(scores, sparse, mask, 2, unscorable=torch.zeros(4, dtype=torch.bool), row_offset=2)
    rewards, adv = token_level_advantages(scores, sparse, mask, 2, estimator="rloo_outcome")
    assert torch.equal(scores, copies[0]) and torch.equal(mask, copies[1])
    s = rewards.sum(1)
    loo = torch.stack([s[1], s[0], s[3], s[2]])
    torch.testing.assert_close(adv, (s - loo)[:, None].expand(4, 5))


# --- conversational data ----------------------------------------------------------------------

CHAT = "{% for m in messages %}{{ m['content'] }} {% endfor %}"  # words only: the word-level vocabulary


def chat_tokenizer():
    tok = word_tokenizer()
    tok.chat_template = CHAT
    return tok


def test_conversational_prompts(policy, root):
    """Chat data: the reward model reads TRL's templated text; parity at beta_c=0 and rows that
    telescope to the templated text's score minus the templated prompt's."""
    from datasets import Dataset

    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": p.strip()}] for p in ["the cat", "a dog"] * 4]})

    def go(cls, rm, **kw):
        args = grpo_config(f"{root}/chat{cls.__name__}")
        tr = recording(cls)(model=policy, reward_funcs=[rm], args=args, train_dataset=data,
                            processing_class=chat_tokenizer(), reward_processing_classes=[chat_tokenizer()], **kw)
        tr.train()
        return tr.recorded[0]

    stock = go(GRPOTrainer, reward_model())
    assert_matches_trl(go(R3HFGRPOTrainer, reward_model(), beta_c=0.0), stock)
    rm = reward_model()
    rec = go(R3HFGRPOTrainer, rm)
    tok = word_tokenizer()
    for b in range(rec["completion_ids"].shape[0]):
        prompt = tok.decode(rec["prompt_ids"][b][rec["prompt_mask"][b].bool()])  # already templated: "the cat "
        completion = tok.decode(rec["completion_ids"][b], skip_special_tokens=True)
        want = own_score(rm, tok, f"{prompt.strip()} {completion} ") - own_score(rm, tok, prompt)
        torch.testing.assert_close(rec["r3hf"]["rewards"][b].sum(), want, rtol=1e-4, atol=1e-5)


def test_completion_char_ends_in_a_rewritten_text():
    """A template that drops a piece: the token ends where the previous one did; the last
    generated token always ends at the end of the text."""
    from r3hf.integrations.trl.grpo_align import completion_char_ends, prompt_boundary

    tok = word_tokenizer()
    ids = [W["is"], W["very"], W["good"], EOS]
    assert completion_char_ends("the cat is very good", 8, tok, ids, 3) == [10, 15, 20, 20]
    assert completion_char_ends("<u>the cat</u> is good!", 14, tok, ids, 3) == [17, 17, 22, 23]
    assert completion_char_ends("the cat is very good", 8, tok, ids, 2) == [10, 15, 20, 20]
    assert prompt_boundary("<u>the cat</u> is", "<u>the cat</u>") == 14
    assert prompt_boundary("<u>the cat</u> is", "<u>the dog") == 7
