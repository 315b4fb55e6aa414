"""Encode each image once: with the vision tower frozen, its features never change, so they are cached.

LoRA on the language model only (the default `--lora-target language`) leaves the vision tower and projector
frozen: an image's features are the same in every epoch, in the baseline eval and in the final eval. The cache
fills lazily - eval images during the baseline eval, training images during the first epoch, for the steps that
first see them (encoded ahead of those steps on a thread of their own: trainer.encoding) - and every later use
skips JPEG decode, resize and the vision tower. Decode and resize run in DataLoader workers with pinned memory,
only for images that are not cached yet.

Features go back in through the model's own forward: `image_features_passthrough` makes the inner Gemma3Model /
Gemma4Model take `pixel_values` as already-encoded features, so everything downstream (the placeholder scatter,
Gemma 3's bidirectional image mask, Gemma 4's per-layer inputs) is the unmodified transformers code.
"""

from __future__ import annotations

import contextlib
import threading
from contextlib import contextmanager

import torch

from trainer.batches import chunked
from trainer.collate import ChatFormat, answer_ids, append_answer, encode_prompt, fixed_shape_batch, pad_batch

PIXEL_KEYS = ("pixel_values", "image_position_ids")
BLOCKING_EVENTS = True  # the encode-ahead thread sleeps on its encodes' events instead of spinning: `_record`


def frozen_vision(cfg) -> bool:
    """True when no gradient reaches the vision tower (LoRA on the language model only)."""
    return cfg.lora_target == "language"


def inner_model(model):
    """The Gemma3Model / Gemma4Model inside (Peft)ForConditionalGeneration: the module that encodes images."""
    for module in model.modules():
        if all(hasattr(module, a) for a in ("get_image_features", "language_model", "vision_tower")):
            return module
    raise TypeError(f"{type(model).__name__} has no vision-language core (get_image_features + vision_tower)")


