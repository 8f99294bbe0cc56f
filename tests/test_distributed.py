"""Ring attention (kernkit.distributed) on 2 and 4 gloo ranks spawned on loopback,
against one kernkit.flash_attn call on the whole sequence and the fp64 reference."""

import pytest
import torch

import dist_cases
from kernkit.distributed import shard_sequence, unshard_sequence

# slow: spawning ranks takes seconds, and nothing here depends on the CPU ISA level (the shifted
# masks the ring relies on are tested at every level in test_attention.py)
pytestmark = [pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                 reason="torch.distributed with gloo is not available"),
              pytest.mark.slow]

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16


def _case(name, shape, dtype, layout, **kw):
    return dict(name=name, shape=shape, dtype=dtype, layout=layout, kw=kw)


# shape = (B, S, Hq, Hkv, D, Dv)
CASES_2 = [
    _case("full", (2, 20, 2, 2, 16, 16), F64, "contiguous"),
    _case("causal", (2, 20, 2, 2, 16, 8), F64, "contiguous", causal=True),
    _case("window", (1, 20, 2, 1, 16, 16), F64, "contiguous", window=(5, 3)),
    _case("causal-window-sinks", (1, 20, 2, 2, 16, 16), F64, "contiguous", causal=True, window=(6, -1), sinks=3),
    _case("sinks-beyond-shard", (1, 20, 2, 2, 16, 16), F64, "contiguous", causal=True, window=(2, -1), sinks=13),
    _case("softcap", (1, 20, 2, 2, 16, 16), F64, "contiguous", causal=True, softcap=3.0, scale=0.9),
    _case("sigmoid-causal", (1, 20, 2, 2, 16, 16), F64, "contiguous", causal=True, activation="sigmoid"),
    _case("sigmoid-window-bias", (1, 20, 2, 2, 16, 16), F64, "zigzag", window=(4, 4), activation="sigmoid",
          sigmoid_bias=-1.5),
    _case("sigmoid-head-bias", (1, 20, 2, 1, 16, 16), F64, "zigzag", causal=True, activation="sigmoid",
          bias_tensor=[-2.0, 0.5]),
    _case("zigzag-full", (2, 20, 2, 2, 16, 16), F64, "zigzag"),
    _case("zigzag-causal", (2, 20, 4, 2, 16, 16), F64, "zigzag", causal=True),
    _case("zigzag-window-sinks", (1, 24, 2, 2, 16, 16), F64, "zigzag", causal=True, window=(3, -1), sinks=2),
    _case("zigzag-two-sided", (1, 24, 2, 2, 16, 16), F64, "zigzag", window=(2, 7)),
    _case("uneven-causal", (1, 23, 2, 2, 16, 16), F64, "contiguous", causal=True, window=(9, -1)),
    _case("one-token", (2, 1, 2, 1, 16, 16), F64, "contiguous", causal=True),   # rank 1 holds no rows
    _case("fp32-gqa-causal", (2, 64, 4, 2, 64, 64), F32, "contiguous", causal=True),
    _case("fp32-zigzag-window", (1, 96, 4, 4, 32, 48), F32, "zigzag", causal=True, window=(20, -1), sinks=4),
    _case("bf16-zigzag-causal", (1, 128, 4, 2, 64, 64), BF16, "zigzag", causal=True),
    _case("bf16-contiguous-full", (1, 100, 2, 2, 128, 128), BF16, "contiguous"),
    _case("fp16-contiguous-causal", (1, 66, 2, 1, 64, 64), F16, "contiguous", causal=True),
]

CASES_4 = [
    _case("zigzag-causal", (1, 40, 2, 2, 16, 16), F64, "zigzag", causal=True),
    _case("uneven-window-sinks", (1, 37, 2, 1, 16, 16), F64, "contiguous", causal=True, window=(7, -1), sinks=5),
    _case("zigzag-two-sided", (1, 48, 2, 2, 16, 16), F64, "zigzag", window=(3, 10)),
    _case("sigmoid-full", (1, 30, 2, 2, 16, 16), F64, "contiguous", activation="sigmoid"),
    _case("fp32-zigzag-window", (2, 64, 4, 2, 32, 32), F32, "zigzag", causal=True, window=(9, -1)),
    _case("bf16-contiguous-causal", (1, 64, 2, 2, 64, 64), BF16, "contiguous", causal=True),
]

TOL = {F64: 2e-6, F32: 3e-5}   # fp64 too is limited by the fp32 lse that merges the blocks


def _check_reports(res, world, cases):
    for rank in range(world):
        status, reports = res[rank]
        assert status == "ok", f"rank {rank}: {reports}"
        assert len(reports) == len(cases)
        for r, c in zip(reports, cases):
            where = f"rank {rank} case {r['name']}"
            assert r["same_dtype"], where
            if c["dtype"] in TOL:
                tol = TOL[c["dtype"]]
                assert r["out"] <= tol * r["scale"], (where, r)
                for g in ("dq", "dk", "dv"):
                    assert r[g] <= tol * r["gscale"], (where, g, r)
            else:
                floor = 1e-2 if c["dtype"] == BF16 else 1e-3
                assert r["out_exact"] <= 2 * r["out_same_exact"] + floor * r["scale"], (where, r)
                for g in ("dq", "dk", "dv"):
                    assert r[g + "_exact"] <= 3 * r[g + "_same_exact"] + floor * r["gscale"], (where, g, r)
            if "lse" in r:
                assert r["lse_inf_match"], where
                assert r["lse"] <= 1e-4, (where, r)
            if "dbias" in r:   # (16-bit: the ring's kernels round P and dS differently from the single call's)
                assert r["dbias"] <= (1e-5 if c["dtype"] in TOL else 1e-3) * r["dbias_scale"], (where, r)


