"""The fused forwards compute what peft's and transformers' modules compute, on both families.

trainer.fused swaps in, for the duration of a training step, a LoRA forward in the activations' dtype with the
adapter's add inside one addmm, and Gemma's RMSNorm through torch's fused kernel. Each is
held against the module it replaces, then whole models are compared: loss and every adapter gradient.
"""

from __future__ import annotations

import copy

import pytest
import torch

from trainer.collate import build_chat_format, encode_train_sample, pad_batch
from trainer.config import TrainConfig
from trainer.data import load_splits
from trainer.fused import decoder_layers, fusable, fused_training, gemma_rms_norm
from trainer.model import apply_lora
from trainer.train import plain_loss_sum

FAMILIES = ["tiny_gemma3", "tiny_gemma4"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemma3_rms_norm_matches_transformers(dtype):
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm

    norm = Gemma3RMSNorm(64, eps=1e-6)
    torch.nn.init.normal_(norm.weight, std=0.3)
    x = torch.randn(3, 5, 64).to(dtype) * 4
    # one fused kernel vs five: the same fp32 math up to summation order, then one rounding to the input dtype
    torch.testing.assert_close(gemma_rms_norm(x, norm.weight, norm.eps, 1.0), norm(x),
                               rtol=1e-6 if dtype == torch.float32 else 8e-3, atol=1e-6)


@pytest.mark.parametrize("with_scale", [True, False])
def test_gemma4_rms_norm_matches_transformers(with_scale):
    from transformers.models.gemma4.modeling_gemma4 import Gemma4RMSNorm

    norm = Gemma4RMSNorm(64, eps=1e-6, with_scale=with_scale)
    if with_scale:
        torch.nn.init.normal_(norm.weight, mean=1.0, std=0.3)
    x = torch.randn(3, 5, 64, dtype=torch.bfloat16) * 4
    fused = gemma_rms_norm(x, norm.weight if with_scale else None, norm.eps, 0.0)
    # Gemma 4 writes rsqrt as pow(m, -0.5): the same value up to one bf16 rounding step
    torch.testing.assert_close(fused, norm(x), rtol=8e-3, atol=1e-6)


def _lora_model(request, name, dropout: float, dtype=torch.float32):
    model, processor = request.getfixturevalue(name)
    model = apply_lora(copy.deepcopy(model).to(dtype), TrainConfig(lora_dropout=dropout))
    with torch.no_grad():  # B starts at zero; a trained adapter exercises the whole LoRA path
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    examples = load_splits("builtin:synthetic-pets").train[:3]
    fmt = build_chat_format(processor, "list")
    batch = pad_batch([encode_train_sample(processor, fmt, ex.open(), ex.label) for ex in examples],
                      processor.tokenizer.pad_token_id)
    batch["pixel_values"] = batch["pixel_values"].to(dtype)
    return model.train(), batch


def _loss_and_grads(model, batch, fused: bool, compiled: str | None = None):
    torch.manual_seed(7)  # the same dropout masks on both paths
    model.zero_grad(set_to_none=True)
    with fused_training(model, fused, compiled):
        loss = plain_loss_sum(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads


@pytest.mark.parametrize("name", FAMILIES)
def test_fused_step_gives_peft_loss_and_gradients(request, name):
    model, batch = _lora_model(request, name, dropout=0.1)
    assert {type(m).__name__ for m, _ in fusable(model)} >= {"Linear", "Gemma3RMSNorm" if "3" in name
                                                             else "Gemma4RMSNorm"}
    loss, grads = _loss_and_grads(model, batch, fused=False)
    fused_loss, fused_grads = _loss_and_grads(model, batch, fused=True)
    assert fused_loss == pytest.approx(loss, rel=1e-5)
    assert grads.keys() == fused_grads.keys() and len(grads) > 0
    for n, g in grads.items():  # summation order differs (addmm): compare norms, not single elements
        assert (fused_grads[n] - g).norm() <= 1e-5 * g.norm() + 1e-12, n


def test_in_bf16_the_adapter_keeps_fp32_master_weights_and_matches_within_bf16_rounding(request):
    model, batch = _lora_model(request, "tiny_gemma3", dropout=0.0, dtype=torch.bfloat16)
    for m in model.modules():  # peft keeps the adapters in fp32 on a bf16 base (autocast_adapter_dtype)
        if hasattr(m, "lora_A") and hasattr(m, "base_layer"):
            m.lora_A.float(), m.lora_B.float()
    loss, grads = _loss_and_grads(model, batch, fused=False)
    fused_loss, fused_grads = _loss_and_grads(model, batch, fused=True)
    assert fused_loss == pytest.approx(loss, rel=2e-2)
    assert all(g.dtype == torch.float32 for g in fused_grads.values())
    cos = [torch.nn.functional.cosine_similarity(fused_grads[n].flatten(), g.flatten(), dim=0) for n, g in grads.items()
           if g.abs().sum() > 0]
    assert min(cos) > 0.98


def test_the_patches_are_gone_after_the_block_and_adapters_can_be_switched_off_inside(request):
    model, batch = _lora_model(request, "tiny_gemma3", dropout=0.0)
    patched = [m for m, _ in fusable(model)]
    with torch.no_grad():
        with model.disable_adapter():
            off = plain_loss_sum(model, batch).item()
        with fused_training(model), model.disable_adapter():
            off_fused = plain_loss_sum(model, batch).item()
    assert off_fused == pytest.approx(off, rel=1e-5)
    assert not any("forward" in vars(m) for m in patched)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["plain", "autotuned"])  # autotuned's Triton templates run only on a GPU (there:
# loss within 1.7e-5, BENCHMARKS.md); here its options must compile to the same step
def test_the_compiled_step_draws_eager_dropout_masks_and_gives_the_same_loss_and_gradients(request, mode):
    import torch._dynamo

    model, batch = _lora_model(request, "tiny_gemma3", dropout=0.1)
    loss, grads = _loss_and_grads(model, batch, fused=True)
    torch._dynamo.reset()
    compiled_loss, compiled_grads = _loss_and_grads(model, batch, fused=True, compiled=mode)
    assert compiled_loss == pytest.approx(loss, rel=1e-5)
    for n, g in grads.items():
        assert (compiled_grads[n] - g).norm() <= 1e-4 * g.norm() + 1e-12, n
    # another micro-batch shape reuses the dynamic-shape graphs; outside the block the layers run eagerly
    small = {k: v[:2] for k, v in batch.items()}
    assert _loss_and_grads(model, small, fused=True, compiled=mode)[0] == pytest.approx(
        _loss_and_grads(model, small, fused=True)[0], rel=1e-5)
    assert all(layer._compiled_call_impl is None for layer in decoder_layers(model))


def test_a_copied_model_runs_its_own_fused_forwards(request):
    model, batch = _lora_model(request, "tiny_gemma3", dropout=0.0)
    _loss_and_grads(model, batch, fused=True)  # the fused forwards are made once and kept per module
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in twin.named_parameters():
            if "lora_B" in n:
                p.zero_()  # the copy's adapter now adds nothing; the original's still does
    with torch.no_grad():
        with fused_training(twin):
            fused = plain_loss_sum(twin, batch).item()
        with twin.disable_adapter():
            base = plain_loss_sum(twin, batch).item()
    assert fused == pytest.approx(base, rel=1e-5)


def test_the_modules_to_patch_are_found_once_per_model(request, monkeypatch):
    import trainer.fused

    model, batch = _lora_model(request, "tiny_gemma3", dropout=0.0)
    scans = []
    real = trainer.fused.fusable
    monkeypatch.setattr(trainer.fused, "fusable", lambda m: scans.append(m) or real(m))
    for _ in range(3):  # the trainer enters the block once per step: walking every module each time cost ~35 ms
        with torch.no_grad(), fused_training(model):
            plain_loss_sum(model, batch)
    assert len(scans) == 1
    copied = copy.deepcopy(model)
    with fused_training(copied):
        assert all("forward" in vars(m) for m, _ in real(copied))
    assert len(scans) == 2
