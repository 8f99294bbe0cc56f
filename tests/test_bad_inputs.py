"""The bad-input table: every public function, every tensor argument given a wrong dtype,
a wrong shape, an empty dimension, non-finite values, non-contiguous strides, another
device and a non-tensor. Each call must either raise a clear exception (TypeError,
ValueError, RuntimeError or NotImplementedError whose message names the function) or
return a result (equal to the contiguous result for the stride case) — never crash,
hang, raise something else, or modify an input it does not document modifying."""

import math

import pytest
import torch

import kernkit

ALLOWED = (TypeError, ValueError, RuntimeError, NotImplementedError)


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def _r(*shape, seed=0):
    return torch.randn(*shape, generator=_g(seed))


def _cu(*offsets):
    return torch.tensor(offsets, dtype=torch.int32)


def _ternary():
    packed, scale = kernkit.ternary_quantize(_r(5, 9, seed=3))
    return packed, scale


def _binary():
    packed, alpha = kernkit.binary_quantize(_r(5, 9, seed=4))
    return packed, alpha


# name -> (function, valid keyword arguments builder, names the function may modify, error prefix)
TABLE = {
    "rms_norm": (kernkit.rms_norm, lambda: dict(x=_r(4, 8), weight=_r(8), eps=1e-6), ()),
    "flash_attn": (kernkit.flash_attn, lambda: dict(q=_r(1, 5, 2, 8), k=_r(1, 6, 1, 8), v=_r(1, 6, 1, 8),
                                                    causal=True, window=(3, -1), sinks=1), ()),
    "flash_attn_varlen": (kernkit.flash_attn_varlen,
                          lambda: dict(q=_r(7, 2, 8), k=_r(9, 1, 8), v=_r(9, 1, 8), cu_seqlens_q=_cu(0, 3, 7),
                                       cu_seqlens_k=_cu(0, 4, 9), max_seqlen_q=4, max_seqlen_k=5, causal=True), ()),
    "flash_attn_with_kvcache": (kernkit.flash_attn_with_kvcache,
                                lambda: dict(q=_r(2, 1, 2, 8), k_cache=_r(2, 10, 1, 8), v_cache=_r(2, 10, 1, 8),
                                             cache_seqlens=torch.tensor([3, 5], dtype=torch.int32),
                                             k=_r(2, 1, 1, 8), v=_r(2, 1, 1, 8), causal=True),
                                ("k_cache", "v_cache")),
    "linear_attn": (kernkit.linear_attn,
                    lambda: dict(q=_r(1, 9, 2, 8), k=_r(1, 9, 2, 8), v=_r(1, 9, 2, 4),
                                 g=-torch.rand(1, 9, 2, generator=_g(1)), initial_state=_r(1, 2, 8, 4),
                                 output_final_state=True), ()),
    "linear_attn_step": (kernkit.linear_attn_step,
                         lambda: dict(q=_r(1, 2, 8), k=_r(1, 2, 8), v=_r(1, 2, 4), state=_r(1, 2, 8, 4),
                                      g=-torch.rand(1, 2, generator=_g(1))), ()),
    "linear_scan": (kernkit.linear_scan,
                    lambda: dict(a=torch.rand(2, 9, 3, generator=_g(1)), b=_r(2, 9, 3), initial_state=_r(2, 3)), ()),
    "causal_conv1d": (kernkit.causal_conv1d,
                      lambda: dict(x=_r(2, 3, 9), weight=_r(3, 4), bias=_r(3), initial_state=_r(2, 3, 3),
                                   activation="silu", return_final_state=True), ()),
    "selective_scan": (kernkit.selective_scan,
                       lambda: dict(u=_r(1, 3, 9), delta=_r(1, 3, 9), A=-torch.rand(3, 4, generator=_g(2)),
                                    B=_r(1, 4, 9), C=_r(1, 4, 9), D=_r(3), z=_r(1, 3, 9), delta_bias=_r(3),
                                    delta_softplus=True, initial_state=_r(1, 3, 4), return_last_state=True), ()),
    "ternary_quantize": (kernkit.ternary_quantize, lambda: dict(w=_r(5, 9)), ()),
    "ternary_pack": (kernkit.ternary_pack, lambda: dict(w_q=torch.randint(-1, 2, (5, 9), generator=_g(5))), ()),
    "ternary_unpack": (kernkit.ternary_unpack, lambda: dict(packed=_ternary()[0], shape=(5, 9)), ()),
    "ternary_linear": (kernkit.ternary_linear,
                       lambda: dict(x=_r(3, 9), packed=_ternary()[0], scale=_ternary()[1], bias=_r(5)), ()),
    "binary_quantize": (kernkit.binary_quantize, lambda: dict(w=_r(5, 9)), ()),
    "binary_pack": (kernkit.binary_pack, lambda: dict(signs=_r(5, 9)), ()),
    "binary_unpack": (kernkit.binary_unpack, lambda: dict(packed=_binary()[0], shape=(5, 9)), ()),
    "binary_linear": (kernkit.binary_linear,
                      lambda: dict(x=_r(3, 9), packed=_binary()[0], alpha=_binary()[1], bias=_r(5)), ()),
}


