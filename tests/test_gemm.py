"""fp32 GEMM libraries chosen per layer shape by measurement, cached per machine, overridable."""

import json

import pytest
import torch
from conftest import tiny_synthetic_args

from recforge.cli import main
from recforge.models.layers import Linear
from recforge.runtime import gemm

NARROW, WIDE = gemm.Shape(64, 13, 32), gemm.Shape(64, 32, 256)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECFORGE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def timings(monkeypatch):
    """time_shape replaced by given seconds per shape; the shapes it was asked for."""
    asked = []

    def use(seconds):
        def measure(shape, kernels=gemm.BACKENDS):
            asked.append(shape)
            return {kernel: seconds[shape][kernel] for kernel in kernels}

        monkeypatch.setattr(gemm, "time_shape", measure)
        return asked

    return use


def test_each_shape_gets_the_faster_library_and_later_runs_reuse_the_measurement(cache, timings):
    asked = timings({NARROW: {"onednn": 2e-4, "torch": 1e-4}, WIDE: {"onednn": 1e-3, "torch": 3e-3}})
    chosen = gemm.choose([NARROW, WIDE])
    assert {s: c.backend for s, c in chosen.items()} == {NARROW: "torch", WIDE: "onednn"}
    assert chosen[NARROW].speedup == pytest.approx(2.0) and chosen[WIDE].speedup == pytest.approx(3.0)
    assert {c.source for c in chosen.values()} == {"measured"} and asked == [NARROW, WIDE]
    stored = json.loads((gemm.cache_folder() / "64x13x32.json").read_text())
    assert stored["seconds"] == {"onednn": 2e-4, "torch": 1e-4} and stored["machine"] == gemm.machine_key()

    again = gemm.choose([WIDE, NARROW])
    assert asked == [NARROW, WIDE]  # not measured again
    assert {s: (c.backend, c.source) for s, c in again.items()} == {
        NARROW: ("torch", "cached"),
        WIDE: ("onednn", "cached"),
    }


def test_another_thread_count_is_another_machine(cache, timings):
    asked = timings({NARROW: {"onednn": 1.0, "torch": 2.0}})
    threads = torch.get_num_threads()
    gemm.choose([NARROW])
    try:
        torch.set_num_threads(threads + 1)
        gemm.choose([NARROW])
    finally:
        torch.set_num_threads(threads)
    assert asked == [NARROW, NARROW] and len(list((cache / "gemm").iterdir())) == 2


def test_a_library_capped_to_fewer_instruction_sets_is_another_machine(cache, monkeypatch):
    native = gemm.cache_folder()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert gemm.cache_folder() != native and "ONEDNN_MAX_CPU_ISA-AVX2" in gemm.machine_key()


def test_the_first_stored_measurement_wins_and_a_damaged_one_is_measured_again(cache, timings):
    timings({NARROW: {"onednn": 1.0, "torch": 2.0}, WIDE: {"onednn": 1.0, "torch": 2.0}})
    folder = gemm.cache_folder()
    folder.mkdir(parents=True)
    # stored by another process between this one's read and write: kept, and this one uses it
    (folder / "64x13x32.json").write_text(json.dumps({"seconds": {"onednn": 5.0, "torch": 1.0}}))
    assert gemm._write_first(folder / "64x13x32.json", NARROW, {"onednn": 1.0, "torch": 2.0})["torch"] == 1.0
    assert gemm.choose([NARROW])[NARROW].backend == "torch"
    (folder / "64x32x256.json").write_text('{"seconds": {"onednn": 1.0')  # cut short
    chosen = gemm.choose([WIDE])[WIDE]
    assert (chosen.backend, chosen.source) == ("onednn", "measured")
    assert json.loads((folder / "64x32x256.json").read_text())["seconds"] == {"onednn": 1.0, "torch": 2.0}
    assert sorted(p.name for p in folder.iterdir()) == ["64x13x32.json", "64x32x256.json"]  # no temp files


def test_a_named_library_is_used_without_measuring(cache, timings):
    asked = timings({})
    chosen = gemm.choose([NARROW, WIDE], "torch")
    assert {(c.backend, c.source, c.speedup) for c in chosen.values()} == {("torch", "--gemm", 1.0)}
    assert asked == [] and not cache.exists()


