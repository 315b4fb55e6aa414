"""Images encoded in a second process during start-up: the same features, adopted only when they are the same.

trainer.preencode starts `python -m trainer.preencode` before the trainer's heavy imports; the child loads the
vision tower alone (from a checkpoint: only its tensors), encodes the first epoch's images in step order and then
the eval images, and the trainer adopts its chunks once the model is loaded. These stories hold the child to the
in-process encode: bit-equal features and prompts, the same run bit for bit, nothing adopted from other weights, a
child that stops when asked, leaves nothing behind and never sees the token in its arguments. On a CPU the child
is forced on (`preencode: on`); `LET_FINISH` makes the trainer wait for all of it instead of stopping it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import trainer.preencode as preencode
from trainer.collate import build_chat_format, encode_prompt
from trainer.config import TrainConfig
from trainer.data import load_splits, select
from trainer.features import FeatureCache, inner_model
from trainer.model import apply_lora, load_model_and_processor
from trainer.preencode import PreEncoder, wanted

from tests.trainer.conftest import trainer_env

SMALL = dict(dataset="builtin:synthetic-pets", prompt="short", train_size=12, eval_size=6, batch_size=2,
             gradient_accumulation_steps=2, num_workers=0, preencode="on")


@pytest.fixture
def finish(monkeypatch):
    monkeypatch.setattr(preencode, "LET_FINISH", True)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def gemma3_dir(tmp_path_factory, tiny_gemma3):
    """The tiny Gemma 3 saved as a checkpoint directory, as `gemmactl stage-model` leaves a real one."""
    model, processor = tiny_gemma3
    path = tmp_path_factory.mktemp("tiny-gemma3")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def _parent(cfg: TrainConfig):
    loaded = load_model_and_processor(cfg, None)
    model = apply_lora(loaded.model, cfg)
    return model, FeatureCache(model, loaded.processor, build_chat_format(loaded.processor, cfg.prompt),
                               loaded.device)


def _child_features(cfg: TrainConfig) -> tuple[list[str], FeatureCache, torch.nn.Module]:
    child = PreEncoder.start(cfg)
    assert child is not None
    try:
        model, cache = _parent(cfg)
        keys = child.collect(cache, model)
    finally:
        child.close()
    assert not child.folder.exists()  # scratch removed
    return keys, cache, model


@pytest.mark.slow
@pytest.mark.parametrize("model_id", ["builtin:tiny-gemma3", "builtin:tiny-gemma4", "checkpoint"])
def test_features_from_the_second_process_equal_this_process_bit_for_bit(request, finish, tmp_path, model_id):
    if model_id == "checkpoint":  # only the vision tensors read, the language model left on the meta device
        model_id = request.getfixturevalue("gemma3_dir")
    cfg = TrainConfig(model_id=model_id, output_dir=str(tmp_path / "run"), **SMALL).validate()
    keys, adopted, model = _child_features(cfg)
    train, evals = select(load_splits(cfg.dataset), cfg.train_size, cfg.eval_size, cfg.seed)
    assert sorted(keys) == sorted(ex.image_id for ex in train + evals)  # every image, each once
    assert adopted.encoded == 0  # adopted, not encoded here

    here = FeatureCache(model, adopted.processor, adopted.fmt, adopted.device)
    examples = (train + evals)[:4]
    here.add([ex.image_id for ex in examples], [encode_prompt(here.processor, here.fmt, ex.open()) for ex in examples])
    for ex in examples:
        mine, theirs = here.entries[ex.image_id], adopted.entries[ex.image_id]
        assert mine.keys() == theirs.keys()
        for name in mine:
            assert torch.equal(mine[name], theirs[name]), name


@pytest.mark.slow
def test_a_run_with_images_encoded_during_start_up_trains_and_evaluates_exactly_the_same(finish, tmp_path):
    import trainer.run as run_module
    from trainer.events import ListSink

    cfg = TrainConfig(model_id="builtin:tiny-gemma3", num_epochs=2, learning_rate=1e-2, lora_r=4, eval_mode="both",
                      max_new_tokens=3, save_steps=0, **SMALL)
    sinks = {}
    for mode in ("off", "on"):
        run_cfg = cfg.replace(preencode=mode, output_dir=str(tmp_path / mode))
        child = PreEncoder.start(run_cfg)
        try:
            sinks[mode] = ListSink()
            assert run_module.run(run_cfg, sinks[mode], child) == 0
        finally:
            if child is not None:
                child.close()

    def of(mode, kind):
        return [{k: v for k, v in e.items() if k not in ("time", "samples_per_s", "eta_s")}
                for e in sinks[mode].events if e["event"] == kind]

    assert of("on", "step") == of("off", "step")  # the same losses bit for bit
    assert of("on", "eval") == of("off", "eval")
    cache = {mode: of(mode, "image_cache")[0] for mode in ("off", "on")}
    assert cache["off"]["images"] == 12 + 6 and "preencoded_train" not in cache["off"]
    assert cache["on"]["images"] == 0  # nothing left to encode in the trainer
    assert (cache["on"]["preencoded_train"], cache["on"]["preencoded_eval"]) == (12, 6)
    predictions = {mode: (tmp_path / mode / "predictions.jsonl").read_text() for mode in ("off", "on")}
    assert predictions["on"] == predictions["off"]


@pytest.mark.slow
def test_features_made_with_other_vision_weights_are_not_adopted(finish, tmp_path, capfd):
    cfg = TrainConfig(model_id="builtin:tiny-gemma3", output_dir=str(tmp_path / "run"), **SMALL).validate()
    child = PreEncoder.start(cfg)
    try:
        model, cache = _parent(cfg)
        with torch.no_grad():
            next(inner_model(model).vision_tower.parameters()).add_(1e-3)  # not the weights the child loaded
        assert child.collect(cache, model) == []
    finally:
        child.close()
    assert not cache.entries
    assert "vision weights differ" in capfd.readouterr().err


@pytest.mark.slow
def test_a_child_asked_to_stop_stops_and_a_failing_one_costs_only_the_speed_up(tmp_path, capfd):
    stopped = PreEncoder.start(TrainConfig(model_id="builtin:tiny-gemma3", output_dir=str(tmp_path / "a"), **SMALL))
    stopped.stop()  # at once: it may finish a chunk, not the run
    model, cache = _parent(TrainConfig(model_id="builtin:tiny-gemma3", **SMALL))
    assert stopped.collect(cache, model) == []  # gone at once, whatever it was doing
    assert stopped.proc.returncode == 0
    stopped.close()

    (tmp_path / "broken").mkdir()  # a model directory without weights: the child fails, the trainer goes on
    (tmp_path / "broken" / "config.json").write_text("{}")
    failing = PreEncoder.start(TrainConfig(model_id=str(tmp_path / "broken"), output_dir=str(tmp_path / "b"),
                                           **SMALL))
    assert failing.proc.wait(120) == 1  # on its own, before the trainer would stop it
    assert failing.collect(cache, model) == []
    failing.close()
    assert not failing.folder.exists() and not stopped.folder.exists()
    err = capfd.readouterr().err
    assert "pre-encode: failed" in err and "pre-encode: stopped by the trainer" in err


def test_the_stdin_watch_does_not_deadlock_the_data_loaders_forked_workers(tmp_path):
    """multiprocessing closes sys.stdin in each forked worker; a thread blocked reading it held its lock (GPU hang)."""
    script = (
        "import threading, torch\n"
        "from trainer.preencode import _Child\n"
        "threading.Thread(target=_Child().watch_stdin, daemon=True).start()\n"
        "loader = torch.utils.data.DataLoader(list(range(8)), batch_size=4, num_workers=2)\n"
        "print(sum(int(b.sum()) for b in loader), flush=True)\n"
        "threading.Event().wait()\n"  # until the watch sees stdin close and exits the process
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=trainer_env(), text=True)
    try:
        assert proc.stdout.readline().strip() == "28"
        proc.stdin.close()
        assert proc.wait(60) == 0
    finally:
        proc.kill()


def test_the_token_reaches_the_child_through_the_environment_only(tmp_path, monkeypatch):
    token = "hf_" + "x" * 34
    monkeypatch.setenv("HF_TOKEN", token)
    started = []

    class FakePopen:
        def __init__(self, args, **kwargs):
            started.append((args, kwargs))
            self.args, self.stdin, self.returncode = args, None, 0

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    child = PreEncoder.start(TrainConfig(output_dir=str(tmp_path / "run")))
    try:
        (args, kwargs), = started
        assert token not in " ".join(args) and "env" not in kwargs  # inherited, like the parent's own
        assert token not in (child.folder / "config.json").read_text()
        assert kwargs["stdout"] == subprocess.DEVNULL  # the parent's stdout is its event stream
        assert oct(os.stat(child.folder).st_mode & 0o777) == "0o700"
    finally:
        child.close()
    assert not child.folder.exists()


@pytest.mark.parametrize("overrides, started, why", [
    ({}, True, ""),
    ({"preencode": "off"}, False, "--preencode off"),
    ({"fast_path": False}, False, "no feature cache"),
    ({"lora_target": "all-linear"}, False, "no feature cache"),
    ({"quantization": "4bit"}, False, "4-bit"),
    ({"model_id": "builtin:tiny-gemma3"}, False, "auto: the builtin demo models"),
    ({"model_id": "builtin:tiny-gemma3", "preencode": "on"}, True, ""),
])
def test_a_second_process_is_started_only_where_it_can_help(overrides, started, why):
    ok, reason = wanted(TrainConfig(**overrides))
    assert ok is started and reason.startswith(why)


def test_a_finished_run_starts_no_child(tmp_path):
    (tmp_path / "DONE").write_text(json.dumps({"finished": True}))
    assert PreEncoder.start(TrainConfig(output_dir=str(tmp_path))) is None
