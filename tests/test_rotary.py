"""flash_attn_with_kvcache's rotary embedding (flash-attn's rotary_cos / rotary_sin /
rotary_interleaved): q and the new keys rotated before the append and the attention."""
import pytest
import torch

import kernkit
from kernkit.attention import _kvcache_fast


def rotate_ref(x, cos, sin, pos, interleaved):
    """Rotation in fp64, written element by element from the definition."""
    rd = 2 * cos.shape[1]
    out = x.double().clone()
    xd = x.double()
    for b in range(x.shape[0]):
        for s in range(x.shape[1]):
            c, sn = cos[pos[b][s]].double(), sin[pos[b][s]].double()
            for i in range(rd // 2):
                i0, i1 = (2 * i, 2 * i + 1) if interleaved else (i, i + rd // 2)
                x0, x1 = xd[b, s, :, i0], xd[b, s, :, i1]
                out[b, s, :, i0] = x0 * c[i] - x1 * sn[i]
                out[b, s, :, i1] = x1 * c[i] + x0 * sn[i]
    return out


def tables(n, rd, g):
    ang = torch.arange(n, dtype=torch.float32)[:, None] * torch.rand(rd // 2, generator=g)
    return ang.cos(), ang.sin()


CASES = [(True, True, 16), (False, True, 16), (True, False, 10), (False, False, 6)]  # interleaved, causal, rd


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("interleaved,causal,rd", CASES)
@pytest.mark.parametrize("n_new", [0, 1, 3])
def test_rotary_matches_rotating_first(dtype, interleaved, causal, rd, n_new):
    g = torch.Generator().manual_seed(rd + n_new)
    B, cap, Hq, Hkv, D = 3, 40, 4, 2, 16
    lens = torch.tensor([0, 7, 30], dtype=torch.int32)
    q = torch.randn(B, max(n_new, 1), Hq, D, generator=g).to(dtype)
    k = torch.randn(B, n_new, Hkv, D, generator=g).to(dtype) if n_new else None
    v = torch.randn(B, n_new, Hkv, D, generator=g).to(dtype) if n_new else None
    kc, vc = (torch.randn(B, cap, Hkv, D, generator=g).to(dtype) for _ in range(2))
    cos, sin = tables(40, rd, g)
    inputs = [t.clone() for t in (q, cos, sin, lens) + ((k, v) if n_new else ())]
    kc1, vc1 = kc.clone(), vc.clone()
    out = kernkit.flash_attn_with_kvcache(q, kc1, vc1, lens, k=k, v=v, causal=causal, rotary_cos=cos,
                                          rotary_sin=sin, rotary_interleaved=interleaved)
    steps = torch.arange(q.shape[1])
    pos_k = (lens[:, None].long() + steps).tolist()
    pos_q = pos_k if causal else lens[:, None].long().expand(B, q.shape[1]).tolist()
    q_rot = rotate_ref(q, cos, sin, pos_q, interleaved).to(dtype)
    k_rot = rotate_ref(k, cos, sin, pos_k, interleaved).to(dtype) if n_new else None
    kc2, vc2 = kc.clone(), vc.clone()
    want = kernkit.flash_attn_with_kvcache(q_rot, kc2, vc2, lens, k=k_rot, v=v, causal=causal)
    # one rounding of an fp32 (fp64) rotation: equal up to one ulp of the dtype
    tol = {torch.float32: 1e-6, torch.float64: 1e-13, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(kc1, kc2, rtol=tol, atol=tol)
    torch.testing.assert_close(vc1, vc2, rtol=0, atol=0)
    torch.testing.assert_close(out, want, rtol=4 * tol, atol=4 * tol)
    for a, b in zip(inputs, [t for t in (q, cos, sin, lens) + ((k, v) if n_new else ())]):
        assert torch.equal(a, b)  # inputs untouched


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("interleaved,causal,rd", CASES)
def test_rotary_fast_path_equals_checked_path(dtype, interleaved, causal, rd):
    # the native decode path (one C++ rotation per tensor) against the checked path's torch rotation
    g = torch.Generator().manual_seed(rd)
    B, cap, Hq, Hkv, D = 2, 30, 4, 2, 16
    lens = torch.tensor([3, 20], dtype=torch.int32)
    q = torch.randn(B, 2, Hq, D, generator=g).to(dtype)
    k, v = (torch.randn(B, 2, Hkv, D, generator=g).to(dtype) for _ in range(2))
    kc, vc = (torch.randn(B, cap, Hkv, D, generator=g).to(dtype) for _ in range(2))
    cos, sin = tables(32, rd, g)
    kw = dict(causal=causal, rotary_cos=cos, rotary_sin=sin, rotary_interleaved=interleaved)
    kc1, vc1, kc2, vc2 = kc.clone(), vc.clone(), kc.clone(), vc.clone()
    fast = _kvcache_fast(q, kc1, vc1, lens, k, v, kw)
    assert fast is not None
    slow = kernkit.flash_attn_with_kvcache(q, kc2, vc2, lens, k=k, v=v, window=(-1, -1), **kw)
    assert torch.equal(fast, slow) and torch.equal(kc1, kc2) and torch.equal(vc1, vc2)


def test_rotary_decode_steps_equal_one_prefill():
    # a prompt appended in one call, then token by token, gives the same cache as one long call
    g = torch.Generator().manual_seed(5)
    B, cap, H, D, T = 1, 24, 2, 8, 9
    cos, sin = tables(cap, D, g)
    q, k, v = (torch.randn(B, T, H, D, generator=g) for _ in range(3))
    kc1, vc1 = torch.zeros(B, cap, H, D), torch.zeros(B, cap, H, D)
    kw = dict(causal=True, rotary_cos=cos, rotary_sin=sin, rotary_interleaved=False)
    full = kernkit.flash_attn_with_kvcache(q, kc1, vc1, torch.zeros(B, dtype=torch.int32), k=k, v=v, **kw)
    kc2, vc2 = torch.zeros(B, cap, H, D), torch.zeros(B, cap, H, D)
    steps = [kernkit.flash_attn_with_kvcache(q[:, t:t + 1], kc2, vc2, torch.tensor([t], dtype=torch.int32),
                                             k=k[:, t:t + 1], v=v[:, t:t + 1], **kw) for t in range(T)]
    torch.testing.assert_close(kc1, kc2, rtol=0, atol=0)
    torch.testing.assert_close(full, torch.cat(steps, 1), rtol=1e-5, atol=1e-6)


def test_rotary_bad_arguments():
    B, cap, H, D = 1, 10, 2, 8
    q, kc, vc = torch.randn(B, 1, H, D), torch.zeros(B, cap, H, D), torch.zeros(B, cap, H, D)
    lens = torch.tensor([9], dtype=torch.int32)
    cos, sin = torch.ones(10, 4), torch.zeros(10, 4)
    with pytest.raises(ValueError, match="rotary_cos and rotary_sin"):
        kernkit.flash_attn_with_kvcache(q, kc, vc, lens, rotary_cos=cos)
    with pytest.raises(ValueError, match="rotary_sin"):
        kernkit.flash_attn_with_kvcache(q, kc, vc, lens, rotary_cos=cos, rotary_sin=sin[:, :2])
    with pytest.raises(ValueError, match="rotary_dim"):
        kernkit.flash_attn_with_kvcache(q, kc, vc, lens, rotary_cos=torch.ones(10, 5), rotary_sin=torch.ones(10, 5))
    with pytest.raises(TypeError, match="rotary_interleaved"):
        kernkit.flash_attn_with_kvcache(q, kc, vc, lens, rotary_cos=cos, rotary_sin=sin, rotary_interleaved=1)
    with pytest.raises(TypeError, match="rotary_cos"):
        kernkit.flash_attn_with_kvcache(q, kc, vc, lens, rotary_cos=cos.int(), rotary_sin=sin.int())
    # keys at positions 9 and 10 need 11 rows of the tables (given 10)
    k2 = torch.randn(B, 2, H, D)
    kc12, vc12 = torch.zeros(B, 12, H, D), torch.zeros(B, 12, H, D)
    with pytest.raises(ValueError, match="rotary_cos/rotary_sin rows"):
        kernkit.flash_attn_with_kvcache(q, kc12, vc12, lens, k=k2, v=k2, causal=True, rotary_cos=cos, rotary_sin=sin)
    assert not kc12.any()  # nothing appended on error
    kc0 = kc.clone()
    with pytest.raises(ValueError):
        kernkit.flash_attn_with_kvcache(q, kc, vc, torch.tensor([9], dtype=torch.int32), k=q, v=q, causal=True,
                                        rotary_cos=cos[:9], rotary_sin=sin[:9])
    assert torch.equal(kc, kc0)  # nothing appended on error


def test_bad_option_leaves_the_cache_untouched():
    # options are checked before the new keys are written (with and without rotary)
    B, cap, H, D = 1, 10, 2, 8
    q, k = torch.randn(B, 1, H, D), torch.randn(B, 1, H, D)
    kc, vc = torch.zeros(B, cap, H, D), torch.zeros(B, cap, H, D)
    cos, sin = torch.ones(10, 4), torch.zeros(10, 4)
    for rot in ({}, dict(rotary_cos=cos, rotary_sin=sin)):
        with pytest.raises(ValueError, match="window"):
            kernkit.flash_attn_with_kvcache(q, kc, vc, 2, k=k, v=k, window=5, **rot)
        with pytest.raises(TypeError, match="causal"):
            kernkit.flash_attn_with_kvcache(q, kc, vc, 2, k=k, v=k, causal=1, **rot)
        assert not kc.any() and not vc.any()


def test_rotary_window_rule_and_meta():
    # a window bound at or past the cache capacity is unbounded (flash-attn): q keeps one position
    g = torch.Generator().manual_seed(11)
    B, cap, H, D = 1, 12, 2, 8
    q, k = torch.randn(B, 3, H, D, generator=g), torch.randn(B, 3, H, D, generator=g)
    cos, sin = tables(cap, D, g)
    lens = torch.tensor([4], dtype=torch.int32)
    outs = []
    for window in ((-1, -1), (cap, cap + 5)):
        kc, vc = torch.zeros(B, cap, H, D), torch.zeros(B, cap, H, D)
        outs.append(kernkit.flash_attn_with_kvcache(q, kc, vc, lens, k=k, v=k, window=window, rotary_cos=cos,
                                                    rotary_sin=sin))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    kc, vc = torch.zeros(B, cap, H, D), torch.zeros(B, cap, H, D)
    local = kernkit.flash_attn_with_kvcache(q, kc, vc, lens, k=k, v=k, window=(cap - 1, -1), rotary_cos=cos,
                                           rotary_sin=sin)
    assert not torch.equal(local, outs[0])  # per-row positions for a real window
    # meta tensors: shapes only, no range checks that would read values
    m = lambda t: t.to("meta")  # noqa: E731
    out = kernkit.flash_attn_with_kvcache(m(q), m(kc), m(vc), m(lens), k=m(k), v=m(k), causal=True,
                                         rotary_cos=m(cos), rotary_sin=m(sin))
    assert out.shape == q.shape and out.device.type == "meta"
