"""The demo's synthetic task: a tiny language whose hidden ground truth rewards tokens by position.

Vocabulary: `<pad>`, `<eos>` and sixteen words in four colour groups of four (red, green,
blue, gold). A prompt is `PROMPT_LEN` random words; a response is `RESPONSE_LEN` words.
Ground truth: a red word in the first half of the response earns 1, a blue word in the second
half earns 1, anything else 0; quality = earned / RESPONSE_LEN ∈ [0, 1]. So which word appears
where decides the score, and a sequence-level reward has to be credited to tokens. (A first
version made the wanted colour depend on a topic token in the prompt; a tiny reward model could
not learn that interaction from a few thousand pairs within the time budget, so it was dropped.)

The reference policy is a fixed random bigram chain over the words, so its samples score about
0.25. Preference pairs are two reference samples for one prompt,
labelled by the ground truth with Bradley–Terry noise: P(a ≻ b) = σ((earned_a − earned_b)/τ).
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
RESPONSE_LEN = 24  # long enough for credit assignment to matter
TASK_SEED = 1234  # fixes the reference policy: the "world" is the same for every run seed


def group_of(token_id: torch.Tensor) -> torch.Tensor:
    """Colour group (0..3) of word ids, −1 for any other token."""
    t = torch.as_tensor(token_id)
    g = (t - WORD_IDS[0]) // len(GROUPS[0])
    return torch.where(t >= WORD_IDS[0], g, torch.full_like(g, -1))


def token_credit(prompts: torch.Tensor, responses: torch.Tensor, length: int | None = None) -> torch.Tensor:
    """Ground-truth credit of every response token, 1.0 or 0.0: [B, P] prompts, [B, L] responses -> [B, L].

    length: the full response length the halves refer to (default L; pass RESPONSE_LEN for a
    response prefix)."""
    del prompts  # the rule does not depend on the prompt; kept in the signature for other rules
    L = responses.shape[1]
    full = L if length is None else length
    second_half = torch.arange(L, device=responses.device) >= full // 2  # [L]
    wanted = torch.where(second_half, SECOND_HALF_GROUP, FIRST_HALF_GROUP)
    return (group_of(responses) == wanted[None, :]).float()


def ground_truth(prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
    """Hidden quality of each response, the mean token credit ∈ [0, 1] -> [B]."""
    return token_credit(prompts, responses).mean(1)


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
        """[n, length] word ids."""
        W = len(WORD_IDS)
        idx = torch.randint(W, (n,), generator=generator)
        out = [idx]
        for _ in range(length - 1):
            idx = torch.multinomial(self.transition[idx], 1, generator=generator).squeeze(1)
            out.append(idx)
        return torch.stack(out, 1) + WORD_IDS[0]


def decode(ids) -> list[str]:
    return [VOCAB[int(i)] for i in ids]


def preference_pairs(n: int, generator: torch.Generator, reference: ReferencePolicy | None = None,
                     noise: float = 1.0):
    """`datasets.Dataset` of n preference pairs for TRL's RewardTrainer (pre-tokenised).

    Columns: chosen_ids / rejected_ids (prompt ⊕ response ids), prompt / chosen / rejected (text),
    gt_chosen / gt_rejected (hidden quality) and `agrees` (the noisy label agrees with the
    ground truth; ties count as agreeing). Labels: P(a ≻ b) = σ((earned_a − earned_b) / noise).
    """
    from datasets import Dataset

    reference = reference or ReferencePolicy.make()
    prompts = sample_prompts(n, generator)
    a, b = reference.sample(n, generator), reference.sample(n, generator)
    qa, qb = ground_truth(prompts, a), ground_truth(prompts, b)
    p_a = torch.sigmoid((qa - qb) * RESPONSE_LEN / noise)
    a_wins = torch.rand(n, generator=generator) < p_a
    chosen = torch.where(a_wins[:, None], a, b)
    rejected = torch.where(a_wins[:, None], b, a)
    q_chosen, q_rejected = torch.where(a_wins, qa, qb), torch.where(a_wins, qb, qa)
    rows = {
        "chosen_ids": torch.cat([prompts, chosen], 1).tolist(),
        "rejected_ids": torch.cat([prompts, rejected], 1).tolist(),
        "prompt": [" ".join(decode(p)) for p in prompts],
        "chosen": [" ".join(decode(r)) for r in chosen],
        "rejected": [" ".join(decode(r)) for r in rejected],
        "gt_chosen": q_chosen.tolist(),
        "gt_rejected": q_rejected.tolist(),
        "agrees": (q_chosen >= q_rejected).tolist(),
    }
    return Dataset.from_dict(rows)
