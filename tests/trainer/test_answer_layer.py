"""The last decoder layer cut to the answer rows computes what the whole layer computes there.

The loss reads the model's output only at the answer positions, so the trainer computes the last layer's query,
attention output and MLP at those rows alone (trainer.answer_layer). The cut step must give the full step's loss,
every adapter gradient and the same RNG state afterwards (its dropout masks are the full layer's), on batches whose
samples have answers of different lengths and rows with no answer at all.
"""

from __future__ import annotations

import copy

import pytest
import torch

from trainer.answer_layer import answer_grid, last_layer
from trainer.collate import IGNORE, build_chat_format, encode_train_sample, pad_batch
from trainer.config import TrainConfig
from trainer.data import load_splits
from trainer.fused import fused_training
from trainer.model import apply_lora
from trainer.train import answer_loss_sum, answer_rows, step_context, to_device


def _model_and_batch(request, name: str, dropout: float, dtype=torch.float32):
    model, processor = request.getfixturevalue(name)
    model = apply_lora(copy.deepcopy(model).to(dtype), TrainConfig(lora_dropout=dropout))
    with torch.no_grad():  # B starts at zero; a trained adapter exercises the whole LoRA path
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    examples = load_splits("builtin:synthetic-pets").train[::37][:4]  # different labels: answers of other lengths
    fmt = build_chat_format(processor, "list")
    batch = pad_batch([encode_train_sample(processor, fmt, ex.open(), ex.label) for ex in examples],
                      processor.tokenizer.pad_token_id)
    batch["labels"][-1] = IGNORE  # a row with no answer, like the filler rows of a fixed-shape batch
    batch["pixel_values"] = batch["pixel_values"].to(dtype)
    return model.train(), batch


def _step(model, batch, cut: bool, compiled: bool = False):
    """Loss, adapter gradients and the RNG state after one fused forward/backward, cut or whole."""
    torch.manual_seed(7)  # the same dropout masks on both paths
    model.zero_grad(set_to_none=True)
    context = step_context(model, False, True, compiled) if cut else fused_training(model, compiled=compiled)
    with context:
        loss = answer_loss_sum(model, to_device(batch, "cpu"))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads, torch.get_rng_state()


def test_the_answer_grid_lists_the_answer_rows_in_the_loss_order():
    labels = torch.full((3, 9), IGNORE)
    labels[0, 5:8], labels[1, 7:9] = 1, 2  # row 2: no answer
    grid, slots = answer_grid(labels)
    assert grid.shape == (3, 3)
    flat = (grid + 9 * torch.arange(3)[:, None]).flatten().index_select(0, slots)
    assert torch.equal(flat, answer_rows(labels))
    assert torch.equal(grid[2], torch.full((3,), 8))  # padded with the last position


def test_cutting_the_last_layer_gives_the_whole_layer_loss_gradients_and_rng_state(request):
    model, batch = _model_and_batch(request, "tiny_gemma3", dropout=0.1)
    assert last_layer(model.get_base_model()) is not None
    loss, grads, rng = _step(model, batch, cut=False)
    cut_loss, cut_grads, cut_rng = _step(model, batch, cut=True)
    assert cut_loss == pytest.approx(loss, rel=1e-5)
    assert torch.equal(cut_rng, rng)  # the masks drawn are the whole layer's: the next step draws the same
    assert grads.keys() == cut_grads.keys() and len(grads) > 0
    for n, g in grads.items():
        assert (cut_grads[n] - g).norm() <= 1e-5 * g.norm() + 1e-12, n
    last = model.get_base_model().model.language_model.layers[-1]
    assert "forward" not in vars(last) and last._compiled_call_impl is None  # nothing left patched


def test_in_bf16_the_cut_layer_matches_within_bf16_rounding(request):
    model, batch = _model_and_batch(request, "tiny_gemma3", dropout=0.1, dtype=torch.bfloat16)
    loss, grads, _ = _step(model, batch, cut=False)
    cut_loss, cut_grads, _ = _step(model, batch, cut=True)
    assert cut_loss == pytest.approx(loss, rel=2e-2)
    cos = [torch.nn.functional.cosine_similarity(cut_grads[n].flatten().float(), g.flatten().float(), dim=0)
           for n, g in grads.items() if g.abs().sum() > 0]
    assert min(cos) > 0.99


def test_gemma4_and_checkpointed_models_keep_the_whole_layer(request):
    model, batch = _model_and_batch(request, "tiny_gemma4", dropout=0.0)
    assert last_layer(model.get_base_model()) is None
    assert _step(model, batch, cut=True)[0] == pytest.approx(_step(model, batch, cut=False)[0], rel=1e-6)

    model, batch = _model_and_batch(request, "tiny_gemma3", dropout=0.0)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    base = model.get_base_model()
    with step_context(model, False, True):
        assert "_gemmactl_answer_layer" not in vars(base)  # the recompute in backward would run the whole layer


@pytest.mark.slow
def test_in_a_compiled_step_the_other_layers_stay_compiled_and_the_cut_one_runs_eagerly(request):
    import torch._dynamo

    from trainer.fused import decoder_layers

    model, batch = _model_and_batch(request, "tiny_gemma3", dropout=0.1)
    loss, grads, rng = _step(model, batch, cut=False)
    torch._dynamo.reset()
    cut_loss, cut_grads, cut_rng = _step(model, batch, cut=True, compiled=True)
    assert cut_loss == pytest.approx(loss, rel=1e-5)
    assert torch.equal(cut_rng, rng)
    for n, g in grads.items():
        assert (cut_grads[n] - g).norm() <= 1e-4 * g.norm() + 1e-12, n
    assert all(layer._compiled_call_impl is None for layer in decoder_layers(model))
