"""TrainConfig: parsing, --config merging, validation messages, round trips, and no heavy imports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from trainer.config import ConfigError, TrainConfig


def test_defaults_validate():
    cfg = TrainConfig().validate()
    assert cfg.lora_target == "language" and cfg.quantization == "none"
    assert cfg.eval_modes == ("generate", "constrained")


def test_from_args_parses_types():
    cfg = TrainConfig.from_args(["--train-size", "1000", "--eval-size", "all", "--learning-rate", "5e-5",
                                 "--merge", "--lora-target", "all-linear", "--max-steps", "7"])
    assert cfg.train_size == 1000 and cfg.eval_size == "all" and cfg.learning_rate == 5e-5
    assert cfg.merge is True and cfg.lora_target == "all-linear" and cfg.max_steps == 7


def test_config_file_is_overridden_by_explicit_flags(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train_size": 50, "learning_rate": 0.001, "model_id": "builtin:tiny-gemma3"}))
    cfg = TrainConfig.from_args(["--config", str(path), "--learning-rate", "0.002"])
    assert cfg.train_size == 50 and cfg.learning_rate == 0.002 and cfg.model_id == "builtin:tiny-gemma3"


@pytest.mark.parametrize(
    "cfg",
    [
        TrainConfig(),
        TrainConfig(eval_size="all", merge=True, max_steps=3, image_budget=280, quantization="4bit"),
        TrainConfig(train_size=7, num_epochs=0.5, lora_dropout=0.0, eval_mode="constrained", prompt="short"),
    ],
)
def test_round_trips(cfg):
    assert TrainConfig.from_args(cfg.to_args()) == cfg
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"train_size": 0}, ["--train-size", ">= 1", "0"]),
        ({"eval_size": -3}, ["--eval-size", "all", "-3"]),
        ({"learning_rate": 2.0}, ["--learning-rate", "2.0"]),
        ({"quantization": "8bit"}, ["--quantization", "none, 4bit", "8bit"]),
        ({"lora_target": "q_proj"}, ["--lora-target", "language"]),
        ({"eval_mode": "x"}, ["--eval-mode", "generate"]),
        ({"gradient_checkpointing": "yes"}, ["--gradient-checkpointing", "auto"]),
        ({"image_budget": 100}, ["--image-budget", "280", "100"]),
        ({"num_epochs": 0.0}, ["--num-epochs", "0.0"]),
        ({"model_id": " "}, ["--model-id"]),
    ],
)
def test_validation_messages_name_flag_and_value(changes, words):
    with pytest.raises(ConfigError) as err:
        TrainConfig(**changes).validate()
    for word in words:
        assert word in str(err.value)


def test_bad_types_and_unknown_keys():
    with pytest.raises(ConfigError, match="--train-size must be an integer"):
        TrainConfig.from_args(["--train-size", "ten"])
    with pytest.raises(ConfigError, match="--eval-size .* \"all\""):
        TrainConfig.from_args(["--eval-size", "most"])
    with pytest.raises(ConfigError, match="unknown config key"):
        TrainConfig.from_dict({"learning_rat": 1e-4})
    with pytest.raises(ConfigError, match="unrecognized arguments"):
        TrainConfig.from_args(["--learning-rat", "1e-4"])


def test_config_module_is_stdlib_only():
    code = "import sys, trainer.config; bad = {'torch', 'transformers', 'numpy', 'peft'} & set(sys.modules); print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert out.stdout.strip() == "set()"


def test_trainer_never_imports_gemmactl_or_google_clients():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "trainer"
    pattern = re.compile(r"^\s*(from|import)\s+(gemmactl|google)\b", re.M)
    offenders = [p.name for p in root.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
