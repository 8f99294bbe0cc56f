"""Code that runs inside the ranks spawned by test_distributed.py (gloo on loopback).
Each case returns plain data to the parent, which does the asserting."""

import datetime
import os
import queue
import socket
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import kernkit
from kernkit.distributed import gather_sequence, ring_flash_attn, shard_sequence
from kernkit.reference import flash_attn_ref


# --------------------------------------------------------------------------- spawning

def _worker(rank, world, port, case, args, results):
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=60))
        results.put((rank, "ok", CASES[case](rank, world, *args)))
    except BaseException as e:  # report every failure to the parent, never hang it
        results.put((rank, "error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:
                pass


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(world, case, *args, timeout=240):
    """Runs CASES[case](rank, world, *args) on `world` gloo ranks; returns {rank: (status, result)}.
    Ranks that report nothing within `timeout` seconds are killed and reported as 'missing'."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, case, args, results), daemon=True)
             for r in range(world)]
    for p in procs:
        p.start()
    out, deadline = {}, time.monotonic() + timeout
    while len(out) < world and time.monotonic() < deadline:
        try:
            rank, status, value = results.get(timeout=1.0)
            out[rank] = (status, value)
        except queue.Empty:
            if all(not p.is_alive() for p in procs) and results.empty():
                break
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
            p.join()
    for r in range(world):
        out.setdefault(r, ("missing", f"rank {r} reported nothing (exit code {procs[r].exitcode})"))
    return out


# --------------------------------------------------------------------------- cases

def _inputs(B, S, Hq, Hkv, D, Dv, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)
    return mk(B, S, Hq, D), mk(B, S, Hkv, D), mk(B, S, Hkv, Dv), mk(B, S, Hq, Dv)


def _err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def compare_with_single(rank, world, cases, ring_on_simt=False):
    """For each case: ring on this rank's shard vs one flash_attn call on the whole sequence
    (kernkit, same dtype) and vs the fp64 reference. Returns per-case errors. With ring_on_simt the
    ring (forward and backward) runs kernkit's CUDA kernels under simt, the comparisons the CPU ones."""
    import contextlib

    from kernkit.testing import simt
    ring_ctx = simt if ring_on_simt else contextlib.nullcontext
    report = []
    for c in cases:
        shape, dtype, layout, kw = c["shape"], c["dtype"], c["layout"], dict(c["kw"])
        q, k, v, dout = _inputs(*shape, dtype)
        bias = kw.pop("bias_tensor", None)
        if bias is not None:
            kw["sigmoid_bias"] = bias = torch.tensor(bias, dtype=torch.float32)
        full = [t.clone().requires_grad_() for t in (q, k, v)]
        fb = bias.clone().requires_grad_() if bias is not None else None
        single = kernkit.flash_attn(*full, **{**kw, **({"sigmoid_bias": fb} if fb is not None else {})})
        single.backward(dout)
        exact = flash_attn_ref(q.double(), k.double(), v.double(), **{**kw, **({"sigmoid_bias": bias.double()}
                                                                          if bias is not None else {})})[0]
        local = [shard_sequence(t, rank, world, layout=layout).clone().requires_grad_() for t in (q, k, v)]
        lb = bias.clone().requires_grad_() if bias is not None else None
        with ring_ctx() as session:
            out = ring_flash_attn(*local, layout=layout, **{**kw, **({"sigmoid_bias": lb} if lb is not None else {})})
            out.backward(shard_sequence(dout, rank, world, layout=layout))
        if ring_on_simt and out.shape[1]:
            assert any(k.startswith("flash_bwd_dkdv") for k in session.kernels), session.kernels
        sh = lambda t: shard_sequence(t, rank, world, layout=layout)
        r = dict(name=c["name"], out=_err(out, sh(single)), out_exact=_err(out, sh(exact)),
                 single_exact=_err(sh(single), sh(exact)),
                 dq=_err(local[0].grad, sh(full[0].grad)), dk=_err(local[1].grad, sh(full[1].grad)),
                 dv=_err(local[2].grad, sh(full[2].grad)),
                 scale=max(1.0, single.abs().max().item()),
                 gscale=max(1.0, *(t.grad.abs().max().item() for t in full)),
                 dtype=str(dtype), same_dtype=out.dtype == dtype and local[0].grad.dtype == dtype)
        if dtype in (torch.bfloat16, torch.float16):
            # the project's rule: error vs an fp64 reference within 2x (3x for gradients) of the
            # error of the plain-PyTorch reference computed in the same dtype
            ex = [t.double().requires_grad_() for t in (q, k, v)]
            lo = [t.clone().requires_grad_() for t in (q, k, v)]
            flash_attn_ref(*ex, **kw)[0].backward(dout.double())
            same = flash_attn_ref(*lo, **kw)[0]
            same.backward(dout)
            r["out_same_exact"] = _err(sh(same), sh(exact))
            for name, mine, e, sd in zip(("dq", "dk", "dv"), local, ex, lo):
                r[name + "_exact"] = _err(mine.grad, sh(e.grad))
                r[name + "_same_exact"] = _err(sh(sd.grad), sh(e.grad))
        if lb is not None:
            total = lb.grad.clone()
            dist.all_reduce(total)   # each rank holds its contribution to the replicated bias
            r["dbias"] = _err(total, fb.grad)
            r["dbias_scale"] = max(1.0, fb.grad.abs().max().item())
        if kw.get("activation", "softmax") == "softmax":
            with ring_ctx():
                _, lse = ring_flash_attn(*(t.detach() for t in local), layout=layout, return_lse=True, **kw)
            _, lse_full = kernkit.flash_attn(q, k, v, return_lse=True, **kw)
            lse_local = shard_sequence(lse_full, rank, world, layout=layout, dim=2)
            finite = torch.isfinite(lse_local)
            r["lse_inf_match"] = bool(torch.equal(torch.isfinite(lse), finite))
            r["lse"] = _err(lse[finite], lse_local[finite])
        report.append(r)
    return report


def gather(rank, world, S):
    x = torch.arange(S, dtype=torch.float32).view(1, S, 1, 1).expand(2, S, 3, 1).contiguous()
    res = {}
    for layout in ("contiguous", "zigzag"):
        if layout == "zigzag" and S % (2 * world):
            continue
        res[layout] = bool(torch.equal(gather_sequence(shard_sequence(x, rank, world, layout=layout),
                                                       layout=layout), x))
    return res


def bad_input(rank, world, kind):
    q, k, v, _ = _inputs(1, 8, 2, 2, 16, 16, torch.float32)
    kw = {}
    if kind == "dtype" and rank == 1:
        q = q.double()
    elif kind == "options" and rank == 1:
        kw["causal"] = True
    elif kind == "zigzag_odd":
        q, k, v = q[:, :5], k[:, :5], v[:, :5]
        kw["layout"] = "zigzag"
    elif kind == "zigzag_unequal" and rank == 1:
        q, k, v = q[:, :6], k[:, :6], v[:, :6]
        kw["layout"] = "zigzag"
    elif kind == "zigzag_unequal":
        kw["layout"] = "zigzag"
    elif kind == "heads" and rank == 0:
        k, v = k[:, :, :1], v[:, :, :1]
    q0 = q.clone()
    try:
        ring_flash_attn(q, k, v, **kw)
    except Exception as e:
        return ("raised", type(e).__name__, str(e), bool(torch.equal(q, q0)))
    return ("returned",)


def dies_mid_ring(rank, world, victim):
    """Rank `victim` exits abruptly when it starts its second ring exchange."""
    import kernkit.distributed as kd
    if rank == victim:
        real, calls = kd._exchange, [0]

        def dying(*a, **k):
            calls[0] += 1
            if calls[0] == 2:
                os._exit(17)
            return real(*a, **k)
        kd._exchange = dying
    q, k, v, _ = _inputs(1, 12 * world, 2, 2, 16, 16, torch.float32)
    local = [shard_sequence(t, rank, world) for t in (q, k, v)]
    t0 = time.monotonic()
    try:
        ring_flash_attn(*local, causal=True, timeout=30)
    except RuntimeError as e:
        return ("raised", str(e), time.monotonic() - t0)
    return ("returned", time.monotonic() - t0)


def stalls(rank, world, victim):
    """Rank `victim` stalls (alive but silent); the others must give up after their timeout."""
    q, k, v, _ = _inputs(1, 8 * world, 2, 2, 16, 16, torch.float32)
    local = [shard_sequence(t, rank, world) for t in (q, k, v)]
    if rank == victim:
        time.sleep(8)
        os._exit(0)
    t0 = time.monotonic()
    try:
        ring_flash_attn(*local, timeout=3)
    except RuntimeError as e:
        return ("raised", str(e), time.monotonic() - t0)
    return ("returned", time.monotonic() - t0)


CASES = {"compare_with_single": compare_with_single, "gather": gather, "bad_input": bad_input,
         "dies_mid_ring": dies_mid_ring, "stalls": stalls}
