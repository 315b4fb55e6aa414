"""The training step never makes the host wait for the GPU, and what it computes is unchanged.

Answer positions are found on the host (a `nonzero` on the GPU would wait for the forward pass), batches are
copied asynchronously, Gemma 3's placeholder count is checked once per image on the host instead of on the GPU
every forward, and a step's loss is read only once the next step is queued. Each piece is checked against what it
replaces.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from trainer.collate import IGNORE, build_chat_format, encode_prompt
from trainer.config import TrainConfig
from trainer.data import load_splits
from trainer.events import ListSink
from trainer.features import FeatureCache, image_features_passthrough, inner_model
from trainer.model import apply_lora
from trainer.train import (
    ANSWER_ROWS,
    TrainState,
    _Reporter,
    answer_loss_sum,
    answer_rows,
    to_device,
)


def _labels() -> torch.Tensor:
    labels = torch.full((3, 7), IGNORE)
    labels[0, 4:6], labels[1, 6], labels[2, 2:7] = 5, 9, 3  # answers of different lengths, one at the very end
    return labels


def test_host_answer_rows_pick_exactly_the_rows_and_targets_of_the_boolean_mask():
    labels, hidden = _labels(), torch.randn(3, 7, 4)
    rows = answer_rows(labels)
    keep = labels[:, 1:] != IGNORE
    assert torch.equal(hidden.reshape(-1, 4).index_select(0, rows), hidden[:, :-1][keep])
    assert torch.equal(labels.reshape(-1).index_select(0, rows + 1), labels[:, 1:][keep])


def test_to_device_adds_the_answer_rows_and_leaves_the_callers_batch_alone():
    batch = {"input_ids": torch.ones(3, 7, dtype=torch.long), "labels": _labels()}
    moved = to_device(batch, "cpu")
    assert ANSWER_ROWS not in batch
    assert torch.equal(moved[ANSWER_ROWS], answer_rows(batch["labels"]))
    assert torch.equal(moved["labels"], batch["labels"])


@pytest.mark.parametrize("name", ["tiny_gemma3", "tiny_gemma4"])
def test_the_loss_and_gradients_with_host_rows_equal_those_found_on_the_device(request, name):
    model, processor = request.getfixturevalue(name)
    model = apply_lora(copy.deepcopy(model), TrainConfig(lora_dropout=0.0))
    fmt = build_chat_format(processor, "list")
    examples = load_splits("builtin:synthetic-pets").train[::37][:4]
    batch = next(FeatureCache(model, processor, fmt, torch.device("cpu")).train_batches(examples, [[0, 1, 2, 3]], 0))

    def loss_and_grads(b):
        model.zero_grad(set_to_none=True)
        with image_features_passthrough(model):
            loss = answer_loss_sum(model, b)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    on_device, device_grads = loss_and_grads(batch)
    on_host, host_grads = loss_and_grads(to_device(batch, "cpu"))
    assert torch.equal(on_host, on_device)
    for a, b in zip(host_grads, device_grads, strict=True):
        assert torch.equal(a, b)


def test_a_non_finite_loss_stops_training_at_its_own_step_though_read_one_step_late():
    sink, state = ListSink(), TrainState()
    report = _Reporter(sink, state, total=5, steps_per_epoch=5, learning_rate=1e-4)
    assert report.queue(torch.tensor(2.0), 16, 1e-4) == 1
    assert report.queue(torch.tensor(math.nan), 16, 1e-4) == 2
    assert [e["step"] for e in sink.events] == [1] and state.step == 1  # step 2 is queued, not read yet
    with pytest.raises(FloatingPointError, match="at step 2; lower --learning-rate"):
        report.queue(torch.tensor(1.0), 16, 1e-4)
    assert state.losses == [{"step": 1, "loss": 2.0}]


def test_each_step_reports_its_gradient_norm_and_a_non_finite_one_stops_training_at_its_step():
    """A norm of 0 would say no gradient reached the adapter; an infinite one would make the update NaN."""
    sink, state = ListSink(), TrainState()
    report = _Reporter(sink, state, total=5, steps_per_epoch=5, learning_rate=1e-4)
    report.queue(torch.tensor(2.0), 16, 1e-4, torch.tensor(0.75))
    report.queue(torch.tensor(1.9), 16, 1e-4, torch.tensor(math.inf))
    assert sink.events[0]["grad_norm"] == 0.75
    with pytest.raises(FloatingPointError, match="the gradient norm is inf at step 2"):
        report.flush()


def test_every_step_is_reported_in_order_once_flushed():
    sink, state = ListSink(), TrainState(step=10)  # a resumed run
    report = _Reporter(sink, state, total=13, steps_per_epoch=4, learning_rate=1e-4)
    for step in (11, 12, 13):
        assert report.queue(torch.tensor(float(step)), 8, 1e-4) == step
    report.flush()
    assert [(e["step"], e["loss"]) for e in sink.events] == [(11, 11.0), (12, 12.0), (13, 13.0)]
    assert state.step == 13 and sink.events[-1]["eta_s"] == 0


def test_gemma3_placeholder_mask_stand_in_gives_the_same_mask_and_only_inside_the_block(tiny_gemma3):
    model, processor = tiny_gemma3
    inner = inner_model(model)
    token = inner.config.image_token_id
    input_ids = torch.tensor([[1, token, token, 5], [token, token, 7, 8]])
    embeds, features = torch.zeros(2, 4, 3), torch.zeros(2, 2, 3)
    expected = inner.get_placeholder_mask(input_ids, inputs_embeds=embeds, image_features=features)
    with image_features_passthrough(model):
        assert torch.equal(inner.get_placeholder_mask(input_ids, inputs_embeds=embeds, image_features=features),
                           expected)
    assert "get_placeholder_mask" not in vars(inner)  # the model's own method again


@pytest.mark.parametrize("name", ["tiny_gemma3", "tiny_gemma4"])
def test_a_prompt_whose_placeholders_do_not_match_its_features_fails_when_cached(request, name):
    model, processor = request.getfixturevalue(name)
    fmt = build_chat_format(processor, "list")
    example = load_splits("builtin:synthetic-pets").train[0]
    prompt = encode_prompt(processor, fmt, example.open())
    cache = FeatureCache(model, processor, fmt, torch.device("cpu"))
    cache.add(["fine"], [prompt])  # the processor's own prompt matches
    token = inner_model(model).config.image_token_id
    ids = prompt["input_ids"].clone()
    ids[0, (ids[0] == token).nonzero()[0]] = processor.tokenizer.pad_token_id  # one placeholder fewer
    with pytest.raises(ValueError, match="image broken: the prompt has .* image tokens but"):
        cache.add(["broken"], [{**prompt, "input_ids": ids}])
    assert "broken" not in cache
