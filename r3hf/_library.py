"""Every public op as a torch custom op `torch.ops.r3hf_ops.<name>`, with a fake (meta) kernel and autograd.

Why: `torch.compile` then sees one opaque node per op (no graph break on the dispatch code, the
backends' Python or a host sync), CUDA graphs capture the ops, and gradients flow on every backend.

- Which backend runs is decided once, by `r3hf.ops` before the call, and passed in as the `backend`
  string argument, so nothing about dispatch is traced.
- The kernel (`_impl`) runs the chosen backend eagerly with real tensors, also inside a compiled
  graph; data-dependent checks (`r3hf._checks`) run there.
- Autograd: the KL path (logprobs, ref_logprobs) has the analytic backward of
  `r3hf.reference.grad`; every other floating input gets the vector-Jacobian product of the torch
  reference (recomputed in the backward), so no backend silently drops a gradient.

To add an op: one `Op(...)` entry in `OPS` (schema, output shapes, its KL path if any). Backends
then implement it under the same name (see `r3hf._dispatch`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from . import _checks, _dispatch, reference
from . import _validate as v
from .reference import grad as ref_grad

NAMESPACE = "r3hf_ops"


@dataclass(frozen=True)
class Op:
    schema: str  # arguments and returns, without the trailing `str backend` argument
    shapes: Callable  # normalised kwargs -> list of output shapes (all float32)
    ranges: tuple = ()  # arguments that are (low, high) ranges (float[]? in the schema)
    checks: Callable | None = None  # data-dependent checks (r3hf._checks), run in the kernel
    kl: str | None = None  # "kl", "rewards" or "fused": how grad flows to logprobs/ref_logprobs
    outputs: int = 1
    names: tuple = field(default=())  # filled in from the schema


def _layout_check(stream_arg: str, prompt_len: bool = False, then=None):
    """Data checks of the batch layout: prompt_len's range (padded), or cu_seqlens' values and
    first="prompt"'s prompt tokens (packed); then `then(a)` if given."""
    def check(a):
        cu = a.get("cu_seqlens")
        if cu is not None:
            _checks.cu_seqlens_values(cu, a[stream_arg].shape[0], stream_arg)
            if prompt_len:
                _checks.packed_prompts(cu, a["response_mask"], a["first"])
        elif prompt_len:
            S = a[stream_arg].shape[1]
            _checks.prompt_len_values(a["prompt_len"], S, a["response_mask"].shape[1], a["first"], stream_arg)
        if then is not None:
            then(a)
    return check


def _group_tokens(a):
    _checks.group_tokens(a["response_mask"], a["estimator"])


def _BL(a):
    return [tuple(a["response_mask"].shape)]


