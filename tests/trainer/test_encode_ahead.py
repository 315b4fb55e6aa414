"""The first epoch's images are encoded ahead of the steps, on a thread: the same batches, only sooner.

trainer.encoding runs the frozen vision tower for the images the next batches need while the training thread
compiles, steps and checkpoints. These stories hold it to the in-line path: the same features bit for bit, no
random numbers drawn (so dropout masks do not depend on timing), errors raised where training sees them, and a
thread that stops when training does. Plus SigLIP's residual stream laid out contiguously, with the same features.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import types

import pytest
import torch

from trainer.collate import build_chat_format, encode_prompt
from trainer.config import TrainConfig
from trainer.data import DataError, load_splits
from trainer.encoding import choose_encode_ahead, encode_bytes
from trainer.features import FeatureCache, inner_model
from trainer.fused import fusable
from trainer.model import apply_lora, contiguous_vision_stream

FAMILIES = ["tiny_gemma3", "tiny_gemma4"]


def _setup(request, name):
    model, processor = request.getfixturevalue(name)
    model = apply_lora(copy.deepcopy(model), TrainConfig())
    return model.train(), processor, build_chat_format(processor, "list")


def _batches(model, processor, fmt, examples, index_batches, ahead: bool):
    cache = FeatureCache(model, processor, fmt, torch.device("cpu"))
    return list(cache.train_batches(examples, index_batches, num_workers=0, ahead=ahead)), cache


def _encoder_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "encode-ahead"]


@pytest.mark.parametrize("name", FAMILIES)
def test_batches_encoded_ahead_equal_the_in_line_ones_bit_for_bit(request, name):
    model, processor, fmt = _setup(request, name)
    examples = load_splits("builtin:synthetic-pets").train[:6]
    index_batches = [[0, 1], [2, 0], [3, 4], [5, 1]]  # repeats: encoded once, for the first batch that needs them
    inline, inline_cache = _batches(model, processor, fmt, examples, index_batches, ahead=False)
    ahead, ahead_cache = _batches(model, processor, fmt, examples, index_batches, ahead=True)

    assert inline_cache.encoded == ahead_cache.encoded == 6
    for a, b in zip(inline, ahead, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    assert not _encoder_threads()  # the generator ran out: the thread is gone


@pytest.mark.parametrize("name", FAMILIES)
def test_an_encode_draws_no_random_numbers_so_dropout_masks_do_not_depend_on_when_it_runs(request, name):
    model, processor, fmt = _setup(request, name)
    examples = load_splits("builtin:synthetic-pets").train[:3]
    cache = FeatureCache(model, processor, fmt, torch.device("cpu"))
    prompts = [encode_prompt(processor, fmt, ex.open()) for ex in examples]
    torch.manual_seed(0)
    before = torch.get_rng_state()
    cache.add([ex.image_id for ex in examples], prompts)  # the vision tower in train mode, as in the first epoch
    assert cache.encoded == 3
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("name", FAMILIES)
def test_the_training_step_patches_nothing_on_the_image_side(request, name):
    model, _, _ = _setup(request, name)
    image_side = {id(m) for m in inner_model(model).vision_tower.modules()}
    projector = getattr(inner_model(model), "multi_modal_projector", None) or inner_model(model).embed_vision
    image_side |= {id(m) for m in projector.modules()}
    patched = [m for m, _ in fusable(model)]
    assert patched and not [m for m in patched if id(m) in image_side]


def test_a_bad_image_found_ahead_is_raised_in_the_training_thread_and_the_thread_stops(request):
    model, processor, fmt = _setup(request, "tiny_gemma3")
    examples = list(load_splits("builtin:synthetic-pets").train[:4])
    examples[3] = dataclasses.replace(examples[3], source=b"not a jpeg")
    cache = FeatureCache(model, processor, fmt, torch.device("cpu"))
    batches = cache.train_batches(examples, [[0, 1], [2, 3]], num_workers=0, ahead=True)

    assert next(batches)["input_ids"].shape[0] == 2  # the first batch's images were fine
    with pytest.raises(DataError, match="cannot decode image"):
        next(batches)
    assert not _encoder_threads()


def test_training_that_stops_early_stops_the_encoder(request):
    model, processor, fmt = _setup(request, "tiny_gemma3")
    examples = load_splits("builtin:synthetic-pets").train[:8]
    cache = FeatureCache(model, processor, fmt, torch.device("cpu"))
    batches = cache.train_batches(examples, [[i] for i in range(8)], num_workers=0, ahead=True)
    next(batches)
    batches.close()  # what trainer.train does when a step fails
    assert not _encoder_threads()
    assert 1 <= cache.encoded <= 8


def test_siglip_residual_stream_is_contiguous_and_the_features_are_unchanged(request):
    model, _ = request.getfixturevalue("tiny_gemma3")
    model = copy.deepcopy(model)
    inner = inner_model(model)
    size = inner.config.vision_config.image_size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    layouts = []
    first = inner.vision_tower.encoder.layers[0]
    first.register_forward_pre_hook(lambda module, args: layouts.append(args[0].is_contiguous()))
    with torch.no_grad():
        before = inner.get_image_features(pixels, return_dict=True).pooler_output
        assert contiguous_vision_stream(model) == 1
        after = inner.get_image_features(pixels, return_dict=True).pooler_output
    assert layouts == [False, True]  # transformers hands the first layer a transposed view; now a plain tensor
    assert torch.equal(before, after)


def test_gemma4_has_no_siglip_embeddings_to_fix(request):
    model, _ = request.getfixturevalue("tiny_gemma4")
    assert contiguous_vision_stream(copy.deepcopy(model)) == 0


def _plan(fixed: float, per_sample: float, budget: float, micro: int = 16):
    return types.SimpleNamespace(fixed_gib=fixed, per_sample_gib=per_sample, budget_gib=budget, micro_batch=micro)


def test_encode_ahead_is_chosen_only_when_an_encode_fits_beside_the_planned_step(request):
    model, _ = request.getfixturevalue("tiny_gemma3")
    cuda = torch.device("cuda")
    need = encode_bytes(model, 16) / 2**30
    on, why = choose_encode_ahead(model, _plan(10, 2, 42 + need + 0.1), cuda, 16, None)
    assert on and "fits beside the step's 42.0 GiB" in why
    off, why = choose_encode_ahead(model, _plan(10, 2, 42 + need / 2), cuda, 16, None)
    assert not off and "encoded between steps" in why
    assert choose_encode_ahead(model, _plan(10, 2, 0), torch.device("cpu"), 16, None)[0]


def test_the_encode_estimate_at_real_dims_covers_what_an_h100_measured():
    # SigLIP at 896 px (gemma-3-4b), 16 images: 65,536 patches x (4,304 MLP + 4 x 1,152) bf16 values is ~1.1 GiB
    # of live activations; the estimate doubles that, with the fp32 and bf16 pixels
    vision = types.SimpleNamespace(image_size=896, patch_size=14, intermediate_size=4304, hidden_size=1152)
    model = types.SimpleNamespace(config=types.SimpleNamespace(vision_config=vision))
    assert 2.0 < encode_bytes(model, 16) / 2**30 < 6.0


@pytest.mark.slow
@pytest.mark.parametrize("model_id", ["builtin:tiny-gemma3", "builtin:tiny-gemma4"])
def test_training_images_encoded_during_the_baseline_train_and_evaluate_exactly_the_same(tmp_path, monkeypatch,
                                                                                        model_id):
    """On a GPU the first epoch's encodes start before the baseline eval; the run must not notice (CPU: forced)."""
    import json
    import time

    import trainer.run as run_module
    from trainer.events import ListSink

    cfg = TrainConfig(model_id=model_id, dataset="builtin:synthetic-pets", prompt="short", train_size=12,
                      eval_size=6, batch_size=2, gradient_accumulation_steps=2, num_epochs=2, learning_rate=1e-2,
                      lora_r=4, eval_mode="both", max_new_tokens=3, num_workers=0, save_steps=0)
    baseline = run_module._baseline

    def baseline_once_encodes_began(*args):  # the eval starts only once the thread has encoded something
        cache = args[-1].cache
        for _ in range(600):
            if cache.encoded:
                break
            time.sleep(0.05)
        return baseline(*args)

    sinks = {}
    for early in (False, True):
        monkeypatch.setattr(run_module, "encode_during_baseline", lambda plan, device, early=early: early)
        monkeypatch.setattr(run_module, "_baseline", baseline_once_encodes_began if early else baseline)
        sinks[early] = ListSink()
        assert run_module.run(cfg.replace(output_dir=str(tmp_path / str(early))), sinks[early]) == 0
        assert not _encoder_threads()

    def of(early, kind):
        return [{k: v for k, v in e.items() if k not in ("time", "samples_per_s", "eta_s")}
                for e in sinks[early].events if e["event"] == kind]

    assert of(True, "step") == of(False, "step")  # the same losses bit for bit: the same features, dropout masks
    assert of(True, "eval") == of(False, "eval")
    caches = {early: of(early, "image_cache")[0] for early in (False, True)}
    assert caches[False]["during_baseline"] == 0 and 1 <= caches[True]["during_baseline"] <= 12
    assert caches[True]["images"] == caches[False]["images"] == 12 + 6  # still each image once

    def predictions(early):
        return (tmp_path / str(early) / "predictions.jsonl").read_text().splitlines()

    assert [json.loads(r) for r in predictions(True)] == [json.loads(r) for r in predictions(False)]


def test_each_batch_decodes_in_one_piece_per_worker_and_comes_back_whole_in_order():
    """trainer.features._loader: the first batch's images decode on every worker at once, and each encode still
    gets exactly its batch (the in-line path's chunks), in order."""
    from trainer.features import _joined, _split

    batches = [list(range(0, 16)), list(range(16, 20)), [20], list(range(21, 28))]
    pieces, counts = _split(batches, 2)
    assert pieces[:2] == [list(range(0, 8)), list(range(8, 16))] and counts == [2, 2, 1, 2]
    assert all(len(p) <= 8 for p in pieces) and sum(pieces, []) == list(range(28))
    loader = torch.utils.data.DataLoader(list(range(28)), batch_sampler=pieces, num_workers=2,
                                         collate_fn=lambda items: [(i, {"image": i}) for i in items])
    assert [[i for i, _ in batch] for batch in _joined(iter(loader), counts)] == batches
