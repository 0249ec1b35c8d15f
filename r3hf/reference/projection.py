import torch


def prefix_scores(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, cu_seqlens: torch.Tensor | None = None
) -> torch.Tensor:
    """Reward-head score at every position: `scores[b, t] = hidden[b, t, :] · weight + bias`.

    hidden [B, S, D] any float dtype, weight [D], bias float32 [1] or None -> float32 [B, S]; a packed
    stream (cu_seqlens given) is hidden [T, D] -> [T], per position alike.
    Accumulates in fp32, so a bf16 reward model's prefix scores are as exact as its hidden states.
    """
    # A caller's autocast region (e.g. a bf16 training step) would otherwise run this matmul in bf16.
    with torch.autocast(hidden.device.type, enabled=False):
        scores = torch.matmul(hidden.float(), weight.float())
    if bias is not None:
        scores = scores + bias.float()
    return scores
