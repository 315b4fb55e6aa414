"""Gemma 3 / Gemma 4 VLMs at their published dimensions, random-initialised on the GPU, plus their processors.

Speed and memory do not depend on the weights' values, so no checkpoint is needed: `build_model` creates the
model from its config directly on the GPU in bf16 (about a second even for 31B). Dimensions come from
transformers' own conversion scripts (offline-assets.md §1.5). Processors use the real Gemma 3 262k tokenizer
rebuilt by bench/gpu_tokenizer.py; Gemma 4's tokenizer is not available offline, so its processor is the same
vocabulary plus Gemma 4's control tokens, with Gemma 4's image processor (280-token budget): the same text
lengths to within a token or two, and the real image-token count.

Also: FLOP counting for MFU (`flops_per_sample`; a run's `sequence_shapes` and `mfu`) and a bitsandbytes NF4
conversion for from-config models (`quantize_nf4`), equivalent to what `from_pretrained(quantization_config=NF4
double-quant)` produces.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_ARCHIVE = ROOT / ".carry" / "gemma3-tokenizer.tar.xz"
ASSETS = ROOT / "trainer" / "assets"

_SIGLIP = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
               image_size=896, patch_size=14, vision_use_head=False)
_G3_TEXT = dict(vocab_size=262208, sliding_window=1024, rope_scaling={"rope_type": "linear", "factor": 8.0},
                max_position_embeddings=131072)
_G4_ROPE = {"full_attention": {"rope_theta": 1_000_000.0, "rope_type": "proportional", "partial_rotary_factor": 0.25},
            "sliding_attention": {"rope_theta": 10_000.0, "rope_type": "default"}}
_G4_ON_DEVICE_VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=16, num_attention_heads=12,
                            num_key_value_heads=12, head_dim=64, pooling_kernel_size=3, use_clipped_linears=True)
_G4_LARGE_VISION = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                        num_key_value_heads=16, head_dim=72, pooling_kernel_size=3, use_clipped_linears=False,
                        standardize=True)


@dataclass(frozen=True)
class Spec:
    name: str
    family: str  # gemma3 | gemma4
    text: dict
    vision: dict


def _g3_text(hidden: int, inter: int, layers: int, heads: int, kv: int, head_dim: int, scalar: int) -> dict:
    return _G3_TEXT | dict(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                           num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
                           query_pre_attn_scalar=scalar,
                           layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * (layers // 6)
                           + ["sliding_attention"] * (layers % 6))


SPECS: dict[str, Spec] = {
    "gemma-3-4b": Spec("gemma-3-4b", "gemma3", _g3_text(2560, 10240, 34, 8, 4, 256, 256), _SIGLIP),
    "gemma-3-12b": Spec("gemma-3-12b", "gemma3", _g3_text(3840, 15360, 48, 16, 8, 256, 256), _SIGLIP),
    "gemma-3-27b": Spec("gemma-3-27b", "gemma3", _g3_text(5376, 21504, 62, 32, 16, 128, 168), _SIGLIP),
    "gemma-4-E4B": Spec("gemma-4-E4B", "gemma4", dict(
        hidden_size=2560, hidden_size_per_layer_input=256, intermediate_size=10240, num_hidden_layers=42,
        layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 7, num_attention_heads=8,
        num_key_value_heads=2, global_head_dim=512, attention_k_eq_v=False, num_kv_shared_layers=18,
        sliding_window=512, final_logit_softcapping=30.0, rope_parameters=_G4_ROPE), _G4_ON_DEVICE_VISION),
    "gemma-4-31B": Spec("gemma-4-31B", "gemma4", dict(
        hidden_size=5376, hidden_size_per_layer_input=0, intermediate_size=21504, num_hidden_layers=60,
        layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 10, num_attention_heads=32,
        num_key_value_heads=16, num_global_key_value_heads=4, attention_k_eq_v=True,
        use_bidirectional_attention="vision", num_kv_shared_layers=0, sliding_window=1024,
        final_logit_softcapping=30.0, rope_parameters=_G4_ROPE, max_position_embeddings=262_144),
        _G4_LARGE_VISION),
}


# ------------------------------------------------------------------------------------------- processors
def tokenizer_dir(work: Path) -> Path:
    """Unpack the carried Gemma 3 tokenizer archive once into `work` and return its directory."""
    out = work / "gemma3-tokenizer"
    if not (out / "tokenizer.json").is_file():
        if not TOKENIZER_ARCHIVE.is_file():
            raise FileNotFoundError(f"{TOKENIZER_ARCHIVE} missing: run bench/gpu_tokenizer.py first (see its docstring)")
        with tarfile.open(TOKENIZER_ARCHIVE) as tar:
            tar.extractall(work, filter="data")
    return out


def build_processor(family: str, work: Path):
    """Gemma3Processor (real tokenizer, 896 px, 256 tokens) or a Gemma 4 processor (280-token budget)."""
    from transformers import AutoProcessor

    path = tokenizer_dir(work)
    if family == "gemma4":
        return _gemma4_processor(path)
    processor = AutoProcessor.from_pretrained(path)
    # Register the turn markers as special tokens (ids unchanged): trainer.collate.build_chat_format looks the
    # end-of-turn token up in all_special_ids, which on the real Gemma 3 tokenizer lists only bos/eos/pad/unk/mask
    # and the image tokens (reported to the trainer owner).
    processor.tokenizer.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]},
                                           replace_extra_special_tokens=False)
    return processor


def _gemma4_processor(path: Path):
    from transformers import AutoTokenizer, Gemma4ImageProcessorPil

    from trainer.processing import load_gemma4_processor

    try:  # the torchvision-backed image processor (on the GPU image), like a real checkpoint would load
        from transformers import Gemma4ImageProcessor as ImageProcessor
    except ImportError:
        ImageProcessor = Gemma4ImageProcessorPil
    template = (ASSETS / "gemma4_chat_template.jinja").read_text()
    specials = {"image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>",
                "audio_token": "<|audio|>", "boa_token": "<|audio>", "eoa_token": "<audio|>"}
    tok = AutoTokenizer.from_pretrained(path, add_bos_token=False, chat_template=template)
    tok.add_special_tokens({"additional_special_tokens": list(specials.values()) + ["<|video|>", "<|turn>", "<turn|>"]},
                           replace_extra_special_tokens=False)
    for key, value in specials.items():
        setattr(tok, key, value)
    image = ImageProcessor(patch_size=16, pooling_kernel_size=3, max_soft_tokens=280)
    return load_gemma4_processor(tok, image, template, image_seq_length=280)


# ------------------------------------------------------------------------------------------- models
def model_config(spec: Spec, tok):
    """The transformers config of `spec`, with special-token ids taken from the tokenizer."""
    from transformers import Gemma3Config, Gemma4Config

    if spec.family == "gemma3":
        return Gemma3Config(text_config=spec.text, vision_config=spec.vision, mm_tokens_per_image=256,
                            boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
                            eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
                            image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"))
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|image>", "<image|>", "<|image|>", "<|video|>", "<|audio|>",
                                                       "<|audio>", "<audio|>")}
    vocab = len(tok)  # 262144 + Gemma 4's control tokens appended: within 0.01 % of the real embedding size
    text = spec.text | dict(vocab_size=vocab, vocab_size_per_layer_input=vocab, pad_token_id=tok.pad_token_id)
    return Gemma4Config(text_config=text, vision_config=spec.vision, audio_config=None,
                        boi_token_id=ids["<|image>"], eoi_token_id=ids["<image|>"], image_token_id=ids["<|image|>"],
                        video_token_id=ids["<|video|>"], audio_token_id=ids["<|audio|>"],
                        boa_token_id=ids["<|audio>"], eoa_token_index=ids["<audio|>"])


def build_model(spec: Spec, processor, device: str = "cuda"):
    """Random-initialised bf16 model built directly on `device` (no CPU copy, no checkpoint)."""
    import torch
    from transformers import AutoModelForImageTextToText

    cfg = model_config(spec, processor.tokenizer)
    torch.manual_seed(0)  # the same weights on every machine: losses and gradient norms compare across machines
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
    gen = model.generation_config
    tok = processor.tokenizer
    end = "<end_of_turn>" if spec.family == "gemma3" else "<turn|>"
    gen.eos_token_id, gen.pad_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids(end)], tok.pad_token_id
    gen.do_sample = False
    return model.eval()


def quantize_nf4(model) -> None:
    """Replace every nn.Linear but lm_head with a bitsandbytes NF4 Linear4bit (double-quant, bf16 compute/storage).

    One layer at a time, so the bf16 copy of each weight is freed as soon as its 4-bit copy exists.
    """
    import bitsandbytes as bnb
    import torch

    targets = [(name, m) for name, m in model.named_modules() if type(m) is torch.nn.Linear and "lm_head" not in name]
    for name, linear in targets:
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                              compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4",
                              quant_storage=torch.bfloat16, device="meta")
        q.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, compress_statistics=True,
                                     quant_type="nf4", quant_storage=torch.bfloat16).to(linear.weight.device)
        if linear.bias is not None:
            q.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
        setattr(parent, name.rsplit(".", 1)[-1], q)
        del linear
    torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------- FLOPs
@dataclass(frozen=True)
class FlopModel:
    """What a train sample and an image encode cost in FLOPs (see flops_per_sample for the convention)."""

    text_linear_params: int  # weights of nn.Linear / Linear4bit in the language model (lm_head excluded)
    lora_params: int
    vision_linear_params: int  # vision tower + projector
    hidden: int
    vocab: int
    text_attn: tuple[int, int]  # (layers, heads * head_dim) for the attention-score FLOPs
    vision_attn: tuple[int, int]
    patches: int  # vision tokens per image


def _linear_params(module) -> int:
    """in*out of every plain, 4-bit or LoRA-wrapped linear layer, each base weight once, adapters excluded."""
    total = 0
    for name, m in module.named_modules():
        if "lora_" in name or hasattr(m, "lora_A") or not hasattr(m, "in_features"):
            continue
        if getattr(m, "weight", None) is not None and hasattr(m, "out_features"):
            total += m.in_features * m.out_features
    return total


def flop_model(model, patches: int) -> FlopModel:
    """Count parameters from the live modules (works for bf16, NF4 and LoRA-wrapped models)."""
    core = model
    while not hasattr(core, "language_model") and hasattr(core, "model"):
        core = core.model
    lm, vt = core.language_model, core.vision_tower
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    # to_dict(): Gemma 4 configs refuse attribute access to per-layer values (head_dim varies: 256 / 512 global)
    tc, vc = model.config.text_config.to_dict(), model.config.vision_config.to_dict()
    heads_dim = tc["num_attention_heads"] * tc["head_dim"]  # sliding layers' head_dim (most layers)
    v_heads_dim = vc["hidden_size"]
    proj = getattr(core, "multi_modal_projector", None) or getattr(core, "embed_vision", None)
    vis = _linear_params(vt) + (_linear_params(proj) if proj is not None else 0)
    if hasattr(core, "multi_modal_projector"):  # Gemma 3 projects with a bare matrix, not a Linear
        vis += core.multi_modal_projector.mm_input_projection_weight.numel()
    return FlopModel(_linear_params(lm), lora, vis, tc["hidden_size"], tc["vocab_size"],
                     (tc["num_hidden_layers"], heads_dim), (vc["num_hidden_layers"], v_heads_dim), patches)


def flops_per_sample(fm: FlopModel, tokens: float, answer_tokens: float) -> float:
    """FLOPs of one LoRA train sample's text part (forward + backward); `image_flops` adds each image encode.

    Convention (the frozen base needs no weight gradients, only activation gradients):
    - each frozen linear weight: 2 FLOPs/token forward + 2 backward (dX) = 4 N per token;
    - LoRA adapters: 2 forward + 2 dX + 2 dW = 6 N_lora per token;
    - attention scores (QK^T and PV, causal): 2 * T^2 * heads*head_dim per layer forward, x3 with backward;
    - lm_head: 4 * hidden * vocab only at the answer positions (the only logits the loss needs; full-vocabulary
      logits at every position are waste and are not counted as useful work);
    - the frozen vision tower: forward only, 2 N_vision per patch + 4 P^2 * width per layer (bidirectional).
    Padding tokens are not counted.
    """
    text = (4 * fm.text_linear_params + 6 * fm.lora_params) * tokens
    layers, width = fm.text_attn
    text += 3 * 2 * tokens**2 * width * layers
    return text + 4 * fm.hidden * fm.vocab * answer_tokens


def image_flops(fm: FlopModel) -> float:
    layers, width = fm.vision_attn
    return 2 * fm.vision_linear_params * fm.patches + 4 * fm.patches**2 * width * layers


def eval_prefix_flops(fm: FlopModel, tokens: float) -> float:
    """Forward FLOPs of one prompt (no backward), used for eval MFU-style figures."""
    layers, width = fm.text_attn
    return 2 * fm.text_linear_params * tokens + 2 * tokens**2 * width * layers


def sequence_shapes(cfg, marks: dict) -> dict:
    """Mean unpadded tokens, answer tokens and vision patches per training sample, from the trainer's encoding."""
    import statistics

    from trainer.collate import answer_ids, build_chat_format, encode_prompt
    from trainer.data import load_splits, select

    train, _ = select(load_splits(cfg.dataset, cfg.seed), cfg.train_size, cfg.eval_size, cfg.seed)
    processor = marks["loaded"].processor
    fmt = build_chat_format(processor, cfg.prompt)
    enc = encode_prompt(processor, fmt, train[0].open())
    answer = statistics.fmean(len(answer_ids(processor.tokenizer, fmt, ex.label)) for ex in train)
    pixels = enc["pixel_values"]
    if "image_position_ids" in enc:  # Gemma 4: patch rows, -1 marks padding
        patches = int((enc["image_position_ids"][..., 0] >= 0).sum())
    else:  # Gemma 3: a square image cut into patch_size squares
        patch = marks["loaded"].model.config.vision_config.patch_size
        patches = (pixels.shape[-1] // patch) * (pixels.shape[-2] // patch)
    prompt = enc["input_ids"].shape[1]
    return {"prompt": prompt, "answer": answer, "tokens": prompt + answer, "patches": patches}


def mfu(marks: dict, shapes: dict, events: list[dict], samples: int, train_s: float) -> dict:
    """Model FLOPs utilisation of the training phase against the measured bf16 matmul peak."""
    fm = flop_model(marks["peft_model"], shapes["patches"])
    cache = next((e for e in events if e["event"] == "image_cache"), None)
    # cached: each training image through the tower once, less those encoded during the baseline eval (outside
    # the training phase); plain path: for every sample of every epoch
    encodes = cache["train_images"] - cache.get("during_baseline", 0) if cache else samples
    flops = samples * flops_per_sample(fm, shapes["tokens"], shapes["answer"]) + encodes * image_flops(fm)
    peak = float(os.environ.get("BENCH_PEAK_TFLOPS", "0") or 0) * 1e12
    return {"mfu": flops / train_s / peak if peak else None, "train_tflops": flops / train_s / 1e12,
            "image_encodes": encodes, "gflops_per_sample": flops / samples / 1e9}
