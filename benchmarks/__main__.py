"""Benchmark runner: `python -m benchmarks [--quick] [--only FAMILY] [--json PATH] [--plot PATH]`."""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess

import torch

import kernkit

from . import (bench_attention, bench_large, bench_linear_attn, bench_load, bench_lowbit, bench_norm, bench_ring,
               bench_scan, bench_simt)
from .common import print_table, rows_to_json, plot

FAMILIES = {m.FAMILY: m for m in (bench_attention, bench_large, bench_linear_attn, bench_load, bench_lowbit, bench_norm,
                                   bench_ring, bench_scan, bench_simt)}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer shapes and shorter timing (about a minute)")
    ap.add_argument("--only", choices=sorted(FAMILIES), action="append", help="run only this family (repeatable)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--json", metavar="PATH", help="also write the rows and machine facts as JSON")
    ap.add_argument("--plot", metavar="PATH", help="also write a PNG bar chart of the speedups")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not kernkit.info()["gpu_usable"]:
        ap.error("--device cuda: no usable GPU (or kernkit built without CUDA)")

    info = kernkit.info()
    print(f"kernkit {info['version']}  torch {info['torch']}  isa={info['isa_selected']}  "
          f"threads={info['threads']}  device={args.device}  {platform.processor() or platform.machine()}")
    rows = []
    for name in args.only or sorted(FAMILIES):
        rows += FAMILIES[name].run(device=args.device, quick=args.quick)
    print_table(rows)
    if args.json:
        meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "commit": _commit(),
                "machine": platform.node(), "device": args.device, "info": info,
                "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows_to_json(rows)}, f, indent=1)
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