def test_timing_runs_both_libraries_forward_and_backward():
    for forward_only in (False, True):
        seconds = gemm.time_shape(gemm.Shape(256, 64, 32, forward_only), repeats=2)
        assert set(seconds) == set(gemm.BACKENDS) and all(0 < s < 1 for s in seconds.values())
    seconds = gemm.time_shape(gemm.Shape(256, 64, 32), repeats=2, kernels=(*gemm.BACKENDS, gemm.BF16))
    assert set(seconds) == {"onednn", "torch", "bf16"} and all(0 < s < 1 for s in seconds.values())


def test_bf16_is_weighed_against_fp32_over_all_of_a_models_layers_and_cached(cache, timings):
    """fp32's step time (the faster library per layer, or the named one) over bf16's, summed over layers."""
    asked = timings(
        {NARROW: {"onednn": 2.0, "torch": 1.0, "bf16": 4.0}, WIDE: {"onednn": 2.0, "torch": 3.0, "bf16": 1.0}}
    )
    assert gemm.bf16_speedup([NARROW, WIDE]) == pytest.approx((1.0 + 2.0) / (4.0 + 1.0))
    assert gemm.bf16_speedup([NARROW, WIDE], "torch") == pytest.approx((1.0 + 3.0) / 5.0)
    assert asked == [NARROW, WIDE]  # measured once, all three kernels together
    stored = json.loads((gemm.cache_folder() / "64x13x32-bf16.json").read_text())["seconds"]
    assert stored == {"onednn": 2.0, "torch": 1.0, "bf16": 4.0}
    assert gemm.choose([NARROW])[NARROW].source == "measured"  # the fp32 choice keeps its own file


def test_an_fp32_cpu_run_prints_and_records_its_choices(tmp_path, cache, capsys):
    args = tiny_synthetic_args(tmp_path, epochs=1, precision="fp32")  # NeuMF's tower 32-16-8
    main(["train", *args])
    out = capsys.readouterr().out
    assert f"fp32 GEMMs at 1,024 rows (measured now, cached in {gemm.cache_folder()}): 16-8 " in out
    chosen = json.loads((tmp_path / "run" / "summary.json").read_text())["gemm"]
    assert sorted(chosen) == ["16x8", "32x16"]
    assert all(c["backend"] in gemm.BACKENDS and c["source"] == "measured" for c in chosen.values())

    main(["train", *tiny_synthetic_args(tmp_path / "again", epochs=1, precision="fp32")])
    assert "(measured before, cached in" in capsys.readouterr().out
    main(["train", *tiny_synthetic_args(tmp_path / "forced", epochs=1, precision="fp32", gemm="torch")])
    assert "fp32 GEMMs at 1,024 rows (--gemm torch): 16-8 torch, 32-16 torch" in capsys.readouterr().out
    main(["train", *tiny_synthetic_args(tmp_path / "bf16", epochs=1, precision="bf16")])
    assert "fp32 GEMMs" not in capsys.readouterr().out
    assert json.loads((tmp_path / "bf16" / "run" / "summary.json").read_text())["gemm"] is None


def test_a_served_layer_runs_each_batch_size_on_the_library_measured_fastest_near_it(cache, timings, monkeypatch):
    """inference_backends: forward-only measurements at 1, 16, 256 and 4,096 rows; a batch takes
    the choice of the nearest of them (log scale)."""
    fast = {1: "torch", 16: "torch", 256: "onednn", gemm.CALIBRATION_ROWS: "onednn"}
    asked = timings(
        {
            gemm.Shape(rows, 13, 32, forward_only=True): {"onednn": 1.0, "torch": 2.0} | {backend: 0.5}
            for rows, backend in fast.items()
        }
    )
    layer = Linear(13, 32)
    layer.by_rows = gemm.inference_backends(13, 32)
    assert all(shape.forward_only for shape in asked) and len(asked) == 4
    used = []
    monkeypatch.setattr(gemm, "linear", lambda x, w, b, backend: used.append(backend) or x @ w.T)
    for rows in (1, 3, 60, 70, 100_000):
        layer(torch.zeros(rows, 13))
    assert used == ["torch", "torch", "torch", "onednn", "onednn"]
    assert gemm.choose([gemm.Shape(16, 13, 32, forward_only=True)])[gemm.Shape(16, 13, 32, True)].source == "cached"
