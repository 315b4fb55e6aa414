"""Built-in offline assets: tiny random Gemma 3 / Gemma 4 VLMs and the synthetic-pets dataset.

    python -m trainer.builtin tiny-gemma3 OUT_DIR      # HF model dir: config.json, model.safetensors, tokenizer,
    python -m trainer.builtin tiny-gemma4 OUT_DIR      #   processor files, chat_template.jinja
    python -m trainer.builtin synthetic-pets OUT_DIR   # timm/oxford-iiit-pet parquet layout: data/{train,test}-*.parquet

The `builtin:` prefix is optional. The models are built from a config (a few ten thousand parameters) with a BPE
tokenizer trained in code that carries the real chat templates' control tokens, so the whole trainer runs on a
laptop CPU in seconds. synthetic-pets has 37 classes, each a distinct colour and pattern, so it is learnable.
"""

from __future__ import annotations

import colorsys
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from trainer.labels import CAT_BREEDS, LABELS

MODELS = ("tiny-gemma3", "tiny-gemma4")
DATASETS = ("synthetic-pets",)
ASSETS = Path(__file__).parent / "assets"
SYNTHETIC_TRAIN_PER_CLASS = 30  # 1110 train images
SYNTHETIC_TEST_PER_CLASS = 10  # 370 test images
SYNTHETIC_SIZE = 48  # pixels; the tiny processors resize to 32

