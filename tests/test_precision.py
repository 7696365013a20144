"""`--precision auto` computes in bf16 only where the hardware does natively and, on a CPU, where
the model's layers measure faster in it; an explicit bf16 on a CPU that emulates it is warned
about with its measured cost."""

import json

import pytest
import torch
from conftest import tiny_synthetic_args

from recforge.cli import main
from recforge.core.checkpoint import load_checkpoint
from recforge.inference import load_run
from recforge.runtime import gemm, precision

CPU = torch.device("cpu")


@pytest.fixture
def cpu_with(monkeypatch):
    def flags(*names):
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "fma", *names}))

    return flags


def test_auto_never_chooses_bf16_on_a_cpu_without_native_bf16(cpu_with):
    cpu_with("avx512f", "avx512bw")  # AVX-512 without its bf16 extension
    assert precision.resolve(CPU, "auto") == ("fp32", "auto: no avx512_bf16 or amx_bf16 CPU flag")
    assert isinstance(precision.autocast(CPU, "auto"), type(precision.autocast(CPU, "fp32")))
    assert "15x slower" in precision.warning(CPU, "bf16")
    assert precision.warning(CPU, "fp32") is None and precision.warning(CPU, "auto") is None


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_auto_chooses_bf16_where_the_cpu_has_it(cpu_with, flag):
    cpu_with(flag)
    assert precision.resolve(CPU, "auto") == ("bf16", f"auto: CPU flags {flag}")
    with precision.autocast(CPU, "auto"):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    assert precision.warning(CPU, "bf16") is None
    assert precision.resolve(CPU, "fp32") == ("fp32", "--precision fp32")  # asked for: kept


@pytest.mark.parametrize("major, chosen", [(6, "fp32"), (7, "fp16"), (8, "bf16"), (9, "bf16")])
def test_auto_on_gpus_by_compute_capability(monkeypatch, major, chosen):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
    assert precision.resolve(torch.device("cuda", 0), "auto")[0] == chosen


def test_the_run_records_what_auto_chose_and_why(tmp_path, cpu_with, capsys):
    cpu_with()
    main(["train", *tiny_synthetic_args(tmp_path, epochs=1, precision="auto")])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["precision"] == "fp32"
    assert summary["precision_reason"] == "auto: no avx512_bf16 or amx_bf16 CPU flag"
    assert "fp32 (auto: no avx512_bf16 or amx_bf16 CPU flag), cpu" in capsys.readouterr().out
    main(["train", *tiny_synthetic_args(tmp_path / "asked", epochs=1, precision="bf16")])
    assert capsys.readouterr().out.count("warning: --precision bf16 on a CPU without native bf16") == 1


def test_auto_on_a_native_bf16_cpu_follows_the_models_measured_layers(cpu_with):
    cpu_with("avx512_bf16")
    reason = "auto: CPU flags avx512_bf16; this model's layers measured {} in bf16"
    assert precision.resolve(CPU, "auto", bf16_speedup=0.5) == ("fp32", reason.format("2.00x slower"))
    assert precision.resolve(CPU, "auto", bf16_speedup=1.6) == ("bf16", reason.format("1.60x faster"))
    assert precision.resolve(CPU, "bf16", bf16_speedup=0.5) == ("bf16", "--precision bf16")  # asked for: kept
    cpu_with()  # no native bf16: a measurement changes nothing
    assert precision.resolve(CPU, "auto", bf16_speedup=3.0)[0] == "fp32"


@pytest.mark.parametrize("speedup, chosen", [(0.5, "fp32"), (2.0, "bf16")])
def test_a_run_trains_and_its_checkpoint_scores_in_what_auto_measured(tmp_path, cpu_with, monkeypatch, speedup, chosen):
    cpu_with("avx512_bf16")
    asked = []
    monkeypatch.setattr(gemm, "bf16_speedup", lambda shapes, backend: asked.append(shapes) or speedup)
    main(["train", *tiny_synthetic_args(tmp_path, epochs=1, precision="auto")])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["precision"] == chosen and "this model's layers measured" in summary["precision_reason"]
    assert [str(s) for s in asked[0]] == ["1024x16x8", "1024x32x16"]  # NeuMF's tower at its batch rows
    assert (summary["gemm"] is None) == (chosen == "bf16")  # fp32 GEMM libraries are chosen in fp32 only
    path = tmp_path / "run" / "checkpoints" / "best.pt"
    checkpoint = load_checkpoint(path)  # the safe unpickler reads the new key
    assert checkpoint["precision"] == chosen
    cpu_with()  # scored on a CPU without bf16: `auto` keeps an fp32 model in fp32, a bf16 one by the flags
    task = load_run(checkpoint, path)[2]
    assert task.precision == ("fp32" if chosen == "fp32" else "auto")
