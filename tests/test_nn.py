import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import kernkit
from helpers import check_module_on_cuda_kernels, on_cpu_kernels
from kernkit.nn import MambaMixer, MinGRU, MultiheadFlashAttention, RMSNorm, apply_rotary
from kernkit.reference import flash_attn_ref, linear_scan_ref


def test_rms_norm_module_matches_functional():
    m = RMSNorm(32)
    x = torch.randn(3, 32)
    torch.testing.assert_close(m(x), kernkit.rms_norm(x, m.weight.detach()))


def test_attention_module_against_reference_and_cache():
    torch.manual_seed(0)
    att = MultiheadFlashAttention(64, 8, 2, window=(5, -1), sinks=1)
    x = torch.randn(2, 12, 64)
    y = att(x)
    B, S = 2, 12
    q, k, v = att.qkv(x).split([64, 16, 16], -1)
    pos = torch.arange(S)
    q = apply_rotary(q.view(B, S, 8, 8), pos)
    k = apply_rotary(k.view(B, S, 2, 8), pos)
    o, _ = flash_attn_ref(q, k, v.view(B, S, 2, 8), causal=True, window=(5, -1), sinks=1)
    torch.testing.assert_close(y, att.out(o.reshape(B, S, 64)), rtol=1e-5, atol=1e-5)
    cache = att.new_cache(B, 20)
    steps = [att(x[:, :5], cache)] + [att(x[:, i:i + 1], cache) for i in range(5, S)]
    torch.testing.assert_close(torch.cat(steps, 1), y, rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert att.qkv.weight.grad is not None


def test_mamba_mixer_streaming_equals_full_and_trains():
    torch.manual_seed(1)
    m = MambaMixer(32)
    x = torch.randn(2, 30, 32)
    y = m(x)
    a, st = m(x[:, :11], return_state=True)
    b = m(x[:, 11:], st)
    torch.testing.assert_close(torch.cat([a, b], 1), y, rtol=1e-5, atol=1e-5)
    y.square().mean().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_mingru_matches_sequential():
    torch.manual_seed(2)
    g = MinGRU(16, 24)
    x = torch.randn(3, 9, 16)
    gate, cand = g.proj(x).chunk(2, -1)
    z = torch.sigmoid(gate)
    torch.testing.assert_close(g(x), linear_scan_ref(1 - z, z * cand), rtol=1e-5, atol=1e-6)


def test_modules_compile_and_state_dict():
    torch.manual_seed(3)
    att = MultiheadFlashAttention(32, 4, 4)
    x = torch.randn(1, 8, 32)
    f = torch.compile(att, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(f(x), att(x))
    again = MultiheadFlashAttention(32, 4, 4)
    again.load_state_dict(att.state_dict())
    torch.testing.assert_close(again(x), att(x))


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_eager_fast_path_yields_to_modes_and_autograd():
    x, w = torch.randn(4, 16), torch.randn(16)
    fast = kernkit.rms_norm(x, w)  # plain eager: runs the kernel directly
    with _Recorder() as rec:
        slow = kernkit.rms_norm(x, w)
    assert any("kernkit.rms_norm_fwd" in op for op in rec.ops), rec.ops
    assert torch.equal(fast, slow)
    xr = x.clone().requires_grad_()
    assert kernkit.rms_norm(xr, w).grad_fn is not None


def test_demo_runs():
    r = subprocess.run([sys.executable, "-m", "kernkit.demo", "--steps", "3", "--tokens", "8", "--batch", "4"],
                       capture_output=True, text=True, timeout=300, cwd="/")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "final loss" in r.stdout and "speedup" in r.stdout


@pytest.mark.parametrize("gate", ["gla", "scalar", "retnet", "none"])
def test_linear_attention_layer_streams(gate):
    torch.manual_seed(0)
    layer = kernkit.nn.LinearAttention(64, 4, gate=gate)
    x = torch.randn(2, 50, 64)
    y, state = layer(x)
    assert y.shape == (2, 50, 64) and state.shape == (2, 4, 16, 16)
    y1, s1 = layer(x[:, :31])
    y2, s2 = layer(x[:, 31:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s2, state, rtol=1e-4, atol=1e-4)
    y.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


def test_linear_attention_layer_bad_gate():
    with pytest.raises(ValueError, match="gate"):
        kernkit.nn.LinearAttention(64, 4, gate="mamba")


# Every module: state_dict round trip, torch.compile(fullgraph), bf16 autocast (forward and
# backward), and .to(bfloat16).
MODULES = {
    "RMSNorm": lambda: RMSNorm(32),
    "MultiheadFlashAttention": lambda: MultiheadFlashAttention(32, 4, 2),
    "LinearAttention": lambda: kernkit.nn.LinearAttention(32, 2, gate="gla"),
    "LinearAttention-retnet": lambda: kernkit.nn.LinearAttention(32, 2, gate="retnet"),
    "MinGRU": lambda: MinGRU(32),
    "MambaMixer": lambda: MambaMixer(32, d_state=8),
    "BitLinear": lambda: kernkit.nn.BitLinear(32, 24),
}


def _module_and_input(name, seed=0):
    torch.manual_seed(seed)
    m = MODULES[name]()
    x = torch.randn(2, 11, 32, generator=torch.Generator().manual_seed(seed + 1))
    return m, x


def _out(y):
    return y[0] if isinstance(y, tuple) else y


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_state_dict_round_trip(name):
    m, x = _module_and_input(name)
    again, _ = _module_and_input(name, seed=5)
    again.load_state_dict(m.state_dict())
    assert torch.equal(_out(again(x)), _out(m(x)))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_compiles_fullgraph(name):
    m, x = _module_and_input(name)
    f = torch.compile(m, fullgraph=True, backend="aot_eager")
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    yc, ye = _out(f(xc)), _out(m(xe))
    torch.testing.assert_close(yc, ye, rtol=1e-5, atol=1e-5)
    dy = torch.randn_like(ye)
    gc = torch.autograd.grad(yc, [xc, *m.parameters()], dy, allow_unused=True)
    ge = torch.autograd.grad(ye, [xe, *m.parameters()], dy, allow_unused=True)
    for a, b in zip(gc, ge):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_autocast_bf16(name):
    m, x = _module_and_input(name)
    ref = _out(m(x))
    xg = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = _out(m(xg))
    assert torch.isfinite(y).all()
    assert (y.float() - ref).abs().max() <= 0.05 * max(1.0, ref.abs().max().item())
    y.float().square().sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_to_bfloat16(name):
    m, x = _module_and_input(name)
    # reference: fp32 compute on the bf16-rounded parameters and input (BitLinear's ternary
    # rounding is discontinuous, so rounding the weights alone may flip a weight)
    m.to(torch.bfloat16).float()
    x = x.to(torch.bfloat16).float()
    ref = _out(m(x))
    y = _out(m.to(torch.bfloat16)(x.to(torch.bfloat16)))
    assert y.dtype == torch.bfloat16
    assert (y.float() - ref).abs().max() <= 0.05 * max(1.0, ref.abs().max().item())


def test_recurrent_modules_run_on_cuda_kernels(gpu):
    # MambaMixer (causal_conv1d + selective_scan), MinGRU (linear_scan) and BitLinear through the CUDA
    # kernels: the same outputs and parameter gradients as through the CPU kernels
    from kernkit.nn import BitLinear

    torch.manual_seed(0)
    cases = [(MambaMixer(32, d_state=8), torch.randn(2, 10, 32)), (MinGRU(16, 32), torch.randn(2, 9, 16)),
             (BitLinear(24, 20), torch.randn(3, 24))]
    for module, x in cases:
        check_module_on_cuda_kernels(module, x, gpu.device)
    if gpu.session:
        kernels = {k.split("<")[0] for k in gpu.session.kernels}
        assert {"ss_fwd_kernel", "ss_bwd_kernel", "conv_fwd_kernel", "linear_scan_kernel",
                "ternary_gemv_kernel"} <= kernels


def test_demo_model_on_cuda_kernels(gpu):
    # the demo's TinyLM (attention + Mamba blocks, BitLinear MLPs): a training step and KV-cache /
    # streaming-state decode through the CUDA kernels give the CPU kernels' results
    import copy

    from kernkit.demo import KernkitOps, TinyLM, generate

    torch.manual_seed(0)
    model = TinyLM(dim=64)
    x = torch.randint(0, 256, (2, 12))
    cpu_mod, dev_mod = copy.deepcopy(model), copy.deepcopy(model).to(gpu.device)

    def step(m, tokens):
        logits, _ = m(tokens, KernkitOps)
        torch.nn.functional.cross_entropy(logits.reshape(-1, 256), tokens.roll(-1, 1).reshape(-1)).backward()
        return logits

    ref = on_cpu_kernels(lambda: step(cpu_mod, x))
    got = step(dev_mod, x.to(gpu.device))
    torch.testing.assert_close(got.cpu(), ref.detach(), rtol=1e-3, atol=1e-3)
    for (name, p), (_, pc) in zip(dev_mod.named_parameters(), cpu_mod.named_parameters()):
        torch.testing.assert_close(p.grad.cpu(), pc.grad, rtol=1e-2, atol=1e-3, msg=name)
    text_ref = on_cpu_kernels(lambda: generate(cpu_mod, KernkitOps, b"def f(", 4)[0])
    assert generate(dev_mod, KernkitOps, b"def f(", 4)[0] == text_ref