OPS: dict[str, Op] = {
    "prefix_scores": Op(
        "Tensor hidden, Tensor weight, Tensor? bias, Tensor? cu_seqlens", lambda a: [tuple(a["hidden"].shape[:-1])],
        checks=_layout_check("hidden")),
    "redistribute": Op(
        "Tensor scores, Tensor response_mask, Tensor? prompt_len, str first, float beta_c, bool beta_c_auto, "
        "Tensor? cu_seqlens", _BL,
        checks=_layout_check("scores", prompt_len=True)),
    "kl_penalty": Op(
        "Tensor logprobs, Tensor ref_logprobs, str estimator, float[]? clamp, Tensor? cu_seqlens",
        lambda a: [tuple(a["logprobs"].shape)], ranges=("clamp",), kl="kl", checks=_layout_check("logprobs")),
    "token_rewards": Op(
        "Tensor scores, Tensor response_mask, Tensor? prompt_len, Tensor? logprobs, Tensor? ref_logprobs, "
        "float kl_coef, str kl_estimator, float[]? kl_clamp, str first, float beta_c, float[]? reward_clip, "
        "bool beta_c_auto, "
        "Tensor? cu_seqlens", _BL, ranges=("kl_clamp", "reward_clip"), checks=_layout_check("scores", prompt_len=True),
        kl="rewards"),
    "gae": Op(
        "Tensor rewards, Tensor values, Tensor response_mask, float gamma, float lam, Tensor? bootstrap, "
        "bool carry_masked, "
        "Tensor? cu_seqlens", lambda a: [tuple(a["rewards"].shape)] * 2, outputs=2, checks=_layout_check("rewards")),
    "masked_whiten": Op(
        "Tensor x, Tensor mask, bool shift_mean, bool unbiased, float eps, bool transform_masked, str eps_mode, "
        "Tensor? cu_seqlens",
        lambda a: [tuple(a["x"].shape)], checks=_layout_check("x")),
    "fused_reward_gae": Op(
        "Tensor hidden, Tensor weight, Tensor? bias, Tensor values, Tensor response_mask, Tensor? prompt_len, "
        "Tensor? logprobs, Tensor? ref_logprobs, float kl_coef, str kl_estimator, float[]? kl_clamp, float gamma, "
        "float lam, str first, float beta_c, float[]? reward_clip, Tensor? bootstrap, bool beta_c_auto, "
        "Tensor? cu_seqlens",
        lambda a: [tuple(a["response_mask"].shape)] * 3, ranges=("kl_clamp", "reward_clip"),
        checks=_layout_check("hidden", prompt_len=True), kl="fused", outputs=3),
    # Group advantages (issue 12). `group=` (torch.distributed) calls run eagerly, outside the custom op.
    "reward_to_go": Op(
        "Tensor rewards, Tensor response_mask, float gamma, str holes, "
        "Tensor? cu_seqlens", lambda a: [tuple(a["rewards"].shape)],
        checks=_layout_check("rewards")),
    "group_advantages": Op(
        "Tensor rewards, Tensor response_mask, Tensor index, str estimator, float gamma, float eps, str scale, "
        "Tensor? cu_seqlens, str baseline",
        lambda a: [tuple(a["rewards"].shape)], checks=_layout_check("rewards", then=_group_tokens)),
    "fused_reward_group_advantages": Op(
        "Tensor hidden, Tensor weight, Tensor? bias, Tensor response_mask, Tensor? prompt_len, Tensor index, "
        "str estimator, Tensor? logprobs, Tensor? ref_logprobs, float kl_coef, str kl_estimator, float[]? kl_clamp, "
        "str first, float beta_c, float[]? reward_clip, float gamma, float eps, str scale, bool beta_c_auto, "
        "Tensor? cu_seqlens, str baseline",
        lambda a: [tuple(a["response_mask"].shape)] * 2, ranges=("kl_clamp", "reward_clip"),
        checks=_layout_check("hidden", prompt_len=True, then=_group_tokens),
        outputs=2),  # kl=None: the group statistics make the advantages non-linear in the KL; reference VJP
}

# Option defaults (r3hf._validate.OP_OPTIONS): a backend is handed an option only when it is set.
# cu_seqlens (a packed batch, issue 16) is an option too: backends list it in OPTIONS per op.
_DEFAULTS = {"carry_masked": False, "transform_masked": False, "eps_mode": "add", "beta_c_auto": False,
             "cu_seqlens": None}
_DEFAULTS["baseline"] = "row"  # group ops (issue 21): "position" is an option backends list


def _is_default(k: str, val) -> bool:
    if k not in _DEFAULTS:
        return False
    default = _DEFAULTS[k]
    return val is None if default is None else (not isinstance(val, torch.Tensor) and val == default)


def _arg_names(schema: str) -> tuple:
    return tuple(part.strip().split(" ")[-1] for part in schema.split(","))


def _returns(n: int) -> str:
    return "Tensor" if n == 1 else "(" + ", ".join(["Tensor"] * n) + ")"


def _kwargs(name: str, args) -> dict:
    op = OPS[name]
    a = dict(zip(op.names, args))
    for r in op.ranges:
        if a[r] is not None:
            a[r] = (float(a[r][0]), float(a[r][1]))
    return a


def _backend_kwargs(a: dict) -> dict:
    return {k: val for k, val in a.items() if not _is_default(k, val)}


def _make(name: str, n_out: int):
    op = OPS[name]

    def impl(*args, _checked=False):
        *args, backend = args
        a = _kwargs(name, args)
        if op.checks is not None and not _checked:
            op.checks(a)
        out = getattr(_dispatch.load(backend)[0], name)(**_backend_kwargs(a))
        return _unalias(out, args, n_out)

    def fake(*args):
        *args, backend = args
        a = _kwargs(name, args)
        like = next(t for t in args if isinstance(t, torch.Tensor))
        outs = tuple(like.new_empty(s, dtype=torch.float32) for s in op.shapes(a))
        return outs if n_out > 1 else outs[0]

    return impl, fake


