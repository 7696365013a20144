import dataclasses
import io
import itertools
import re
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
    assert cfg.optim.learning_rate == 0.01  # preset beats default (and a preset from before `optim` reads)
    assert cfg.arch.num_factors == 16 and cfg.arch.layers == [8, 4]
    assert cfg.train.batch_size == 16384  # default
    assert cfg.eval.valid_negative == 99


def test_each_optimizer_has_its_own_settings_and_refuses_another_s(tmp_path):
    cfg, _ = _run_parser("t", ["--model", "dlrm", "--optimizer", "adam", "--beta1", "0.5"])
    assert cfg.optim.beta1 == 0.5 and cfg.optim.learning_rate == 0.1  # DLRM's rate, Adam's betas
    assert build_config({}, {"model": "dlrm"}).to_dict()["optim"] == {"learning_rate": 0.1, "weight_decay": 0.0}
    with pytest.raises(RecforgeError, match=r"^--beta1: a setting of --optimizer adam, not of sgd \(this run's\)$"):
        _run_parser("t", ["--optimizer", "sgd", "--beta1", "0.5"])
    preset = tmp_path / "p.yaml"
    preset.write_text("train:\n  optimizer: sgd\noptim:\n  learning_rate: 0.1\n  eps: 1.0e-6\n")
    with pytest.raises(RecforgeError, match=r"p.yaml:5: field 'optim.eps': a setting of --optimizer adam / adagrad"):
        _run_parser("t", ["--config", str(preset)])
    preset.write_text("train:\n  optimizer: sgd\n  beta2: 0.9\n")  # the place before `optim` existed
    with pytest.raises(RecforgeError, match=r"p.yaml:3: field 'train.beta2': a setting of --optimizer adam, not"):
        _run_parser("t", ["--config", str(preset)])


def test_the_help_lists_the_chosen_optimizer_s_settings_only(capsys):
    for flags, listed, unlisted in (
        ([], {"--beta1", "--learning-rate"}, {"--linear-learning-rate"}),
        (["--optimizer", "sgd"], {"--learning-rate", "--weight-decay"}, {"--beta1", "--eps"}),
        (["--model", "wide-deep"], {"--linear-learning-rate", "--deep-l2-regularization"}, {"--learning-rate"}),
    ):
        with pytest.raises(SystemExit):
            _run_parser("t", [*flags, "--help"])
        shown = set(re.findall(r"^\s+(--[a-z0-9-]+)", capsys.readouterr().out, re.M))
        assert listed <= shown and not unlisted & shown, flags


def test_a_config_stored_before_the_optimizer_sections_reads_and_resumes():
    """Checkpoints written before `optim` hold every optimizer's settings under `train`: read back,
    the run's optimizer takes its own, and a changed rate is a difference a resume sees."""
    from recforge.registry import config_from_dict
    from recforge.train.resume import config_differences

    for model, optimizer in (("neumf", "sgd"), ("wide-deep", "ftrl+proximal-adagrad")):
        cfg = build_config({}, {"model": model, "optimizer": optimizer})
        stored = cfg.to_dict()
        every = {k: v for name in ("adam", "ftrl+proximal-adagrad") for k, v in _defaults(name).items()}
        stored["train"] |= every | stored.pop("optim")
        again = config_from_dict(stored)
        assert again == cfg
        rate = "learning_rate" if optimizer == "sgd" else "deep_learning_rate"
        changed = build_config({}, {"model": model, "optimizer": optimizer, rate: 0.5})
        assert config_differences(stored, changed.to_dict()) == {("optim", rate): (getattr(cfg.optim, rate), 0.5)}


def _defaults(optimizer: str) -> dict:
    return build_config({}, {"optimizer": optimizer, "model": "wide-deep"}).to_dict()["optim"]


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
    return {key for section in ("data", "train", "optim", "eval") for key in cfg.to_dict()[section]}


def test_every_option_has_help_and_a_group():
    from recforge.config import section_classes
    from recforge.registry import OPTIMIZER_SETTINGS

    for entry, optim in itertools.product(MODELS.values(), OPTIMIZER_SETTINGS.values()):
        for section, cls in section_classes(entry.config, optim).items():
            for f in dataclasses.fields(cls):
                assert f.metadata.get("help"), f"{section}.{f.name} has no help text"
                assert section in ("arch", "optim") or f.metadata.get("group"), f"{section}.{f.name} has no group"


def test_the_optimizer_names_are_the_registry_s():
    import typing

    from recforge.config import TrainConfig
    from recforge.optim.build import OPTIMIZERS

    assert list(typing.get_args(typing.get_type_hints(TrainConfig)["optimizer"])) == list(OPTIMIZERS)