@contextmanager
def image_features_passthrough(model):
    """Inside this block the model takes `pixel_values` = cached features and skips the vision tower."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    inner = inner_model(model)

    def passthrough(pixel_values, *args, **kwargs):
        # Gemma 3 expects (B, 256, H); Gemma 4 a sequence of per-image (n_i, H) blocks that it concatenates.
        feats = pixel_values if pixel_values.dim() == 3 else (pixel_values,)
        return BaseModelOutputWithPooling(pooler_output=feats)

    inner.get_image_features = passthrough  # an instance attribute shadows the method for this block only
    placeholder = _host_checked_placeholder_mask(inner)
    if placeholder is not None:
        inner.get_placeholder_mask = placeholder
    try:
        yield
    finally:
        del inner.get_image_features
        if placeholder is not None:
            del inner.get_placeholder_mask


def _host_checked_placeholder_mask(inner):
    """Gemma 3's placeholder mask without its GPU-side count check, or None for models that need no stand-in.

    Gemma3Model.get_placeholder_mask formats the GPU count of image tokens into its error message on every call,
    which makes the host wait for the GPU at the start of every forward. The same check is made on the host,
    once per image, when the features enter the cache (FeatureCache.add).
    """
    import inspect

    if "image_features" not in inspect.signature(inner.get_placeholder_mask).parameters:
        return None  # Gemma 4's returns its masks without a check
    original, token = inner.get_placeholder_mask, inner.config.image_token_id

    def mask(input_ids, inputs_embeds, image_features):
        if input_ids is None:
            return original(input_ids, inputs_embeds=inputs_embeds, image_features=image_features)
        return (input_ids == token).unsqueeze(-1).to(inputs_embeds.device)

    return mask


class _Prompts(torch.utils.data.Dataset):
    """Worker side: decode + resize + tokenise an example."""

    def __init__(self, examples, processor, fmt: ChatFormat):
        self.examples, self.processor, self.fmt = examples, processor, fmt

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> tuple[int, dict]:
        return index, encode_prompt(self.processor, self.fmt, self.examples[index].open())


def _as_list(items):
    return items


class FeatureCache:
    """Prompt tensors (CPU) + image features (GPU, or pinned CPU when large) per image id, filled on first use."""

    def __init__(self, model, processor, fmt: ChatFormat, device: torch.device, offload: bool = False):
        self.model, self.processor, self.fmt, self.device, self.offload = model, processor, fmt, device, offload
        self.entries: dict[str, dict[str, torch.Tensor]] = {}
        self.encoded = 0  # images that went through the vision tower
        self._count = threading.Lock()  # `encoded` grows from the encode-ahead thread and the eval alike

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    @torch.no_grad()
    def add(self, keys: list[str], prompts: list[dict[str, torch.Tensor]], stream=None):
        """Run the vision tower once over these prompts' images and keep their features.

        `stream`: a side CUDA stream to encode on (the encode-ahead thread); the entries then carry the event that
        the training stream must wait for before reading them (`wait_ready`), which is also returned.
        """
        inner = inner_model(self.model)
        dtype = next(p.dtype for p in inner.vision_tower.parameters() if p.is_floating_point())
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            # each image's (pinned) pixels to the GPU first, then cat and cast there: a cat + cast of 16 fp32 896 px
            # images on the host is ~150 MB of single-threaded work per step, serial with the GPU
            pixels = torch.cat([p["pixel_values"].to(self.device, non_blocking=True) for p in prompts]).to(dtype)
            # the class's method: inside a training step an instance attribute stands in for it (passthrough)
            encode = type(inner).get_image_features
            if "image_position_ids" in prompts[0]:  # Gemma 4: variable patch counts, padded rows marked -1
                positions = torch.cat([p["image_position_ids"] for p in prompts]).to(self.device)
                feats = encode(inner, pixels, positions, return_dict=True).pooler_output
            else:  # Gemma 3: a fixed 256 soft tokens per image, kept with their (1, 256, H) image axis
                feats = encode(inner, pixels, return_dict=True).pooler_output.unsqueeze(1)
            entries = [self._entry(inner, key, prompt, feat)
                       for key, prompt, feat in zip(keys, prompts, feats, strict=True)]
            ready = _record(stream)
        for key, entry in zip(keys, entries, strict=True):
            if ready is not None:
                entry["ready"] = ready
            self.entries[key] = entry  # last: a waiting reader sees whole entries only
        with self._count:
            self.encoded += len(keys)
        return ready

    def _entry(self, inner, key: str, prompt: dict[str, torch.Tensor], feat: torch.Tensor) -> dict:
        _check_placeholders(key, prompt["input_ids"], inner.config.image_token_id, feat.shape[-2])
        entry = {k: v for k, v in prompt.items() if k not in PIXEL_KEYS}
        entry["pixel_values"] = feat.to("cpu").pin_memory() if self.offload else feat.clone()
        return entry

    def wait_ready(self, keys: list[str]) -> None:
        """Order the current CUDA stream after the encodes of these entries (made on the encode-ahead stream)."""
        for key in keys:
            ready = self.entries[key].pop("ready", None)
            if ready is not None:
                torch.cuda.current_stream().wait_event(ready)
                if not self.offload:  # the side stream's pool must not reuse it while this stream may read it
                    self.entries[key]["pixel_values"].record_stream(torch.cuda.current_stream())

    def prompt(self, key: str) -> dict[str, torch.Tensor]:
        entry = self.entries[key]
        return {**entry, "pixel_values": entry["pixel_values"].to(self.device, non_blocking=True)}

    def prompts(self, examples, batch_size: int, num_workers: int) -> list[dict[str, torch.Tensor]]:
        """Prompt tensors with features for `examples`, encoding (in worker-decoded batches) the missing ones."""
        missing = [i for i, ex in enumerate(examples) if ex.image_id not in self]
        if missing:
            loader = self._loader(examples, [missing[s:s + batch_size] for s in range(0, len(missing), batch_size)],
                                  num_workers)
            for chunk in loader:
                self.add([examples[i].image_id for i, _ in chunk], [p for _, p in chunk])
        return [self.prompt(ex.image_id) for ex in examples]

    def _loader(self, examples, batches, num_workers: int, generator=None):
        """Each batch's [(index, prompt)], decoded in DataLoader workers (which start now).

        A batch is decoded in one piece per worker and joined again, so each encode waits for the slowest worker's
        share of it, not for one worker's whole batch: the first training batch (16 images, ~30-50 ms each) or
        eval chunk (62) is ready about as many times sooner as there are workers. Each worker keeps as many images
        queued as it did with whole batches.
        """
        workers = num_workers if self.device.type == "cuda" else 0  # CPU: workers only compete for the cores
        pieces, counts = _split(batches, max(workers, 1))
        loader = torch.utils.data.DataLoader(_Prompts(examples, self.processor, self.fmt), batch_sampler=pieces,
                                             num_workers=workers, collate_fn=_as_list, generator=generator,
                                             pin_memory=self.device.type == "cuda",
                                             prefetch_factor=2 * max(workers, 1) if workers else None)
        return _joined(iter(loader), counts)

    def encoder(self, examples, index_batches, num_workers: int, generator=None, ahead: bool = False,
                what: str = "encode ahead"):
        """The trainer.encoding.Encoder of the images these batches need that are not cached yet, in the order
        the batches first need them (one chunk each). Its thread (when `ahead`) starts on `start()` or `with`;
        `what` names it in the log."""
        from trainer.encoding import Encoder

        chunks = self._uncached_chunks(examples, index_batches)
        loader = self._loader(examples, chunks, num_workers, generator) if chunks else None
        return Encoder(self, examples, loader, threaded=ahead and loader is not None, what=what)

    def train_batches(self, examples, index_batches, num_workers: int, generator=None,
                      shape: tuple[int, int] | None = None, ahead: bool = False, encoder=None):
        """Padded training micro-batches (prompt + answer, features as pixel_values) for each index list.

        Images not cached yet (the first epoch's) are decoded in DataLoader workers and encoded in the order the
        batches first need them: on a thread of their own when `ahead` (trainer.encoding: the GPU encodes while
        the host compiles, prepares or waits), else in line, just before the batch that needs them.
        `encoder`: one made (and maybe started) earlier by `encoder()` for the same arguments.
        `shape` (rows, width): every batch padded to it (trainer.collate.fixed_shape_batch), for compiled steps.
        """
        pad_id = self.processor.tokenizer.pad_token_id
        encoder = encoder or self.encoder(examples, index_batches, num_workers, generator, ahead)
        with encoder:
            for batch in index_batches:
                keys = [examples[i].image_id for i in batch]
                encoder.ensure(keys)
                samples = [append_answer(self.prompt(key), answer_ids(self.processor.tokenizer, self.fmt,
                                                                      examples[i].label))
                           for i, key in zip(batch, keys, strict=True)]
                yield fixed_shape_batch(samples, pad_id, *shape) if shape else pad_batch(samples, pad_id)

    def _uncached_chunks(self, examples, index_batches) -> list[list[int]]:
        """The uncached images of each batch that first needs them, in batch order (one encode each)."""
        seen, chunks = set(), []
        for batch in index_batches:
            chunk = [i for i in batch if examples[i].image_id not in self and examples[i].image_id not in seen]
            seen.update(examples[i].image_id for i in chunk)
            if chunk:
                chunks.append(chunk)
        return chunks

    def gib(self) -> float:
        return sum(e["pixel_values"].numel() * e["pixel_values"].element_size() for e in self.entries.values()) / 2**30


def _split(batches: list[list[int]], parts: int) -> tuple[list[list[int]], list[int]]:
    """Each batch cut into at most `parts` contiguous pieces; (the pieces, how many each batch became)."""
    cuts = [chunked(batch, -(-len(batch) // parts)) for batch in batches]
    return [piece for cut in cuts for piece in cut], [len(cut) for cut in cuts]


def _joined(pieces, counts: list[int]):
    """The batches again, from an iterator of their pieces' items (in order)."""
    for count in counts:
        yield [item for _ in range(count) for item in next(pieces)]


def _record(stream):
    """An event recorded on `stream` (None: no side stream, nothing to wait for).

    Blocking (`BLOCKING_EVENTS`): the encode-ahead thread waits on these events for most of its ~20 s life
    (trainer.encoding.LEAD), and a default CUDA event's `synchronize()` spins a CPU core polling the driver, beside
    the DataLoader workers that decode the images. Measured on an H100 host of 16 cores (BENCHMARKS.md, tenth
    set), the run took as long either way; on a job with few vCPUs the core is worth having back. A stream's
    `wait_event` on the GPU is the same either way.
    """
    if stream is None:
        return None
    event = torch.cuda.Event(blocking=BLOCKING_EVENTS)
    event.record(stream)
    return event


def _check_placeholders(key: str, input_ids: torch.Tensor, image_token_id: int, n_features: int) -> None:
    """The prompt has one image placeholder per feature vector (what the model's forward would check each step)."""
    n_tokens = int((input_ids == image_token_id).sum())
    if n_tokens != n_features:
        raise ValueError(f"image {key}: the prompt has {n_tokens} image tokens but the vision tower gave "
                         f"{n_features} features; use the processor saved with this model (its image settings disagree)")


def new_cache(cfg, model, loaded, fmt: ChatFormat, n_images: int) -> FeatureCache:
    """A cache on the GPU, or in pinned host memory when the features would crowd the GPU (large eval sets)."""
    config = model.config
    tokens = getattr(config, "mm_tokens_per_image", None) or cfg.image_budget or 280
    need = n_images * tokens * config.get_text_config().hidden_size * 2
    free = torch.cuda.mem_get_info()[0] if loaded.device.type == "cuda" else float("inf")
    return FeatureCache(model, loaded.processor, fmt, loaded.device, offload=need > 0.2 * free)
