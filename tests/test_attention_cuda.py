"""kernkit's CUDA attention kernels (forward and backward), run under simt (three schedules, race checker on) and
on a GPU when there is one (the `gpu` fixture): every mask and option, each head-dim config, the
three dtypes, odd lengths, GQA, varlen with empty sequences, kvcache decode, lse, the diagonal
shift ring attention uses, unaligned rows. Sizes are what simt affords."""

import pytest
import torch

import kernkit
from kernkit.reference import flash_attn_ref, flash_attn_varlen_ref
from helpers import assert_within_ref_error, max_err, on_cpu_kernels
from test_attention import BWD_MASKS, MASKS, _grads, _qkv, _shifted_attn, _varlen_inputs, check_kvcache_backward

MASK_IDS = lambda kw: "-".join(f"{a}={b}" for a, b in kw.items()) or "full"

# (B, Sq, Sk, Hq, Hkv, D, Dv)
SHAPES = [
    (2, 17, 17, 4, 4, 64, 64),
    (1, 59, 127, 4, 1, 40, 40),      # MQA, Sq < Sk, D padded to the 64 config
    (2, 127, 59, 4, 2, 64, 48),      # Sq > Sk (rows with nothing visible under causal), Dv != D
    (1, 1, 300, 4, 2, 128, 128),     # decode-shaped
]


def _run(gpu, fn, *tensors, **kw):
    return fn(*(t.to(gpu.device) if isinstance(t, torch.Tensor) else t for t in tensors), **kw)


def _check_fwd(gpu, q, k, v, kw, lse=True):
    out = _run(gpu, kernkit.flash_attn, q, k, v, **kw).cpu()
    exact, lse_exact = flash_attn_ref(q.double(), k.double(), v.double(), **kw)
    same, _ = flash_attn_ref(q, k, v, **kw)
    assert out.dtype == q.dtype and out.shape == exact.shape
    assert_within_ref_error(out, exact, same)
    if lse and kw.get("activation", "softmax") == "softmax":
        _, got = _run(gpu, kernkit.flash_attn, q, k, v, return_lse=True, **kw)
        got = got.cpu()
        assert got.shape == (q.shape[0], q.shape[2], q.shape[1])
        finite = torch.isfinite(lse_exact)
        assert torch.equal(torch.isfinite(got), finite)
        assert max_err(got[finite], lse_exact[finite]) < 1e-3
    return out


