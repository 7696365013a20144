import dataclasses
import io
from typing import Literal

import pytest
import yaml

from recforge.cli import _run_parser
from recforge.config import DataConfig, coerce
from recforge.core.errors import RecforgeError
from recforge.core.progress import Progress
from recforge.registry import MODELS, build_config


def test_flags_override_the_preset_which_overrides_defaults(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text(
        yaml.safe_dump({"model": "gmf", "arch": {"num_factors": 16}, "train": {"epochs": 7, "learning_rate": 0.01}})
    )
    cfg, _ = _run_parser("t", ["--config", str(preset), "--epochs", "3", "--layers", "8,4"])
    assert cfg.model == "gmf"
    assert cfg.train.epochs == 3  # flag beats preset
    assert cfg.train.learning_rate == 0.01  # preset beats default
    assert cfg.arch.num_factors == 16 and cfg.arch.layers == [8, 4]
    assert cfg.train.batch_size == 16384  # default
    assert cfg.eval.valid_negative == 99


def test_resolved_config_round_trips():
    cfg = build_config({}, {"model": "mlp", "layers": "16,8", "hr_threshold": "0.635", "rating_column": "none"})
    again = build_config(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    assert again.eval.quality_target == 0.635 and again.data.rating_column is None


def test_coerce_rejects_wrong_types():
    assert coerce(int, "1_000") == 1000 and coerce(float, "1e-3") == 0.001 and coerce(list[int], [1, "2"]) == [1, 2]
    for tp, value in ((int, "x"), (int, 1.5), (int, True), (bool, "maybe"), (float, "fast"), (list[int], 3)):
        with pytest.raises(ValueError):
            coerce(tp, value)


def test_a_number_or_a_named_choice_takes_either_and_names_both_when_neither():
    assert coerce(int | Literal["auto"], "auto") == "auto" and coerce(int | Literal["auto"], "3") == 3
    with pytest.raises(ValueError, match="must be an integer, got 'many' or one of auto, got 'many'"):
        coerce(int | Literal["auto"], "many")
    cfg, _ = _run_parser("t", ["--workers", "auto"])
    assert cfg.data.workers == "auto"
    with pytest.raises(RecforgeError, match="--workers: must be at least 1, got 0"):
        _run_parser("t", ["--workers", "0"])


def test_unknown_flag_for_the_model_is_an_error():
    with pytest.raises(RecforgeError, match="unknown option"):
        build_config({}, {"no_such_option": 1})


def test_every_model_has_unique_flag_names():
    for name in MODELS:
        _run_parser("t", ["--model", name])  # raises if two sections share a field name


def test_data_config_fields_are_all_flags():
    cfg, _ = _run_parser("t", ["--min-rating", "4", "--min-user-interactions", "5", "--no-clean"])
    assert cfg.data.min_rating == 4.0 and cfg.data.min_user_interactions == 5 and cfg.data.clean is False
    assert set(DataConfig.__dataclass_fields__) <= set(cfg.to_dict()["data"])


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal_and_timed_lines_in_a_log(monkeypatch):
    terminal = Terminal()
    bar = Progress(100, "epoch 1", stream=terminal)
    bar.update(50, "loss 0.5")
    bar.update(50)
    bar.close()
    assert "epoch 1 [" in terminal.getvalue() and "100%" in terminal.getvalue() and "samples/s" in terminal.getvalue()
    clock = iter([0.0, 1.0, 6.0, 7.0, 12.0])  # perf_counter at start and at each update
    monkeypatch.setattr("recforge.core.progress.time.perf_counter", lambda: next(clock))
    log = io.StringIO()
    lines = Progress(100, "epoch 1", stream=log)
    for _ in range(4):
        lines.update(25)
    lines.close()
    # a line once 5 s have passed since the last (at 6 s and 12 s), none in between, no bar codes
    assert log.getvalue() == "epoch 1: 50% of 100, 8 samples/s\nepoch 1: 100% of 100, 8 samples/s\n"


def test_older_names_are_still_read():
    """`hr_threshold` became `quality_target` (it stops on AUC and MAP@12 too): old presets,
    flags and checkpoints' configs still work."""
    from_yaml = build_config({"eval": {"hr_threshold": 0.8}})
    from_flag = build_config({}, {"hr_threshold": "0.7"})
    assert from_yaml.eval.quality_target == 0.8 and from_flag.eval.quality_target == 0.7
    assert "hr_threshold" not in cfg_keys(from_yaml)


def cfg_keys(cfg) -> set:
    return {key for section in ("data", "train", "eval") for key in cfg.to_dict()[section]}


def test_every_option_has_help_and_a_group():
    from recforge.config import section_classes

    for entry in MODELS.values():
        for section, cls in section_classes(entry.config).items():
            for f in dataclasses.fields(cls):
                assert f.metadata.get("help"), f"{section}.{f.name} has no help text"
                assert section == "arch" or f.metadata.get("group"), f"{section}.{f.name} has no group"


def test_the_optimizer_names_are_the_registry_s():
    import typing

    from recforge.config import TrainConfig
    from recforge.optim.build import OPTIMIZERS

    assert list(typing.get_args(typing.get_type_hints(TrainConfig)["optimizer"])) == list(OPTIMIZERS)