def _define(name: str) -> None:
    op = OPS[name]
    object.__setattr__(op, "names", _arg_names(op.schema))
    n_out = op.outputs
    qual = f"{NAMESPACE}::{name}"
    torch.library.define(qual, f"({op.schema}, str backend) -> {_returns(n_out)}")
    impl, fake = _make(name, n_out)
    _EAGER[name] = impl
    _KNOWN[name] = frozenset(op.names) | {"group"}
    torch.library.impl(qual, "CompositeExplicitAutograd")(impl)
    torch.library.register_fake(qual)(fake)
    torch.library.register_autograd(qual, _backward(name, n_out), setup_context=_setup_context(name))


# --- autograd -----------------------------------------------------------------------------

_KL_INPUTS = ("logprobs", "ref_logprobs")


def _setup_context(name: str):
    op = OPS[name]

    def setup_context(ctx, inputs, output):
        *args, backend = inputs
        tensors = [t if isinstance(t, torch.Tensor) else None for t in args]
        ctx.r3hf_kinds = [isinstance(t, torch.Tensor) for t in args]
        ctx.r3hf_plain = [None if isinstance(t, torch.Tensor) else t for t in args]
        ctx.save_for_backward(*[t for t in tensors if t is not None])
        ctx.r3hf_names = op.names

    return setup_context


def _restore(ctx) -> list:
    saved = iter(ctx.saved_tensors)
    return [next(saved) if is_t else plain for is_t, plain in zip(ctx.r3hf_kinds, ctx.r3hf_plain)]


def _kl_grad(name: str, a: dict, grads) -> torch.Tensor:
    """d loss / d (logprobs − ref_logprobs) as float32 [B, L]."""
    if name == "kl_penalty":
        return ref_grad.kl_penalty_grad(grads[0], a["logprobs"], a["ref_logprobs"], a["estimator"], a["clamp"])
    mask = a["response_mask"]
    g_rewards = grads[0] if grads[0] is not None else torch.zeros(mask.shape, device=mask.device)
    if name == "fused_reward_gae":
        g_scan = sum(g for g in grads[1:] if g is not None)
        if not isinstance(g_scan, int):
            g_rewards = g_rewards.float() + ref_grad.gae_rewards_vjp(g_scan, mask, a["gamma"], a["lam"], a.get("cu_seqlens"))
    g = torch.where(mask, g_rewards.float(), torch.zeros((), device=mask.device)) * (-a["kl_coef"])
    return ref_grad.kl_penalty_grad(g, a["logprobs"], a["ref_logprobs"], a["kl_estimator"], a["kl_clamp"])


def _backward(name: str, n_out: int):
    op = OPS[name]

    def backward(ctx, *grads):
        args = _restore(ctx)
        a = _kwargs(name, args)
        names = op.names
        need = dict(zip(names, ctx.needs_input_grad[: len(names)]))
        result = {k: None for k in names}
        if op.kl is not None and (need.get("logprobs") or need.get("ref_logprobs")):
            g = _kl_grad(name, a, grads)
            if need.get("logprobs"):
                result["logprobs"] = g.to(a["logprobs"].dtype)
            if need.get("ref_logprobs"):
                result["ref_logprobs"] = (-g).to(a["ref_logprobs"].dtype)
        others = [k for k in names if need.get(k) and (op.kl is None or k not in _KL_INPUTS)]
        if others:
            result.update(_reference_vjp(name, a, others, grads))
        return tuple(result[k] for k in names) + (None,)

    return backward


def _reference_vjp(name: str, a: dict, wrt: list, grads) -> dict:
    """Gradients of the torch reference (the spec) with respect to `wrt`, recomputed."""
    a = dict(a)
    leaves = {}
    with torch.enable_grad():
        for k in wrt:
            leaves[k] = a[k].detach().requires_grad_(True)
            a[k] = leaves[k]
        out = getattr(reference, name)(**_backend_kwargs(a))
        outs = out if isinstance(out, tuple) else (out,)
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None]
        got = torch.autograd.grad([o for o, _ in pairs], [leaves[k] for k in wrt], [g for _, g in pairs],
                                  allow_unused=True)
    return {k: (g if g is not None else torch.zeros_like(leaves[k])) for k, g in zip(wrt, got)}