@pytest.mark.parametrize("kw", MASKS, ids=MASK_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_bf16(gpu, shape, kw):
    _check_fwd(gpu, *_qkv(shape, torch.bfloat16), kw)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("kw", MASKS, ids=MASK_IDS)
@pytest.mark.parametrize("shape", SHAPES[1:3], ids=str)
def test_forward_fp16_fp32(gpu, shape, kw, dtype):
    _check_fwd(gpu, *_qkv(shape, dtype), kw)


@pytest.mark.parametrize("d, dv", [(8, 8), (32, 32), (36, 20), (64, 64), (96, 96), (128, 64), (160, 160), (192, 192),
                                   (256, 256), (100, 256)])
def test_head_dim_configs(gpu, d, dv):
    # every config (64/128/256), dims padded into them, Dv != D, rows not 16-byte aligned (36, 20, 100)
    kw = dict(causal=True, window=(20, -1), sinks=2)
    _check_fwd(gpu, *_qkv((1, 70, 90, 2, 1, d, dv), torch.bfloat16), kw)
    _check_fwd(gpu, *_qkv((1, 9, 33, 2, 2, d, dv), torch.float32), kw, lse=False)


@pytest.mark.parametrize("s", [1, 17, 59, 127, 500])
def test_lengths(gpu, s):
    _check_fwd(gpu, *_qkv((1, s, s + 3, 2, 1, 64, 64), torch.bfloat16), dict(causal=True, window=(100, -1), sinks=4))


def test_long_window_skips_tiles(gpu):
    # a window of 64 over 500 keys: each block visits its sink tile and at most 3 window tiles
    _check_fwd(gpu, *_qkv((1, 500, 500, 1, 1, 64, 64), torch.float16), dict(causal=True, window=(64, -1), sinks=5))


def test_rows_with_no_visible_key(gpu):
    q, k, v = _qkv((1, 80, 8, 2, 2, 64, 64), torch.bfloat16)
    out, lse = _run(gpu, kernkit.flash_attn, q, k, v, causal=True, return_lse=True)
    assert torch.all(out[:, :72].cpu() == 0) and torch.all(torch.isneginf(lse[:, :, :72].cpu()))
    assert torch.isfinite(lse[:, :, 72:].cpu()).all()


def test_sigmoid_per_head_bias(gpu):
    q, k, v = _qkv((2, 40, 70, 4, 2, 64, 64), torch.bfloat16)
    bias = torch.tensor([-1.0, 0.5, -3.0, 2.0])
    kw = dict(activation="sigmoid", causal=True, window=(30, -1), sinks=1)
    out = _run(gpu, kernkit.flash_attn, q, k, v, sigmoid_bias=bias, **kw).cpu()
    exact, _ = flash_attn_ref(q.double(), k.double(), v.double(), sigmoid_bias=bias.double(), **kw)
    same, _ = flash_attn_ref(q, k, v, sigmoid_bias=bias, **kw)
    assert_within_ref_error(out, exact, same)


@pytest.mark.parametrize("shift", [-75, -9, 13, 90])
def test_diag_shift(gpu, shift):
    kw = dict(causal=True, window=(9, -1), sinks=3)
    q, k, v = _qkv((2, 40, 70, 2, 1, 64, 64), torch.bfloat16)
    out, lse = _run(gpu, _shifted_attn, q, k, v, shift, kw)
    exact, lse_exact = flash_attn_ref(q.double(), k.double(), v.double(), diag_shift=shift, **kw)
    same, _ = flash_attn_ref(q, k, v, diag_shift=shift, **kw)
    assert_within_ref_error(out.cpu(), exact, same)
    assert torch.equal(torch.isfinite(lse.cpu()), torch.isfinite(lse_exact))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("kw", [dict(), dict(causal=True), dict(causal=True, window=(5, -1), sinks=1),
                                dict(activation="sigmoid", causal=True)], ids=str)
def test_varlen_with_empty_sequences(gpu, kw, dtype):
    lens_q, lens_k = [5, 0, 1, 70, 17], [9, 3, 0, 70, 130]
    q, k, v, cq, ck = _varlen_inputs(lens_q, lens_k, D=64, dtype=dtype)
    out, lse = _run(gpu, kernkit.flash_attn_varlen, q, k, v, cq, ck, max(lens_q), max(lens_k),
                    return_lse=kw.get("activation") != "sigmoid", **kw) if kw.get("activation") != "sigmoid" else \
        (_run(gpu, kernkit.flash_attn_varlen, q, k, v, cq, ck, max(lens_q), max(lens_k), **kw), None)
    exact, lse_exact = flash_attn_varlen_ref(q.double(), k.double(), v.double(), cq, ck, **kw)
    same, _ = flash_attn_varlen_ref(q, k, v, cq, ck, **kw)
    assert_within_ref_error(out.cpu(), exact, same)
    if lse is not None:
        fin = torch.isfinite(lse_exact)
        assert torch.equal(torch.isfinite(lse.cpu()), fin)
        assert max_err(lse.cpu()[fin], lse_exact[fin]) < 1e-3


@pytest.mark.parametrize("kw", [dict(causal=True), dict(causal=True, window=(30, -1), sinks=4),
                                dict(activation="sigmoid", causal=True)], ids=str)
@pytest.mark.parametrize("sq", [1, 3])
def test_kvcache_append_and_decode(gpu, sq, kw):
    B, cap, Hq, Hkv, D = 3, 200, 8, 2, 64
    g = torch.Generator().manual_seed(1)
    mk = lambda *s: torch.randn(*s, generator=g).to(torch.bfloat16).to(gpu.device)
    k_cache, v_cache = mk(B, cap, Hkv, D), mk(B, cap, Hkv, D)
    q, k_new, v_new = mk(B, sq, Hq, D), mk(B, sq, Hkv, D), mk(B, sq, Hkv, D)
    lens = torch.tensor([0, 57, 150], dtype=torch.int32, device=gpu.device)
    k_before = k_cache.clone()
    out = kernkit.flash_attn_with_kvcache(q, k_cache, v_cache, lens, k=k_new, v=v_new, **kw).cpu()
    for b in range(B):
        n = int(lens[b])
        assert torch.equal(k_cache[b, n:n + sq], k_new[b]) and torch.equal(v_cache[b, n:n + sq], v_new[b])
        assert torch.equal(k_cache[b, :n], k_before[b, :n])
        args = [t.cpu() for t in (q[b:b + 1], k_cache[b:b + 1, :n + sq], v_cache[b:b + 1, :n + sq])]
        exact, _ = flash_attn_ref(*(t.double() for t in args), **kw)
        same, _ = flash_attn_ref(*args, **kw)
        assert_within_ref_error(out[b:b + 1], exact, same)


@pytest.mark.parametrize("kw", [dict(causal=True), dict(causal=True, window=(100, -1), sinks=4),
                                dict(window=(30, 0), sinks=200), dict(activation="sigmoid", causal=True),
                                dict(softcap=3.0, causal=True)], ids=str)
@pytest.mark.parametrize("sq", [1, 3])
def test_split_kv_decode(gpu, sq, kw):
    # few query tiles and a long cache: the key axis is split across blocks and the partials merged
    # through their lse (some splits see no key under the window)
    g = torch.Generator().manual_seed(sq)
    B, L, Hq, Hkv, D = 2, 1000, 4, 1, 64
    mk = lambda *s: torch.randn(*s, generator=g).to(torch.float16)
    q, kc, vc = mk(B, sq, Hq, D), mk(B, L, Hkv, D), mk(B, L, Hkv, D)
    lens = torch.tensor([1000, 613], dtype=torch.int32)
    out = kernkit.flash_attn_with_kvcache(q.to(gpu.device), kc.to(gpu.device), vc.to(gpu.device),
                                         lens.to(gpu.device), **kw)
    lse = None
    if kw.get("activation") != "sigmoid":
        _, lse = kernkit.flash_attn_with_kvcache(q.to(gpu.device), kc.to(gpu.device), vc.to(gpu.device),
                                                 lens.to(gpu.device), return_lse=True, **kw)
    for b in range(B):
        n = int(lens[b])
        exact, lse_exact = flash_attn_ref(q[b:b + 1].double(), kc[b:b + 1, :n].double(), vc[b:b + 1, :n].double(), **kw)
        same, _ = flash_attn_ref(q[b:b + 1], kc[b:b + 1, :n], vc[b:b + 1, :n], **kw)
        assert_within_ref_error(out[b:b + 1].cpu(), exact, same)
        if lse is not None:
            assert max_err(lse[b:b + 1].cpu(), lse_exact) < 1e-3
    if gpu.session:
        assert any(k.startswith("split_combine_kernel") for k in gpu.session.kernels)


@pytest.mark.parametrize("shape", [(2, 1, 300, 16, 1, 64, 64), (1, 2, 200, 8, 1, 256, 256), (2, 1, 150, 4, 4, 36, 20),
                                   (1, 5, 260, 6, 2, 128, 128), (1, 3, 100, 8, 1, 64, 64)], ids=str)
@pytest.mark.parametrize("kw", [dict(causal=True, window=(70, -1), sinks=3), dict(activation="sigmoid", causal=True),
                                dict(softcap=2.0)], ids=str)
def test_packed_gqa_decode(gpu, shape, kw):
    # Sq * group <= 16 packs a kv head's query rows into one tile (the last shape, 24 rows, does not)
    q, k, v = _qkv(shape, torch.bfloat16)
    if kw.get("activation") == "sigmoid":
        kw = dict(kw, sigmoid_bias=torch.linspace(-3, 1, shape[3]))
    out = _run(gpu, kernkit.flash_attn, q, k, v, **kw).cpu()
    ref_kw = {a: (b.double() if isinstance(b, torch.Tensor) else b) for a, b in kw.items()}
    exact, lse_exact = flash_attn_ref(q.double(), k.double(), v.double(), **ref_kw)
    same, _ = flash_attn_ref(q, k, v, **kw)
    assert_within_ref_error(out, exact, same)
    if "activation" not in kw:
        _, lse = _run(gpu, kernkit.flash_attn, q, k, v, return_lse=True, **kw)
        assert max_err(lse.cpu(), lse_exact) < 1e-3
    if gpu.session:
        packed = shape[1] * shape[3] // shape[4] <= 16
        assert any(k.startswith("flash_decode_kernel") for k in gpu.session.kernels) == packed


def test_strided_and_unaligned_inputs(gpu):
    # q a head slice of a wider tensor (row stride != H*D), k/v starting one element into their storage
    g = torch.Generator().manual_seed(4)
    big = torch.randn(2, 33, 6, 64, generator=g).to(torch.bfloat16)
    q = big[:, :, 1:5]
    kv = torch.randn(2 * 45 * 2 * 64 + 1, generator=g).to(torch.bfloat16)
    k = kv[1:].view(2, 45, 2, 64)
    v = torch.randn(2, 45, 2, 64, generator=g).to(torch.bfloat16)
    _check_fwd(gpu, q, k, v, dict(causal=True))
    if gpu.kind != "cuda":   # CPU storage: the unaligned views reach the kernel unchanged
        assert k.data_ptr() % 16 != 0


def test_deterministic_and_inputs_untouched(gpu):
    q, k, v = (t.to(gpu.device) for t in _qkv((1, 70, 70, 2, 1, 64, 64), torch.bfloat16))
    before = [t.clone() for t in (q, k, v)]
    a = kernkit.flash_attn(q, k, v, causal=True, window=(20, -1), sinks=2)
    b = kernkit.flash_attn(q, k, v, causal=True, window=(20, -1), sinks=2)
    assert torch.equal(a, b)
    assert all(torch.equal(x, y) for x, y in zip((q, k, v), before))


def test_float64_is_a_clear_error(gpu):
    q, k, v = (t.to(gpu.device) for t in _qkv((1, 8, 8, 2, 2, 32, 32), torch.float64))
    with pytest.raises(TypeError, match="float64"):
        kernkit.flash_attn(q, k, v)


# ----------------------------------------------------------------------------------- backward

def _check_bwd(gpu, q, k, v, kw, fn=None, ref=None, seed=3):
    fn = fn or (lambda a, b, c: kernkit.flash_attn(a, b, c, **kw))
    ref = ref or (lambda a, b, c: flash_attn_ref(a, b, c, **kw)[0])
    dout = torch.randn(q.shape[:-1] + (v.shape[-1],), generator=torch.Generator().manual_seed(seed)).to(q.dtype)
    got = [t.cpu() for t in _grads(fn, [t.to(gpu.device) for t in (q, k, v)], dout.to(gpu.device))]
    exact = _grads(ref, [q.double(), k.double(), v.double()], dout.double())
    same = _grads(ref, [q, k, v], dout)
    for name, g, e, s in zip("qkv", got, exact, same):
        assert g.dtype == q.dtype
        assert_within_ref_error(g, e, s, factor=3.0, what=f"d{name}")
    return got


@pytest.mark.parametrize("kw", BWD_MASKS, ids=MASK_IDS)
@pytest.mark.parametrize("shape", [(1, 17, 17, 2, 1, 32, 32), (2, 70, 130, 4, 2, 64, 40), (1, 130, 70, 2, 2, 128, 128),
                                   (1, 1, 90, 4, 1, 64, 64)], ids=str)
def test_backward_bf16(gpu, shape, kw):
    _check_bwd(gpu, *_qkv(shape, torch.bfloat16), kw)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("kw", BWD_MASKS, ids=MASK_IDS)
def test_backward_fp16_fp32(gpu, kw, dtype):
    _check_bwd(gpu, *_qkv((2, 40, 70, 4, 2, 64, 40), dtype), kw)


@pytest.mark.parametrize("d, dv", [(8, 8), (36, 20), (96, 96), (128, 64), (192, 192), (256, 256), (100, 256)])
def test_backward_head_dim_configs(gpu, d, dv):
    kw = dict(causal=True, window=(20, -1), sinks=2)
    _check_bwd(gpu, *_qkv((1, 70, 90, 2, 1, d, dv), torch.bfloat16), kw)
    _check_bwd(gpu, *_qkv((1, 9, 20, 2, 1, d, dv), torch.float32), kw)


def test_backward_long_window(gpu):
    # a 64-key window over 300 keys: dq blocks visit their sink tile and the window's tiles, dkdv blocks
    # only the query steps that see them
    _check_bwd(gpu, *_qkv((1, 300, 300, 1, 1, 64, 64), torch.bfloat16), dict(causal=True, window=(64, -1), sinks=5))


def test_backward_rows_with_no_visible_key(gpu):
    q, k, v = _qkv((1, 80, 8, 2, 2, 64, 64), torch.bfloat16)
    dq, dk, dv = _check_bwd(gpu, q, k, v, dict(causal=True))
    assert torch.all(dq[:, :72] == 0) and all(torch.isfinite(t).all() for t in (dq, dk, dv))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_backward_sigmoid_bias_gradient(gpu, dtype):
    q, k, v = _qkv((2, 70, 45, 4, 2, 64, 64), dtype)
    kw = dict(activation="sigmoid", causal=True, window=(30, -1), sinks=1)
    bias0 = torch.tensor([-1.0, 0.5, -3.0, 2.0])
    dout = torch.randn(2, 70, 4, 64, generator=torch.Generator().manual_seed(2)).to(dtype)

    def run(dev, fn, cast):
        ins = [cast(t).to(dev).detach().clone().requires_grad_() for t in (q, k, v)]
        bias = (bias0.double() if cast is torch.Tensor.double else bias0).to(dev).detach().clone().requires_grad_()
        fn(*ins, sigmoid_bias=bias).backward(cast(dout).to(dev))
        return [t.grad.cpu() for t in ins] + [bias.grad.cpu()]

    got = run(gpu.device, lambda *a, **o: kernkit.flash_attn(*a, **o, **kw), lambda t: t)
    exact = run("cpu", lambda *a, **o: flash_attn_ref(*a, **o, **kw)[0], torch.Tensor.double)
    same = run("cpu", lambda *a, **o: flash_attn_ref(*a, **o, **kw)[0], lambda t: t)
    for name, g, e, s in zip(["dq", "dk", "dv", "dbias"], got, exact, same):
        assert_within_ref_error(g, e, s, factor=3.0, what=name)


@pytest.mark.parametrize("shift", [-30, 13])
def test_backward_diag_shift(gpu, shift):
    kw = dict(causal=True, window=(9, -1), sinks=3)
    _check_bwd(gpu, *_qkv((2, 40, 70, 2, 1, 64, 64), torch.bfloat16), kw,
               fn=lambda a, b, c: _shifted_attn(a, b, c, shift, kw)[0],
               ref=lambda a, b, c: flash_attn_ref(a, b, c, diag_shift=shift, **kw)[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("kw", [dict(causal=True), dict(causal=True, window=(5, -1), sinks=1),
                                dict(activation="sigmoid", causal=True)], ids=str)
def test_backward_varlen_with_empty_sequences(gpu, kw, dtype):
    lens_q, lens_k = [5, 0, 1, 70, 17], [9, 3, 0, 70, 130]
    q, k, v, cq, ck = _varlen_inputs(lens_q, lens_k, D=64, dtype=dtype)
    cq_d, ck_d = cq.to(gpu.device), ck.to(gpu.device)
    _check_bwd(gpu, q, k, v, kw, fn=lambda a, b, c: kernkit.flash_attn_varlen(a, b, c, cq_d, ck_d, 70, 130, **kw),
               ref=lambda a, b, c: flash_attn_varlen_ref(a, b, c, cq, ck, **kw)[0])


def test_backward_through_kvcache_lengths(gpu):
    check_kvcache_backward(gpu.device)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_backward_deterministic_and_inputs_untouched(gpu, dtype):
    q, k, v = _qkv((2, 70, 90, 4, 2, 64, 64), dtype)
    dout = torch.randn(2, 70, 4, 64, generator=torch.Generator().manual_seed(8)).to(dtype).to(gpu.device)
    before = [t.clone() for t in (q, k, v, dout)]
    fn = lambda a, b, c: kernkit.flash_attn(a, b, c, causal=True, window=(20, -1), sinks=2, deterministic=True)
    runs = [_grads(fn, [t.to(gpu.device) for t in (q, k, v)], dout) for _ in range(2)]
    assert all(torch.equal(x, y) for x, y in zip(*runs))
    assert all(torch.equal(x.cpu(), y.cpu()) for x, y in zip((q, k, v, dout), before))


def test_nn_attention_module_trains_and_decodes(gpu):
    # the module's prefill and its KV-cache decode steps run the CUDA kernels; same as the CPU kernels
    torch.manual_seed(0)
    attn = kernkit.nn.MultiheadFlashAttention(128, 4, num_kv_heads=2, causal=True, window=(24, -1), sinks=2)
    attn = attn.to(torch.bfloat16)
    x = torch.randn(2, 40, 128).to(torch.bfloat16)

    def steps(mod, dev):
        with torch.no_grad():
            cache = mod.new_cache(2, 64, device=dev)
            outs = [mod(x[:, :30].to(dev), cache)] + [mod(x[:, i:i + 1].to(dev), cache) for i in range(30, 40)]
            return torch.cat([o.cpu() for o in outs], 1), mod(x.to(dev)).cpu()

    def train_grads(mod, dev):
        mod.zero_grad()
        mod(x.to(dev)).float().square().sum().backward()
        return [p.grad.float().cpu() for p in mod.parameters()]

    ref_dec, ref_full = on_cpu_kernels(lambda: steps(attn, "cpu"))
    ref_grads = on_cpu_kernels(lambda: train_grads(attn, "cpu"))
    got_dec, got_full = steps(attn.to(gpu.device), gpu.device)
    got_grads = train_grads(attn, gpu.device)
    assert max_err(got_full, ref_full) < 3e-2 and max_err(got_dec, ref_dec) < 3e-2
    assert max_err(got_dec, got_full) < 3e-2   # decode steps == one causal pass
    for g, r in zip(got_grads, ref_grads):
        assert max_err(g, r) <= 0.05 * r.abs().max().item()
    if gpu.session:
        names = {k.split("<")[0] for k in gpu.session.kernels}
        assert {"flash_fwd_tc_kernel", "flash_bwd_dq_kernel", "flash_bwd_dkdv_kernel"} <= names


def test_opcheck_and_compile(gpu):
    from kernkit.attention import _attn_bwd, _attn_fwd

    q, k, v = (t.to(gpu.device) for t in _qkv((1, 20, 30, 4, 2, 64, 32), torch.bfloat16))
    common = (None, None, None, 20, 30, 0.125, 0.0, 5, 0, 2, 0, None, 0.0, False, 0)
    torch.library.opcheck(_attn_fwd, (q, k, v) + common)
    bias = torch.randn(4, device=gpu.device, requires_grad=True)
    torch.library.opcheck(_attn_fwd, (q.clone().requires_grad_(), k, v, None, None, None, 20, 30, 0.125, 3.0, -1, -1,
                                      0, 1, bias, 0.0, False, -7))
    out, lse = _attn_fwd(q, k, v, *common)
    torch.library.opcheck(_attn_bwd, (torch.randn_like(out), q, k, v, out, lse) + common + (False,))
    args = [t.clone().requires_grad_() for t in (q, k, v)]

    def f(a, b, c):
        return kernkit.flash_attn(a * 1.5, b, c, causal=True, window=(8, -1), sinks=2).float().square().sum()

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    for a, b in zip(torch.autograd.grad(cf(*args), args), torch.autograd.grad(f(*args), args)):
        assert torch.equal(a, b)


def test_huge_window_bounds_and_infinite_sigmoid_bias(gpu):
    # window bounds past every distance are unbounded (no int overflow in the kernels); a +inf
    # per-head sigmoid bias gives 1 on visible keys and still 0 on masked ones
    q, k, v = _qkv((1, 40, 70, 2, 1, 64, 64), torch.bfloat16)
    big = 2 ** 31 - 1
    out = _run(gpu, kernkit.flash_attn, q, k, v, window=(big, big)).cpu()
    exact, _ = flash_attn_ref(q.double(), k.double(), v.double())
    same, _ = flash_attn_ref(q, k, v)
    assert_within_ref_error(out, exact, same)
    bias = torch.tensor([float("inf"), -1.0])
    out = _run(gpu, kernkit.flash_attn, q, k, v, causal=True, activation="sigmoid", sigmoid_bias=bias).cpu()
    exact, _ = flash_attn_ref(q.double(), k.double(), v.double(), causal=True, activation="sigmoid",
                              sigmoid_bias=bias.double())
    same, _ = flash_attn_ref(q, k, v, causal=True, activation="sigmoid", sigmoid_bias=bias)
    assert not torch.isnan(out).any()
    assert_within_ref_error(out, exact, same)


def test_kvcache_lengths_past_the_capacity_are_clamped(gpu):
    # on a GPU cache_seqlens is not range-checked on the host (no sync per decode step); the kernels
    # clamp it to [0, capacity] instead of reading past the cache
    from kernkit.attention import _attn_fwd

    q, kc, vc = _qkv((2, 1, 50, 4, 2, 64, 64), torch.bfloat16)
    used = torch.tensor([80, -3], dtype=torch.int32)
    out, lse = _run(gpu, _attn_fwd, q, kc, vc, None, None, used, 1, 50, 0.125, 0.0, -1, -1, 0, 0, None, 0.0, False, 0)
    exact, _ = flash_attn_ref(q[:1].double(), kc[:1].double(), vc[:1].double(), scale=0.125)
    same, _ = flash_attn_ref(q[:1], kc[:1], vc[:1], scale=0.125)
    assert_within_ref_error(out[:1].cpu(), exact, same)
    assert torch.all(out[1].cpu() == 0) and torch.all(torch.isneginf(lse[1].cpu()))


@pytest.mark.parametrize("interleaved", [True, False])
def test_kvcache_rotary(gpu, interleaved):
    # rotary_cos/rotary_sin through the CUDA kernels == the same call on the CPU kernels (native rotation)
    g = torch.Generator().manual_seed(9)
    B, cap, Hq, Hkv, D, rd, sq = 2, 40, 4, 2, 32, 24, 2
    mk = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    q, k, v, kc, vc = mk(B, sq, Hq, D), mk(B, sq, Hkv, D), mk(B, sq, Hkv, D), mk(B, cap, Hkv, D), mk(B, cap, Hkv, D)
    ang = torch.arange(cap, dtype=torch.float32)[:, None] * torch.rand(rd // 2, generator=g)
    cos, sin = ang.cos(), ang.sin()
    lens = torch.tensor([3, 30], dtype=torch.int32)
    dev = lambda t: t.to(gpu.device)  # noqa: E731
    kc1, vc1 = dev(kc), dev(vc)
    out = kernkit.flash_attn_with_kvcache(dev(q), kc1, vc1, dev(lens), k=dev(k), v=dev(v), causal=True,
                                          rotary_cos=dev(cos), rotary_sin=dev(sin), rotary_interleaved=interleaved)
    kc2, vc2 = kc.clone(), vc.clone()
    want = on_cpu_kernels(lambda: kernkit.flash_attn_with_kvcache(q, kc2, vc2, lens, k=k, v=v, causal=True,
                                                                  rotary_cos=cos, rotary_sin=sin,
                                                                  rotary_interleaved=interleaved))
    torch.testing.assert_close(kc1.cpu(), kc2, rtol=0, atol=0)
    torch.testing.assert_close(out.cpu(), want, rtol=2e-5, atol=2e-6)
