"""Loading processors, including a torchvision-free stand-in for Gemma4Processor.

transformers 5.17's `Gemma4Processor` imports torchvision (its video processor needs it). The GPU image has
torchvision, CPU dev machines may not; there `Gemma4LiteProcessor` does the image path of Gemma4Processor with
`Gemma4ImageProcessorPil` + the tokenizer: same expansion `<|image>` + `<|image|>` x n + `<image|>`, same
`mm_token_type_ids`, same tensors.
"""

from __future__ import annotations

import json
from pathlib import Path


class Gemma4LiteProcessor:
    """The image + text subset of Gemma4Processor (no video, no audio) that needs no torchvision."""

    def __init__(self, tokenizer, image_processor, chat_template: str | None, image_seq_length: int = 280):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.chat_template = chat_template or tokenizer.chat_template
        self.image_seq_length = image_seq_length
        self.image_token = tokenizer.image_token
        self.image_token_id = tokenizer.image_token_id

    def __call__(self, text: list[str], images: list[list], add_special_tokens: bool = False,
                 padding: bool = True, return_tensors: str = "pt", **_):
        from transformers import BatchFeature

        flat = [img for row in images for img in row]
        pixels = self.image_processor(images=flat, return_tensors="pt")
        counts = iter(pixels.pop("num_soft_tokens_per_image"))
        expanded = []
        for sample in text:
            parts = sample.split(self.image_token)
            soft = [self.tokenizer.boi_token + self.image_token * int(next(counts)) + self.tokenizer.eoi_token
                    for _ in parts[1:]]
            expanded.append(parts[0] + "".join(s + p for s, p in zip(soft, parts[1:], strict=True)))
        enc = self.tokenizer(expanded, add_special_tokens=add_special_tokens, padding=padding,
                             return_tensors=return_tensors)
        enc["mm_token_type_ids"] = (enc["input_ids"] == self.image_token_id).long()
        return BatchFeature({**enc, **pixels})

    def apply_chat_template(self, messages, **kwargs):
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, **kwargs)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    def save_pretrained(self, out_dir) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(out)
        self.image_processor.save_pretrained(out)
        (out / "chat_template.jinja").write_text(self.chat_template)
        meta = {"processor_class": "Gemma4Processor", "image_seq_length": self.image_seq_length}
        (out / "processor_config.json").write_text(json.dumps(meta, indent=2))


def load_gemma4_processor(tokenizer, image_processor, chat_template: str | None, image_seq_length: int = 280):
    """The real Gemma4Processor when it can be built here (torchvision present), else Gemma4LiteProcessor.

    Used by bench/ to build full-size Gemma 4 processors from parts. Gemma4Processor's constructor re-registers the
    tokenizer's special-token list (and may fail after doing so), which build_chat_format tolerates.
    """
    try:
        from transformers import Gemma4Processor, Gemma4VideoProcessor

        return Gemma4Processor(feature_extractor=None, image_processor=image_processor, tokenizer=tokenizer,
                               video_processor=Gemma4VideoProcessor(), chat_template=chat_template,
                               image_seq_length=image_seq_length)
    except Exception:  # noqa: BLE001 - no torchvision, or parts missing: the stand-in does the image path
        return Gemma4LiteProcessor(tokenizer, image_processor, chat_template, image_seq_length)


def load_processor(path: str, model_type: str, token: str | None = None, image_budget: int | None = None):
    """AutoProcessor for `path` (hub id or dir); for Gemma 4 without torchvision, the lite stand-in."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(path, token=token)
    except Exception:
        # Gemma4Processor needs torchvision (and, for our tiny dirs, feature-extractor files); fall back to the
        # image+text stand-in, which needs only the tokenizer and image processor files.
        if model_type != "gemma4":
            raise
        from transformers import AutoTokenizer, Gemma4ImageProcessorPil

        tokenizer = AutoTokenizer.from_pretrained(path, token=token)
        image_processor = Gemma4ImageProcessorPil.from_pretrained(path, token=token)
        processor = Gemma4LiteProcessor(tokenizer, image_processor, _read_template(path) or tokenizer.chat_template)
    if image_budget and model_type == "gemma4":
        # Soft tokens per image (70..1120): more detail for more sequence length; the processor expands the
        # image placeholder to whatever count the image processor reports, so this one knob is enough.
        processor.image_processor.max_soft_tokens = image_budget
        processor.image_seq_length = image_budget
    return processor


def _read_template(path: str) -> str | None:
    local = Path(path) / "chat_template.jinja"
    return local.read_text() if local.is_file() else None