# Special tokens in Gemma order (pad, eos, bos, unk, mask first), then each family's control tokens.
_BASE_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
_FAMILY_SPECIALS = {
    "gemma3": ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"],
    "gemma4": ["<|turn>", "<turn|>", "<|image>", "<image|>", "<|image|>", "<|video|>",
               "<|audio>", "<audio|>", "<|audio|>"],
}  # fmt: skip
_EXTRA_SPECIALS = {
    "gemma3": {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"},
    "gemma4": {"image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>",
               "audio_token": "<|audio|>", "boa_token": "<|audio>", "eoa_token": "<audio|>"},
}  # fmt: skip


def strip_prefix(asset_id: str) -> str:
    return asset_id.removeprefix("builtin:")


# ---------------------------------------------------------------------------- tokenizer
def build_tokenizer(family: str):
    """A Gemma-style BPE tokenizer (byte fallback, '▁' spaces) trained on the prompts and the 37 breed names."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    from trainer.collate import PROMPTS

    specials = _BASE_SPECIALS + _FAMILY_SPECIALS[family] + [f"<0x{i:02X}>" for i in range(256)]
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    bpe.normalizer = normalizers.Replace(" ", "▁")
    bpe.pre_tokenizer = pre_tokenizers.Split("▁", "merged_with_next")
    corpus = list(PROMPTS.values()) + [f"{name}\n" for name in LABELS] * 4 + ["Answer: It is a photo of"]
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=700, special_tokens=specials, show_progress=False))
    model = json.loads(bpe.to_str())["model"]
    template = (ASSETS / f"{family}_chat_template.jinja").read_text()
    tok = GemmaTokenizer(
        vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]], add_bos_token=(family == "gemma3"), padding_side="left",
        extra_special_tokens=_EXTRA_SPECIALS[family], chat_template=template,
    )
    turn = _FAMILY_SPECIALS[family][:2]
    tok.add_special_tokens({"additional_special_tokens": turn}, replace_extra_special_tokens=False)
    return tok


# ---------------------------------------------------------------------------- models
def build_model_and_processor(asset_id: str, seed: int = 0):
    """(model, processor) for builtin:tiny-gemma3 / builtin:tiny-gemma4, deterministic for a given seed."""
    import torch

    name = strip_prefix(asset_id)
    if name not in MODELS:
        raise ValueError(f"unknown built-in model {asset_id!r}; choose one of {', '.join('builtin:' + m for m in MODELS)}")
    family = name.removeprefix("tiny-")
    tok = build_tokenizer(family)
    torch.manual_seed(seed)
    if family == "gemma3":
        return _tiny_gemma3(tok)
    return _tiny_gemma4(tok)


def _text_dims(tok) -> dict:
    return dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=64,
                # 0.1 instead of 0.02: with a frozen, tied 64-wide embedding the default scale caps the logits
                # at ~1.3, so no LoRA update could make any answer likely.
                initializer_range=0.1,
                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)


def _tiny_gemma3(tok):
    import torch
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
    )

    text = _text_dims(tok) | dict(query_pre_attn_scalar=32, layer_types=["sliding_attention", "full_attention"])
    # image 32 px / patch 8 = 4x4 patches, avg-pooled 2x2 -> 4 image tokens (grid must divide by sqrt(tokens)).
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=8, vision_use_head=False)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                          boi_token_index=tok.boi_token_id, eoi_token_index=tok.eoi_token_id,
                          image_token_index=tok.image_token_id)
    model = Gemma3ForConditionalGeneration(config)
    # transformers initialises the projector matrix to zeros (real checkpoints overwrite it), which would hide
    # every image from the language model; a random projection keeps the classes apart.
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=32**-0.5)
    image_processor = Gemma3ImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.5] * 3,
                                              image_std=[0.5] * 3)
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tok, chat_template=tok.chat_template,
                                image_seq_length=4)
    _set_generation_config(model, tok, "<end_of_turn>")
    return model, processor


def _tiny_gemma4(tok):
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration, Gemma4ImageProcessorPil

    from trainer.processing import Gemma4LiteProcessor

    text = _text_dims(tok) | dict(vocab_size_per_layer_input=len(tok), hidden_size_per_layer_input=8,
                                  global_head_dim=32, layer_types=["sliding_attention", "full_attention"])
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=2, head_dim=16, patch_size=4, pooling_kernel_size=2,
                  position_embedding_size=64)
    config = Gemma4Config(text_config=text, vision_config=vision, audio_config=None,
                          boi_token_id=tok.boi_token_id, eoi_token_id=tok.eoi_token_id,
                          image_token_id=tok.image_token_id, video_token_id=tok.convert_tokens_to_ids("<|video|>"),
                          audio_token_id=tok.audio_token_id, boa_token_id=tok.boa_token_id,
                          eoa_token_index=tok.eoa_token_id)
    model = Gemma4ForConditionalGeneration(config)
    # 32x32 px / patch 4 = 64 patches, pooled 2x2 -> 16 soft tokens per image (budget 70 -> max 280 patches).
    image_processor = Gemma4ImageProcessorPil(patch_size=4, pooling_kernel_size=2, max_soft_tokens=70,
                                              size={"height": 32, "width": 32})
    # The lite processor on every machine: transformers' Gemma4Processor needs torchvision and audio/video parts
    # the tiny model lacks (and its constructor rewrites the tokenizer's special-token list).
    processor = Gemma4LiteProcessor(tok, image_processor, tok.chat_template, image_seq_length=70)
    _set_generation_config(model, tok, "<turn|>")
    return model, processor


def _set_generation_config(model, tok, end_of_turn: str) -> None:
    # Like the real -it checkpoints: stop at <eos> or the end-of-turn token; greedy unless asked otherwise.
    gen = model.generation_config
    gen.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids(end_of_turn)]
    gen.pad_token_id = tok.pad_token_id
    gen.bos_token_id = tok.bos_token_id
    gen.do_sample = False


def write_model(asset_id: str, out_dir: Path) -> None:
    """Save a built-in model as an ordinary HF model directory that --model-id DIR loads back."""
    model, processor = build_model_and_processor(asset_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


# ---------------------------------------------------------------------------- synthetic-pets
def class_style(label: int) -> tuple[tuple[int, int, int], int]:
    """Colour and pattern of a class: 37 hues around the wheel, alternating brightness, 3 patterns."""
    hue = label / len(LABELS)
    value = 0.95 if label % 2 == 0 else 0.6
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, value)
    return (int(r * 255), int(g * 255), int(b * 255)), label % 3


def synthetic_image(label: int, index: int, seed: int = 0) -> Image.Image:
    """One image of a class: its colour with a stripe/dot/plain pattern, random shift and pixel noise."""
    rng = np.random.default_rng((seed, label, index))
    colour, pattern = class_style(label)
    s = SYNTHETIC_SIZE
    img = np.empty((s, s, 3), dtype=np.float32)
    img[:] = colour
    yy, xx = np.mgrid[0:s, 0:s]
    shift = rng.integers(0, 8)
    if pattern == 1:  # dark stripes
        img[((xx + shift) // 6) % 2 == 0] *= 0.5
    elif pattern == 2:  # light dots
        img[(((xx + shift) % 8) < 3) & (((yy + shift) % 8) < 3)] = 240
    img += rng.normal(0, 12, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def synthetic_rows(split: str, seed: int = 0) -> list[tuple[int, int, str]]:
    """(label, index, image_id) of every image of a split; train and test use disjoint indices."""
    per_class, offset = (
        (SYNTHETIC_TRAIN_PER_CLASS, 0) if split == "train" else (SYNTHETIC_TEST_PER_CLASS, 10_000)
    )
    rows = []
    for label, name in enumerate(LABELS):
        stem = name.title().replace(" ", "_") if name in CAT_BREEDS else name.replace(" ", "_")
        rows += [(label, offset + i, f"{stem}_{offset + i}") for i in range(per_class)]
    return rows


def write_dataset(out_dir: Path, seed: int = 0) -> None:
    """Write synthetic-pets in the timm/oxford-iiit-pet parquet layout (image{bytes,path}, label, image_id)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (out_dir / "data").mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        images, labels, ids, species = [], [], [], []
        for label, index, image_id in synthetic_rows(split, seed):
            buf = io.BytesIO()
            synthetic_image(label, index, seed).save(buf, format="PNG")
            images.append({"bytes": buf.getvalue(), "path": f"{image_id}.png"})
            labels.append(label)
            ids.append(image_id)
            species.append(0 if LABELS[label] in CAT_BREEDS else 1)
        table = pa.table({"image": images, "label": labels, "image_id": ids, "label_cat_dog": species})
        names = [name.replace(" ", "_") for name in LABELS]
        features = {"label": {"_type": "ClassLabel", "names": names}}
        table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
        pq.write_table(table, out_dir / "data" / f"{split}-00000-of-00001.parquet")


# ---------------------------------------------------------------------------- CLI
def main(argv: list[str]) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # one JSON line out, no progress bars
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2:5], file=sys.stderr)
        print("error: usage: python -m trainer.builtin ID OUT_DIR", file=sys.stderr)
        return 2
    asset, out = strip_prefix(argv[0]), Path(argv[1])
    try:
        if asset in MODELS:
            write_model(asset, out)
        elif asset in DATASETS:
            write_dataset(out)
        else:
            choices = ", ".join(MODELS + DATASETS)
            print(f"error: unknown built-in asset {argv[0]!r}; choose one of {choices}", file=sys.stderr)
            return 2
    except Exception as exc:  # noqa: BLE001 - the CLI's contract is one error line and a non-zero exit
        print(f"error: writing {asset} to {out} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"event": "builtin_written", "asset": asset, "path": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
