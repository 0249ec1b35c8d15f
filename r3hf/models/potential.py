"""A potential head: a linear map Φ'(h_t) = h_t · weight + bias on a frozen reward model's last
hidden states, used as R3HF's shaping potential while the RM's own head keeps giving R.

A reward model trained on full responses gives poor prefix scores (its Φ_t is a bad value
estimate), but its hidden states carry the information: a second D → 1 head read from the same
backbone forward is a much better potential (docs/when-r3hf-helps.md, "A potential head"). Fit it
with `r3hf.models.fit_potential` (or `r3hf fit-potential`), keep it next to the RM with
`save_pretrained`, and read both heads from one forward with `potential_scores`.
"""

from __future__ import annotations

import hashlib
import json
import math
from numbers import Real
from pathlib import Path

import torch
from torch import nn

from .heads import find_head, model_config
from .scoring import MODEL_PAD, check_ids, head_hidden_states, project

WEIGHTS_FILE = "potential_head.safetensors"
CONFIG_FILE = "potential_head.json"
FORMAT = "r3hf.potential_head"
FORMAT_VERSION = 1


def head_fingerprint(weight: torch.Tensor, bias: torch.Tensor | None) -> str:
    """sha256 (first 16 hex digits) of a head's float32 weight and bias: which RM head a potential
    was fit on, so loading it next to another RM can be told apart."""
    h = hashlib.sha256(weight.detach().float().cpu().contiguous().numpy().tobytes())
    if bias is not None:
        h.update(bias.detach().float().cpu().reshape(-1).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class PotentialHead:
    """Φ'(h) = h · weight + bias, read at every position of a reward model's last hidden states.

    weight: float [D] (or [1, D], a Hugging Face `score.weight`), stored float32; bias: a float or
    a one-element tensor (float32 [1]). reward_model: what it was fit on (a dict with `name_or_path`,
    `hidden_size`, `head`, `head_fingerprint`; see `fit_potential`); fit: how (mode, sizes,
    ridge, losses); diagnostics: held-out Var(R − Φ'_t)/Var(R) against the RM's own prefix scores.
    """

    def __init__(self, weight, bias=0.0, *, reward_model: dict | None = None, fit: dict | None = None,
                 diagnostics: dict | None = None):
        if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
            raise TypeError(f"weight must be a floating-point tensor [D], got "
                            f"{type(weight).__name__ if not isinstance(weight, torch.Tensor) else weight.dtype}")
        if weight.dim() == 2 and weight.shape[0] == 1:
            weight = weight[0]
        if weight.dim() != 1 or weight.numel() == 0:
            raise ValueError(f"weight must be [D] (or [1, D]) with D >= 1, got shape {list(weight.shape)}")
        if isinstance(bias, torch.Tensor):
            if bias.numel() != 1 or not bias.is_floating_point():
                raise ValueError(f"bias must be a float or a one-element float tensor, got {bias.dtype} "
                                 f"shape {list(bias.shape)}")
            bias = bias.detach().reshape(1).to(device=weight.device, dtype=torch.float32)
        elif isinstance(bias, Real) and not isinstance(bias, bool):
            bias = torch.tensor([float(bias)], dtype=torch.float32, device=weight.device)
        else:
            raise TypeError(f"bias must be a float or a one-element float tensor, got {type(bias).__name__}")
        if not bool(torch.isfinite(weight).all()) or not bool(torch.isfinite(bias).all()):
            raise ValueError("weight and bias must be finite")
        self.weight = weight.detach().to(torch.float32).clone()
        self.bias = bias.clone()
        self.reward_model = dict(reward_model or {})
        self.fit = dict(fit or {})
        self.diagnostics = diagnostics

    @property
    def hidden_size(self) -> int:
        return self.weight.numel()

    @property
    def device(self) -> torch.device:
        return self.weight.device

    def __repr__(self) -> str:
        mode = self.fit.get("mode", "unfit")
        return f"PotentialHead(D={self.hidden_size}, mode={mode!r}, reward_model={self.reward_model.get('name_or_path')!r})"

    def __call__(self, hidden: torch.Tensor, *, cu_seqlens=None, backend="auto") -> torch.Tensor:
        """hidden [B, S, D] (or packed [T, D] with cu_seqlens) -> Φ' float32 [B, S] ([T]) via
        `r3hf.ops.prefix_scores` (fp32 accumulation; the weight is cast to the hidden dtype, as the
        RM's own head is)."""
        if not isinstance(hidden, torch.Tensor):
            raise TypeError(f"hidden must be a torch.Tensor [B, S, D], got {type(hidden).__name__}")
        if hidden.shape[-1] != self.hidden_size:
            raise ValueError(f"hidden's last dim must be the head's D = {self.hidden_size}, got shape "
                             f"{list(hidden.shape)}")
        weight = self.weight.to(device=hidden.device, dtype=hidden.dtype)
        bias = self.bias.to(hidden.device)
        if cu_seqlens is not None:
            from .. import ops

            return ops.prefix_scores(hidden, weight, bias, cu_seqlens=cu_seqlens, backend=backend)
        return project(hidden, weight, bias, backend)

    def to(self, device) -> "PotentialHead":
        """A copy on `device` (the metadata is shared)."""
        return PotentialHead(self.weight.to(device), self.bias.to(device), reward_model=self.reward_model,
                             fit=self.fit, diagnostics=self.diagnostics)

    @classmethod
    def from_reward_model(cls, model: nn.Module, *, head=None, label=None, name_or_path=None) -> "PotentialHead":
        """The RM's own head as a potential (Φ' = the RM's prefix scores): where fitting starts."""
        h = find_head(model, head, label)
        bias = h.bias if h.bias is not None else 0.0
        return cls(h.weight.float(), bias, reward_model=reward_model_info(model, h, name_or_path),
                   fit={"mode": "reward-model-head"})

    def check(self, model: nn.Module, *, head=None, label=None, strict: bool = False) -> None:
        """Raise if the head does not fit `model`'s hidden size; if it was fit on a different RM head
        (fingerprint), warn (strict=True: raise)."""
        h = find_head(model, head, label, check=False)
        if h.weight.numel() != self.hidden_size:
            raise ValueError(f"potential head has D = {self.hidden_size} but the reward model's hidden size is "
                             f"{h.weight.numel()}: it was fit on another model")
        want = self.reward_model.get("head_fingerprint")
        bias = h.bias if h.bias is not None else None
        if want and want != head_fingerprint(h.weight, bias):
            msg = (f"potential head was fit on reward model {self.reward_model.get('name_or_path')!r} "
                   f"(head fingerprint {want}); this model's head differs")
            if strict:
                raise ValueError(msg)
            import warnings

            warnings.warn(msg, stacklevel=2)

    def config(self) -> dict:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "hidden_size": self.hidden_size,
            "dtype": "float32",
            "reward_model": self.reward_model,
            "fit": self.fit,
            "diagnostics": self.diagnostics,
        }

    def save_pretrained(self, directory) -> dict:
        """Write `potential_head.safetensors` (weight [D], bias [1], float32) and
        `potential_head.json` into `directory` (created; the RM's own folder is fine: no RM file is
        touched). Returns the two paths."""
        from safetensors.torch import save_file

        d = Path(directory)
        if d.exists() and not d.is_dir():
            raise ValueError(f"directory {str(d)!r} exists and is not a folder")
        d.mkdir(parents=True, exist_ok=True)
        paths = {"weights": str(d / WEIGHTS_FILE), "config": str(d / CONFIG_FILE)}
        save_file({"weight": self.weight.cpu().contiguous(), "bias": self.bias.cpu().contiguous()}, paths["weights"],
                  metadata={"format": FORMAT})
        Path(paths["config"]).write_text(json.dumps(_json_ready(self.config()), indent=1), encoding="utf-8")
        return paths

    @classmethod
    def from_pretrained(cls, directory, device="cpu") -> "PotentialHead":
        """Load a head written by `save_pretrained` (a folder holding potential_head.*)."""
        from safetensors.torch import load_file

        d = Path(directory)
        wpath, cpath = d / WEIGHTS_FILE, d / CONFIG_FILE
        if not wpath.is_file() or not cpath.is_file():
            raise FileNotFoundError(f"{str(d)!r} holds no potential head: expected {WEIGHTS_FILE} and {CONFIG_FILE} "
                                    "(written by PotentialHead.save_pretrained / r3hf fit-potential)")
        config = json.loads(cpath.read_text(encoding="utf-8"))
        if config.get("format") != FORMAT:
            raise ValueError(f"{cpath} is not a potential head config (format {config.get('format')!r})")
        if int(config.get("version", 0)) > FORMAT_VERSION:
            raise ValueError(f"{cpath} has format version {config.get('version')}; this r3hf reads up to {FORMAT_VERSION}")
        tensors = load_file(str(wpath), device=str(device))
        if set(tensors) != {"weight", "bias"}:
            raise ValueError(f"{wpath} must hold exactly 'weight' and 'bias', got {sorted(tensors)}")
        head = cls(tensors["weight"], tensors["bias"], reward_model=config.get("reward_model"), fit=config.get("fit"),
                   diagnostics=config.get("diagnostics"))
        if head.hidden_size != int(config["hidden_size"]):
            raise ValueError(f"{wpath}: weight has D = {head.hidden_size} but {cpath} says {config['hidden_size']}")
        return head


