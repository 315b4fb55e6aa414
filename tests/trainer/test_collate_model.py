"""Loss masking on the Gemma 3 and Gemma 4 processors; LoRA targeting; Gemma 4 forward/backward."""

from __future__ import annotations

import pytest
import torch

from trainer.builtin import synthetic_image
from trainer.collate import IGNORE, MaskingError, build_chat_format, encode_train_sample, pad_batch
from trainer.config import TrainConfig
from trainer.labels import LABELS
from trainer.model import apply_lora, wrapped_module_names
from trainer.train import forward_loss


@pytest.mark.parametrize("family", ["tiny_gemma3", "tiny_gemma4"])
@pytest.mark.parametrize("label", [2, 4, 28])
def test_unmasked_tokens_are_exactly_answer_and_end_of_turn(request, family, label):
    _, processor = request.getfixturevalue(family)
    fmt = build_chat_format(processor, "list")
    sample = encode_train_sample(processor, fmt, synthetic_image(label, 0), label)
    ids, labels = sample["input_ids"][0], sample["labels"][0]
    kept = ids[labels != IGNORE]
    end = "<end_of_turn>" if family == "tiny_gemma3" else "<turn|>"
    assert fmt.end_of_turn == end
    assert processor.tokenizer.decode(kept) == LABELS[label] + end
    # the unmasked block is contiguous, at the very end, and the labels equal the ids there
    n = len(kept)
    assert torch.equal(labels[-n:], ids[-n:]) and (labels[:-n] == IGNORE).all()
    # one <bos> (the template's), and the model turn opens right before the answer
    assert (ids == processor.tokenizer.bos_token_id).sum() == 1
    assert processor.tokenizer.decode(ids[:-n]).endswith("model\n")


def test_gemma4_variable_image_token_counts_keep_the_mask_exact(tiny_gemma4):
    _, processor = tiny_gemma4
    fmt = build_chat_format(processor, "short")
    wide = synthetic_image(3, 0).resize((64, 24))
    samples = [encode_train_sample(processor, fmt, img, 3) for img in (synthetic_image(3, 0), wide)]
    counts = [int((s["input_ids"] == processor.tokenizer.image_token_id).sum()) for s in samples]
    assert counts[0] != counts[1]  # aspect ratio changes the soft-token count
    batch = pad_batch(samples, processor.tokenizer.pad_token_id)
    for row in range(2):
        kept = batch["input_ids"][row][batch["labels"][row] != IGNORE]
        assert processor.tokenizer.decode(kept) == LABELS[3] + "<turn|>"


def test_template_without_end_of_turn_fails_loudly(tiny_gemma3):
    _, processor = tiny_gemma3

    class NoEot:
        tokenizer = processor.tokenizer
        chat_template = "{% for m in messages %}{{ m['content'][0]['text'] if m['content'][0]['type'] == 'text' " \
                        "else m['content'][-1]['text'] }}{% endfor %}"

        def apply_chat_template(self, messages, **kw):
            return processor.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, **kw)

    with pytest.raises(MaskingError, match="end-of-turn"):
        build_chat_format(NoEot())


def test_gemma3_language_lora_skips_the_vision_tower(tiny_gemma3):
    model, _ = tiny_gemma3
    import copy

    peft_model = apply_lora(copy.deepcopy(model), TrainConfig(lora_r=4))
    names = wrapped_module_names(peft_model)
    assert names and all("language_model" in n for n in names)
    assert not any("vision" in n for n in names)


@pytest.mark.parametrize("target", ["language", "all-linear"])
def test_gemma4_lora_targets_never_wrap_clippable_linear(tiny_gemma4, target):
    import copy

    model, processor = tiny_gemma4
    peft_model = apply_lora(copy.deepcopy(model), TrainConfig(lora_r=4, lora_target=target))
    modules = dict(peft_model.named_modules())
    names = wrapped_module_names(peft_model)
    assert names
    assert not any(type(modules[n]).__name__ == "Gemma4ClippableLinear" for n in names)
    if target == "language":
        assert all("language_model" in n for n in names)
    else:  # all-linear reaches the vision tower through the wrapper's inner .linear
        assert any("vision" in n and n.endswith(".linear") for n in names)

    # forward + backward through the LoRA'd model: finite loss, gradients only on adapters
    fmt = build_chat_format(processor, "short")
    batch = pad_batch([encode_train_sample(processor, fmt, synthetic_image(i, 0), i) for i in (1, 9)],
                      processor.tokenizer.pad_token_id)
    peft_model.train()
    loss = forward_loss(peft_model, batch)
    loss.backward()
    assert torch.isfinite(loss)
    grads = {n for n, p in peft_model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all("lora_" in n for n in grads)


def test_end_of_turn_found_when_it_is_only_an_added_token(tiny_gemma4):
    # transformers' Gemma4Processor re-registers the special-token list in its constructor, after which <turn|>
    # is an added (unsplittable) token but no longer "special"; on the GPU image that is the normal case.
    import copy

    from trainer.processing import Gemma4LiteProcessor

    _, processor = tiny_gemma4
    tok = copy.deepcopy(processor.tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<|video|>"]})
    assert tok.convert_tokens_to_ids("<turn|>") not in tok.all_special_ids
    fmt = build_chat_format(Gemma4LiteProcessor(tok, processor.image_processor, processor.chat_template))
    assert fmt.end_of_turn == "<turn|>"


@pytest.mark.parametrize("family", ["tiny_gemma3", "tiny_gemma4"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(request, family):
    import copy

    from trainer.model import enable_gradient_checkpointing

    model, processor = request.getfixturevalue(family)
    cfg = TrainConfig(lora_r=4, lora_dropout=0.0)
    fmt = build_chat_format(processor, "short")
    batch = pad_batch([encode_train_sample(processor, fmt, synthetic_image(i, 0), i) for i in (1, 2)],
                      processor.tokenizer.pad_token_id)
    results = []
    for checkpointing in (False, True):
        peft_model = apply_lora(copy.deepcopy(model), cfg)
        if checkpointing:
            enable_gradient_checkpointing(peft_model)
        peft_model.train()
        loss = forward_loss(peft_model, batch)
        loss.backward()
        grads = [p.grad.clone() for p in peft_model.parameters() if p.grad is not None]
        results.append((loss.detach(), grads))
    assert torch.allclose(results[0][0], results[1][0])
    assert len(results[0][1]) == len(results[1][1]) > 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(results[0][1], results[1][1], strict=True))


def test_a_bf16_load_keeps_bitsandbytes_out_of_the_process(monkeypatch):
    # peft imports bitsandbytes whenever it is installed: 4.4 s of billed GPU start-up that a bf16 run never uses
    import importlib.util
    import sys

    from trainer.config import TrainConfig
    from trainer.model import load_model_and_processor

    monkeypatch.setitem(sys.modules, "bitsandbytes", object())  # so that the test's end restores what was there
    monkeypatch.delitem(sys.modules, "bitsandbytes")
    load_model_and_processor(TrainConfig(model_id="builtin:tiny-gemma3"), token=None)
    assert sys.modules["bitsandbytes"] is None and importlib.util.find_spec("bitsandbytes") is None