def _mutations(t: torch.Tensor):
    """(label, tensor or other value) replacements for one tensor argument."""
    out = []
    if t.is_floating_point():
        out += [("int32", t.to(torch.int32)), ("bool", t > 0), ("nan", torch.full_like(t, math.nan)),
                ("inf", torch.full_like(t, math.inf)), ("complex", t.to(torch.complex64))]
    else:
        out += [("float", t.float()), ("int64", t.long()) if t.dtype != torch.int64 else ("int16", t.short())]
    out += [("extra-dim", t.unsqueeze(0)), ("scalar", t.reshape(-1)[:1].reshape(()) if t.numel() else t.sum())]
    if t.dim() >= 1:
        out += [("last+1", torch.cat([t, t.narrow(-1, 0, 1)], -1) if t.shape[-1] else t),
                ("flat", t.reshape(-1))]
        for d in range(t.dim()):
            out.append((f"empty-dim{d}", t.narrow(d, 0, 0)))
    if t.dim() >= 2 and t.shape[-1] > 1 and t.shape[-2] > 1:
        out.append(("strided", t.transpose(-1, -2).contiguous().transpose(-1, -2)))
    out += [("meta", t.to("meta")), ("list", t.tolist()), ("none", None)]
    return out


def _cases():
    for name, (fn, make, _) in TABLE.items():
        for arg, value in make().items():
            if isinstance(value, torch.Tensor):
                for label, _ in _mutations(value):
                    yield pytest.param(name, arg, label, id=f"{name}-{arg}-{label}")


def _clone(v):
    return v.clone() if isinstance(v, torch.Tensor) else v


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b) or (
            a.dtype.is_floating_point and torch.allclose(a, b, atol=1e-5, rtol=1e-4, equal_nan=True))
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("name,arg,label", list(_cases()))
def test_bad_input_table(name, arg, label):
    fn, make, may_modify = TABLE[name]
    kwargs = make()
    bad = dict(_mutations(kwargs[arg]))[label]
    kwargs[arg] = bad
    before = {k: _clone(v) for k, v in kwargs.items() if isinstance(v, torch.Tensor) and v.device.type != "meta"}
    try:
        result = fn(**kwargs)
    except ALLOWED as e:
        assert name in str(e), f"{type(e).__name__} does not name {name}: {e}"
    else:
        if label == "strided":   # a layout change must not change the answer
            good = make()
            assert _same(result, fn(**good)), "non-contiguous input changed the result"
    for k, v in before.items():
        if k not in may_modify:
            assert torch.equal(kwargs[k], v) or (v.is_floating_point() and torch.equal(kwargs[k].isnan(), v.isnan())
                                                 and torch.equal(kwargs[k].nan_to_num(), v.nan_to_num())), \
                f"{k} was modified"


@pytest.mark.parametrize("name", sorted(TABLE))
def test_valid_calls_in_the_table_succeed(name):
    fn, make, _ = TABLE[name]
    fn(**make())   # the table's baseline must be a valid call, or the mutations prove nothing
