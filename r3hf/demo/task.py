"""The demo's synthetic task: a tiny language whose hidden ground truth rewards tokens by position.

Vocabulary: `<pad>`, `<eos>` and sixteen words in four colour groups of four (red, green,
blue, gold). A prompt is `PROMPT_LEN` random words; a response is up to `RESPONSE_LEN` tokens: it
ends with `<eos>` (which counts as a response token) or is truncated at `RESPONSE_LEN` words, and
is right-padded with `<pad>` to `RESPONSE_LEN` in tensors.

Ground truth, per token at position t (0-based, positions of the `RESPONSE_LEN` frame):
- a red word at t < RESPONSE_LEN / 2 or a blue word at t >= RESPONSE_LEN / 2 earns +1 ("credit");
- any other word costs FILLER_COST (1/3): filler;
- `<eos>` and padding earn 0;
- a truncated response (no `<eos>` within RESPONSE_LEN) pays TRUNCATION_COST (0: truncation is
  only length, it is neither rewarded nor punished beyond its tokens).
quality = (Σ_t value_t − truncation cost) / RESPONSE_LEN ∈ [−1/3, 1]; the best response is
RESPONSE_LEN wanted words (1.0).

Why there is no length loophole: a longer response is worth more only through the tokens it adds,
each +1 if it is a wanted word and −1/3 if not, so length pays only if more than a quarter of the
added words are wanted ones, i.e. only by writing better words. In the preference data (reference
samples: 24.5 % of words are wanted ones) an added word is worth 0.245 − 0.755/3 ≈ −0.007 on
average and corr(length, quality) = −0.04 (20 000 samples): length carries almost no preference
signal that a reward model could learn to pay for. The fixed-length version of this task (up to 2026-12) had no filler cost.

The reference policy is a fixed random bigram chain over the words that ends with `<eos>` with
probability EOS_PROB after each word from the MIN_LEN-th on. Preference pairs are two reference
samples for one prompt, labelled by the ground truth with Bradley–Terry noise:
P(a ≻ b) = σ((earned_a − earned_b)/τ).
Everything is made in code; nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PAD, EOS = "<pad>", "<eos>"
GROUPS = (
    ("cherry", "ruby", "rose", "wine"),
    ("leaf", "lime", "moss", "frog"),
    ("sky", "sea", "jay", "ink"),
    ("sun", "corn", "lemon", "honey"),
)
WORDS = tuple(w for group in GROUPS for w in group)
VOCAB = (PAD, EOS, *WORDS)
PAD_ID, EOS_ID = 0, 1
WORD_IDS = tuple(range(2, len(VOCAB)))
FIRST_HALF_GROUP, SECOND_HALF_GROUP = 0, 2  # red words early, blue words late
PROMPT_LEN = 4
RESPONSE_LEN = 24  # the maximum response length; long enough for credit assignment to matter
FILLER_COST = 1.0 / 3.0  # value of a word that earns no credit (see the module docstring)
TRUNCATION_COST = 0.0  # extra cost of a response that never emits <eos> (none: a truncated response is just long)
MIN_LEN = 4  # the reference policy writes at least this many words
EOS_PROB = 0.05  # then ends after each word with this probability (mean length ≈ 17, ≈ 36 % truncated)
TASK_SEED = 1234  # fixes the reference policy: the "world" is the same for every run seed


def group_of(token_id: torch.Tensor) -> torch.Tensor:
    """Colour group (0..3) of word ids, −1 for any other token."""
    t = torch.as_tensor(token_id)
    g = (t - WORD_IDS[0]) // len(GROUPS[0])
    return torch.where(t >= WORD_IDS[0], g, torch.full_like(g, -1))


def token_credit(prompts: torch.Tensor, responses: torch.Tensor, length: int | None = None) -> torch.Tensor:
    """Which response tokens earn ground-truth credit, 1.0 or 0.0: [B, P] prompts, [B, L] responses -> [B, L].

    length: the response frame the halves refer to (default L; pass RESPONSE_LEN for a
    response prefix). `<eos>` and `<pad>` never earn credit."""
    del prompts  # the rule does not depend on the prompt; kept in the signature for other rules
    L = responses.shape[1]
    full = L if length is None else length
    second_half = torch.arange(L, device=responses.device) >= full // 2  # [L]
    wanted = torch.where(second_half, SECOND_HALF_GROUP, FIRST_HALF_GROUP)
    return (group_of(responses) == wanted[None, :]).float()


def token_value(prompts: torch.Tensor, responses: torch.Tensor, length: int | None = None) -> torch.Tensor:
    """Ground-truth value of every response token: +1 credit, −FILLER_COST for any other word, 0 for
    `<eos>`/`<pad>` -> float [B, L] (the truncation cost is not per token: see `ground_truth`)."""
    credit = token_credit(prompts, responses, length)
    word = group_of(responses) >= 0
    return credit - FILLER_COST * (word.float() - credit)


def response_mask(responses: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: the response's tokens, i.e. up to and including the first `<eos>` (all L when
    there is none: truncated)."""
    eos = responses == EOS_ID
    before = torch.cumsum(eos.int(), 1) - eos.int()  # <eos> seen strictly before t
    return (before == 0) & (responses != PAD_ID)