def _json_ready(x):
    """NaN/inf -> None and tensors -> lists, so the config is strict JSON."""
    if isinstance(x, dict):
        return {str(k): _json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_ready(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _json_ready(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def reward_model_info(model: nn.Module, head, name_or_path=None) -> dict:
    """What a potential records about its RM: path, hidden size, head name and fingerprint."""
    if name_or_path is None:
        name_or_path = getattr(model_config(model), "_name_or_path", None) or None
    return {
        "name_or_path": None if name_or_path is None else str(name_or_path),
        "model_type": getattr(model_config(model), "model_type", None),
        "hidden_size": int(head.weight.numel()),
        "head": head.name,
        "head_fingerprint": head_fingerprint(head.weight, head.bias),
    }


def as_potential(potential) -> PotentialHead:
    """A PotentialHead, or a folder (str / Path) holding one."""
    if isinstance(potential, PotentialHead):
        return potential
    if isinstance(potential, (str, Path)):
        return PotentialHead.from_pretrained(potential)
    raise TypeError(f"potential must be a PotentialHead or a folder written by save_pretrained, got "
                    f"{type(potential).__name__}")


@torch.no_grad()
def potential_scores(model: nn.Module, potential, input_ids, attention_mask=None, *, head=None, label=None,
                     pad_token_id=MODEL_PAD, backend="auto"):
    """The RM's own prefix scores and the potential, from one backbone forward.

    input_ids [B, S], attention_mask [B, S] or None -> (scores float32 [B, S]: the RM's head at every
    prefix, as `prefix_scores`; phi float32 [B, S]: Φ' at every prefix), both 0 at padding.
    potential: a PotentialHead or its folder.
    """
    pot = as_potential(potential)
    h = find_head(model, head, label)
    if h.weight.numel() != pot.hidden_size:
        raise ValueError(f"potential head has D = {pot.hidden_size} but the reward model's hidden size is "
                         f"{h.weight.numel()}")
    ids, mask = check_ids(input_ids, attention_mask)
    hidden, weight, bias = head_hidden_states(h, ids, mask, pad_token_id)
    scores = project(hidden, weight, bias, backend).masked_fill(~mask, 0.0)
    phi = pot(hidden, backend=backend).masked_fill(~mask, 0.0)
    return scores, phi


def with_final_score(phi: torch.Tensor, scores: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """The shaping score tensor: Φ' [B, S] everywhere except each row's last generated token, which
    keeps the RM's R (scores [B, S]); last: int64 [B] column of that token. A new tensor."""
    out = phi.clone()
    idx = last.to(phi.device).long()[:, None]
    return out.scatter_(1, idx, scores.gather(1, idx))


def load_potential(potential, model: nn.Module | None = None, *, head=None, label=None, name: str = "potential",
                   hidden_size: int | None = None) -> PotentialHead:
    """What an integration's `potential=` argument holds -> a PotentialHead checked against the RM.

    potential: a PotentialHead or a folder written by `save_pretrained`; model: the reward model
    whose backbone it reads (its head's D must match; a head fit on another RM head warns), or
    hidden_size: D for a model r3hf does not resolve (OpenRLHF's RewardModel). Errors name `name`.
    """
    if not isinstance(potential, (PotentialHead, str, Path)):
        raise TypeError(f"{name} must be a PotentialHead or a folder written by PotentialHead.save_pretrained, "
                        f"got {type(potential).__name__}")
    try:
        pot = as_potential(potential)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{name}: {e}") from e
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from e
    if model is not None:
        try:
            pot.check(model, head=head, label=label)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from e
    elif hidden_size is not None and pot.hidden_size != int(hidden_size):
        raise ValueError(f"{name}: potential head has D = {pot.hidden_size} but the reward model's hidden size is "
                         f"{int(hidden_size)}: it was fit on another model")
    return pot