# --- calling ------------------------------------------------------------------------------


def _schema_arg(value):
    if isinstance(value, tuple):  # a normalised (low, high) range
        return [float(value[0]), float(value[1])]
    return value


def call(name: str, backend: str, args: dict):
    """Run op `name` on `backend` (already chosen) with the normalised arguments of r3hf._validate."""
    if args.get("group") is not None:
        # Collectives across ranks (torch.distributed, e.g. masked_whiten's all-reduce between its
        # statistics and transform phases) are Python: run eagerly, not as the custom op.
        return getattr(_dispatch.load(backend)[0], name)(**args)
    op = OPS[name]
    known = _KNOWN[name]
    for k in args:
        if k not in known:  # never drop an argument the user set: the schema must carry every option
            unknown = sorted(set(args) - known)
            raise TypeError(f"r3hf internal error: {name}'s custom-op schema lacks {', '.join(unknown)}")
    fast = _plain_cpu_eager(args)
    if fast is not None:
        # The eager CPU fast path: the backend function straight from the normalised kwargs (what
        # `impl` would hand it after the schema-list round trip), without the dispatcher and
        # autograd-wrapper round trip (tens of µs per call, as much as a small op's whole work).
        # Only when nothing traces, fakes or needs a gradient; eager validation already checked
        # host data (r3hf._validate), so CPU values need no second look (impl's `_checked`).
        kwargs, inputs = fast
        out = getattr(_dispatch.load(backend)[0], name)(**kwargs)
        return _unalias(out, inputs, op.outputs)
    full = {k: _DEFAULTS.get(k) for k in op.names if k in _DEFAULTS}
    full.update({k: val for k, val in args.items() if k != "group"})
    values = [_schema_arg(full.get(k)) for k in op.names]
    if _plain_eager(values):
        # Same kernel, without the dispatcher and autograd-wrapper round trip (tens of µs per call,
        # as much as a small op's whole work): only when nothing traces, fakes or needs a gradient.
        # Eager validation already checked host data (r3hf._validate): CPU values need no second look.
        on_cpu = all(t.device.type == "cpu" for t in values if isinstance(t, torch.Tensor))
        return _EAGER[name](*values, backend, _checked=on_cpu)
    return getattr(getattr(torch.ops, NAMESPACE), name)(*values, backend)


def _unalias(out, inputs, n_out: int):
    """A custom op's outputs may not alias its inputs: an output sharing an input's memory is cloned."""
    outs = out if isinstance(out, tuple) else (out,)
    ptrs = {t.data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
    outs = tuple(o.clone() if o.numel() and o.data_ptr() in ptrs else o for o in outs)
    return outs if n_out > 1 else outs[0]


_SCALARS = frozenset({float, int, bool, str, tuple, type(None)})


def _plain_cpu_eager(args: dict):
    """Eager, CPU only, plain tensors, no gradient wanted -> (the backend's kwargs: options at their
    default and `group` dropped, as `impl` hands them; the input tensors), else None. One pass."""
    if torch.compiler.is_compiling():
        return None
    grad = torch.is_grad_enabled()
    kwargs, tensors = {}, []
    for k, t in args.items():
        if type(t) is torch.Tensor:
            if not t.is_cpu or (grad and t.requires_grad):
                return None
            tensors.append(t)
        elif type(t) not in _SCALARS and isinstance(t, torch.Tensor):  # a subclass (fake, functional...)
            return None
        elif k == "group" or _is_default(k, t):
            continue
        kwargs[k] = t
    return kwargs, tensors


def _plain_eager(values) -> bool:
    if torch.compiler.is_compiling():
        return False
    grad = torch.is_grad_enabled()
    for t in values:
        if isinstance(t, torch.Tensor):
            if type(t) is not torch.Tensor or t.device.type == "meta" or (grad and t.requires_grad):
                return False
    return True


_EAGER: dict = {}
_KNOWN: dict = {}  # op -> the argument names `call` accepts (its schema's, and `group`)


for _name in OPS:
    _define(_name)
