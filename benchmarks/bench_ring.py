"""Ring attention: kernkit.distributed.ring_flash_attn on 2 gloo ranks (spawned
processes on loopback, 1 thread each) against one kernkit.flash_attn call on the
whole sequence in one process with 1 thread, timed alternately in the same run.

With 2 ranks on the 2 cores the ideal speedup is 2x; the table reports the
speedup, the parallel efficiency (speedup / 2), and the bytes each rank sent per
call next to the theoretical ring volume (world-1)/world * (|K| + |V|) of the
full sequence for the forward (the backward also returns fp32 dK/dV)."""

from __future__ import annotations

import datetime
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import kernkit
from kernkit import distributed as kd

from .common import Row, dtype_name

FAMILY = "ring"
WORLD = 2


def _cases(quick):
    S = 2048 if quick else 8192
    return [dict(S=S, causal=True, layout="zigzag", window=(-1, -1)),
            dict(S=S, causal=True, layout="contiguous", window=(-1, -1)),
            dict(S=S, causal=False, layout="contiguous", window=(-1, -1)),
            dict(S=S, causal=True, layout="zigzag", window=(1024, -1))]


def _timed(fn, barrier):
    """Seconds for one call, all ranks starting together and the slowest one deciding."""
    barrier()
    t = time.perf_counter()
    fn()
    barrier()
    return time.perf_counter() - t


def _rank_main(rank, port, quick, results):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=600))
    try:
        H, D, dtype = 8, 128, torch.bfloat16
        reps = 3 if quick else 5
        rows = []
        for c in _cases(quick):
            g = torch.Generator().manual_seed(0)
            q, k, v, do = (torch.randn(1, c["S"], H, D, generator=g).to(dtype) for _ in range(4))
            kw = dict(causal=c["causal"], window=c["window"])
            loc = [kd.shard_sequence(t, rank, WORLD, layout=c["layout"]).contiguous() for t in (q, k, v, do)]
            lq, lk, lv = (t.clone().requires_grad_() for t in loc[:3])
            fq, fk, fv = (t.clone().requires_grad_() for t in (q, k, v))

            def ring_fwd():
                with torch.no_grad():
                    kd.ring_flash_attn(lq, lk, lv, layout=c["layout"], **kw)

            def ring_fwd_bwd():
                out = kd.ring_flash_attn(lq, lk, lv, layout=c["layout"], **kw)
                torch.autograd.grad(out, (lq, lk, lv), loc[3])

            def single_fwd():
                if rank == 0:
                    with torch.no_grad():
                        kernkit.flash_attn(q, k, v, **kw)

            def single_fwd_bwd():
                if rank == 0:
                    torch.autograd.grad(kernkit.flash_attn(fq, fk, fv, **kw), (fq, fk, fv), do)

            for what, ring, single in (("fwd", ring_fwd, single_fwd), ("fwd+bwd", ring_fwd_bwd, single_fwd_bwd)):
                ring()
                tr, ts = [], []
                for _ in range(reps):   # alternate, as the other benchmarks do
                    tr.append(_timed(ring, dist.barrier))
                    ts.append(_timed(single, dist.barrier))
                sent = kd.comm_stats["forward_bytes"] + (kd.comm_stats["backward_bytes"] if what != "fwd" else 0)
                rows.append(dict(case=c, what=what, ring=statistics.median(tr), single=statistics.median(ts),
                                 sent=sent, kv_bytes=(k.numel() + v.numel()) * k.element_size(), H=H, D=D,
                                 dtype=dtype_name(dtype)))
        results.put((rank, rows))
    finally:
        dist.destroy_process_group()


def run(device: str = "cpu", quick: bool = False) -> list[Row]:
    if device != "cpu" or not dist.is_available() or not dist.is_gloo_available():
        return []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_rank_main, args=(r, port, quick, results)) for r in range(WORLD)]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=3600) for _ in range(WORLD))
    for p in procs:
        p.join()
    rows = []
    for r0, r1 in zip(got[0], got[1]):
        c = r0["case"]
        ring = max(r0["ring"], r1["ring"])          # the slower rank decides
        speedup = r0["single"] / ring
        mask = ("causal" if c["causal"] else "full") + (f" window {c['window'][0]}" if c["window"][0] >= 0 else "")
        theory = (WORLD - 1) / WORLD * r0["kv_bytes"]
        rate = (f"efficiency {100 * speedup / WORLD:.0f}% of {WORLD}x; sent {r0['sent'] / 1e6:.1f} MB/rank "
                f"(fwd theory {theory / 1e6:.1f} MB)")
        rows.append(Row(FAMILY, f"ring {r0['what']} {WORLD} ranks {c['layout']} {mask}",
                        f"B1 S{c['S']} H{r0['H']} D{r0['D']}", r0["dtype"], ring * 1e6,
                        "flash_attn, 1 process, 1 thread", r0["single"] * 1e6, rate,
                        extra=dict(sent_bytes=r0["sent"], sent_bytes_rank1=r1["sent"], fwd_theory_bytes=theory)))
    return rows