def response_lengths(responses: torch.Tensor) -> torch.Tensor:
    """Response length in tokens (with the `<eos>`) -> long [B]."""
    return response_mask(responses).sum(1)


def truncated(responses: torch.Tensor) -> torch.Tensor:
    """[B] bool: the response has no `<eos>` (it ran to the maximum length)."""
    return ~(response_mask(responses) & (responses == EOS_ID)).any(1)


def ground_truth(prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
    """Hidden quality of each response -> [B]: (Σ token_value − TRUNCATION_COST if truncated) / L,
    L the frame (RESPONSE_LEN for the demo's padded responses). Tokens after `<eos>` are ignored."""
    L = responses.shape[1]
    mask = response_mask(responses)
    credit = token_credit(prompts, responses) * mask
    # counts first, then one float expression: equal counts give bit-equal qualities (labels of ties)
    n_credit, n_filler = credit.sum(1), ((group_of(responses) >= 0) & mask).float().sum(1) - credit.sum(1)
    return (n_credit - FILLER_COST * n_filler - TRUNCATION_COST * truncated(responses).float()) / L


def make_tokenizer():
    """A word-level `PreTrainedTokenizerFast` over VOCAB, built in code."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token=PAD))
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=PAD)


def sample_prompts(n: int, generator: torch.Generator) -> torch.Tensor:
    """[n, PROMPT_LEN] ids of random words."""
    return torch.tensor(WORD_IDS)[torch.randint(len(WORD_IDS), (n, PROMPT_LEN), generator=generator)]


@dataclass
class ReferencePolicy:
    """A bigram chain over the words: first word uniform, then `transition`."""

    transition: torch.Tensor  # [W, W] row-stochastic

    @classmethod
    def make(cls, seed: int = TASK_SEED, sharpness: float = 1.5) -> "ReferencePolicy":
        g = torch.Generator().manual_seed(seed)
        logits = sharpness * torch.randn(len(WORD_IDS), len(WORD_IDS), generator=g)
        return cls(torch.softmax(logits, dim=1))

    def sample(self, n: int, generator: torch.Generator, length: int = RESPONSE_LEN) -> torch.Tensor:
        """[n, length] responses: words, then (from the MIN_LEN-th word on, with probability
        EOS_PROB after each word) `<eos>` and `<pad>` to the end."""
        W = len(WORD_IDS)
        idx = torch.randint(W, (n,), generator=generator)
        out = [idx + WORD_IDS[0]]
        done = torch.zeros(n, dtype=torch.bool)
        for t in range(1, length):
            idx = torch.multinomial(self.transition[idx], 1, generator=generator).squeeze(1)
            stop = torch.rand(n, generator=generator) < EOS_PROB
            tok = idx + WORD_IDS[0]
            if t >= MIN_LEN:
                tok = torch.where(stop, torch.full_like(tok, EOS_ID), tok)
            tok = torch.where(done, torch.full_like(tok, PAD_ID), tok)
            done = done | (tok == EOS_ID)
            out.append(tok)
        return torch.stack(out, 1)


def decode(ids) -> list[str]:
    return [VOCAB[int(i)] for i in ids]


def strip(ids) -> list[int]:
    """A prompt ⊕ response as a list of ids without the padding (variable length)."""
    return [int(i) for i in ids if int(i) != PAD_ID]


def preference_pairs(n: int, generator: torch.Generator, reference: ReferencePolicy | None = None,
                     noise: float = 1.0):
    """`datasets.Dataset` of n preference pairs for TRL's RewardTrainer (pre-tokenised).

    Columns: chosen_ids / rejected_ids (prompt ⊕ response ids, variable length, no padding), prompt / chosen / rejected (text),
    gt_chosen / gt_rejected (hidden quality) and `agrees` (the noisy label agrees with the
    ground truth; ties count as agreeing). Labels: P(a ≻ b) = σ((earned_a − earned_b) / noise).
    """
    from datasets import Dataset

    reference = reference or ReferencePolicy.make()
    prompts = sample_prompts(n, generator)
    a, b = reference.sample(n, generator), reference.sample(n, generator)
    qa, qb = ground_truth(prompts, a), ground_truth(prompts, b)
    diff = torch.where((qa - qb).abs() < 1e-6, 0.0, qa - qb)  # equal value from other counts: a tie, not rounding
    p_a = torch.sigmoid(diff * RESPONSE_LEN / noise)
    a_wins = torch.rand(n, generator=generator) < p_a
    chosen = torch.where(a_wins[:, None], a, b)
    rejected = torch.where(a_wins[:, None], b, a)
    q_chosen, q_rejected = torch.where(a_wins, qa, qb), torch.where(a_wins, qb, qa)
    rows = {
        "chosen_ids": [strip(x) for x in torch.cat([prompts, chosen], 1)],
        "rejected_ids": [strip(x) for x in torch.cat([prompts, rejected], 1)],
        "prompt": [" ".join(decode(p)) for p in prompts],
        "chosen": [" ".join(decode(strip(r))) for r in chosen],
        "rejected": [" ".join(decode(strip(r))) for r in rejected],
        "gt_chosen": q_chosen.tolist(),
        "gt_rejected": q_rejected.tolist(),
        "agrees": (q_chosen >= q_rejected - 1e-6).tolist(),
    }
    return Dataset.from_dict(rows)