def test_ring_two_ranks_matches_single_process():
    _check_reports(dist_cases.run(2, "compare_with_single", CASES_2), 2, CASES_2)


def test_ring_one_rank_matches_single_process():
    cases = CASES_2[:4] + CASES_2[9:12]   # a group of one: no peers, same results
    _check_reports(dist_cases.run(1, "compare_with_single", cases), 1, cases)


def test_ring_four_ranks_matches_single_process():
    _check_reports(dist_cases.run(4, "compare_with_single", CASES_4), 4, CASES_4)


# the ring's per-block calls (shifted diagonals, merged partials) through the CUDA kernels under simt
CASES_SIMT = [
    _case("fp32-gqa-causal", (2, 64, 4, 2, 64, 64), F32, "contiguous", causal=True),
    _case("bf16-zigzag-window-sinks", (1, 128, 4, 2, 64, 64), BF16, "zigzag", causal=True, window=(40, -1), sinks=3),
    _case("fp16-uneven-causal", (1, 67, 2, 1, 64, 32), F16, "contiguous", causal=True),
    _case("bf16-sigmoid-head-bias", (1, 64, 2, 1, 64, 64), BF16, "zigzag", causal=True, activation="sigmoid",
          bias_tensor=[-2.0, 0.5]),
]


def test_ring_two_ranks_on_cuda_kernels_under_simt():
    from kernkit.testing import simt_available
    if not simt_available():
        pytest.skip("this kernkit build has no simt backend (KERNKIT_BUILD_SIMT=0)")
    _check_reports(dist_cases.run(2, "compare_with_single", CASES_SIMT, True), 2, CASES_SIMT)


@pytest.mark.parametrize("world,S", [(2, 24), (2, 23), (4, 37), (4, 40)])
def test_gather_sequence(world, S):
    res = dist_cases.run(world, "gather", S)
    for rank in range(world):
        status, value = res[rank]
        assert status == "ok", value
        assert all(value.values()) and "contiguous" in value


@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
@pytest.mark.parametrize("S,world", [(24, 2), (23, 2), (40, 4), (7, 4), (3, 4)])
def test_shard_roundtrip(layout, S, world):
    x = torch.randn(2, S, 3, 4)
    if layout == "zigzag" and S % (2 * world):
        with pytest.raises(ValueError, match="zigzag"):
            shard_sequence(x, 0, world, layout=layout)
        return
    parts = [shard_sequence(x, r, world, layout=layout) for r in range(world)]
    assert sum(p.shape[1] for p in parts) == S
    assert torch.equal(unshard_sequence(parts, layout=layout), x)
    if layout == "zigzag":   # rank r holds chunks r and 2*world-1-r
        c = S // (2 * world)
        assert torch.equal(parts[1][:, :c], x[:, c:2 * c])
        assert torch.equal(parts[1][:, c:], x[:, (2 * world - 2) * c:(2 * world - 1) * c])


def test_shard_bad_arguments():
    x = torch.randn(1, 8, 2, 4)
    with pytest.raises(ValueError, match="layout"):
        shard_sequence(x, 0, 2, layout="striped")
    with pytest.raises(ValueError, match="rank"):
        shard_sequence(x, 2, 2)


@pytest.mark.parametrize("kind,bad_ranks,error", [
    ("dtype", [1], "TypeError"),           # rank 1 passes fp64 q with fp32 k/v
    ("heads", [], "ValueError"),           # ranks differ in k/v heads (each valid GQA): both raise
    ("options", [0, 1], "ValueError"),     # ranks disagree on causal
    ("zigzag_odd", [0, 1], "ValueError"),  # odd local length with zigzag
    ("zigzag_unequal", [0, 1], "ValueError"),
])
def test_bad_input_raises_on_every_rank(kind, bad_ranks, error):
    res = dist_cases.run(2, "bad_input", kind)
    for rank in range(2):
        status, value = res[rank]
        assert status == "ok", value
        if kind == "heads":   # 2 q heads over 1 kv head is valid GQA, but ranks then disagree on heads
            assert value[0] == "raised" and value[1] == "ValueError" and "disagree" in value[2], value
            continue
        assert value[0] == "raised", (rank, value)
        assert value[3], "input was modified"
        if rank in bad_ranks:
            assert value[1] == error, (rank, value)
            assert "ring_flash_attn" in value[2]
        else:
            assert value[1] == "RuntimeError" and "rejected" in value[2], (rank, value)


def test_rank_dying_mid_ring_raises_on_the_others():
    res = dist_cases.run(3, "dies_mid_ring", 1, timeout=120)
    assert res[1][0] == "missing"   # it exited with os._exit
    for rank in (0, 2):
        status, value = res[rank]
        assert status == "ok", value
        assert value[0] == "raised" and "ring_flash_attn" in value[1], (rank, value)
        assert value[2] < 60, f"rank {rank} took {value[2]:.0f} s to notice"


def test_stalled_rank_times_out():
    res = dist_cases.run(2, "stalls", 1, timeout=120)
    status, value = res[0]
    assert status == "ok", value
    assert value[0] == "raised" and "timed out" in value[1], value
    assert value[2] < 8, f"took {value[2]:.1f} s with a 3 s timeout"
