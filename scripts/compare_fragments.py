"""Compares golden per-lane fragments captured on a GPU (scripts/gpu_fragments.cu) with the simt
emulator's captures of the same kernels: `python scripts/compare_fragments.py fragments_gpu.json`."""

import json
import sys

from kernkit import _simt


def main(path: str) -> int:
    with open(path) as f:
        golden = json.load(f)
    bad = 0
    for name, ok, detail in _simt.compare_captures(golden):
        print("OK " if ok else "BAD", name, detail)
        bad += not ok
    print(f"{bad} difference(s) between the GPU and the emulator")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
