"""Model loading (bf16 or 4-bit NF4), LoRA targeting, gradient checkpointing and the bf16 merge.

Both families load through `AutoModelForImageTextToText` (Gemma3ForConditionalGeneration /
Gemma4ForConditionalGeneration). LoRA goes on the language model by default through a module-name regex: a plain
list like ["q_proj", ...] also catches SigLIP's q/k/v on Gemma 3 and crashes on Gemma 4, whose vision projections
are `Gemma4ClippableLinear` wrappers that peft cannot wrap (offline-assets.md §1.4).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from trainer.config import TrainConfig
from trainer.events import log

LANGUAGE_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


class ModelError(RuntimeError):
    """The model or processor cannot be loaded or adapted; the message says why."""


@dataclass
class Loaded:
    model: torch.nn.Module
    processor: object
    family: str  # "gemma3" | "gemma4"
    device: torch.device


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def compute_dtype(device: torch.device) -> torch.dtype:
    # bf16 on GPU (what the checkpoints ship in); fp32 on CPU, where bf16 matmuls are slow and tiny tests flaky.
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_model_and_processor(cfg: TrainConfig, token: str | None, quantize: bool | None = None) -> Loaded:
    """The base model (4-bit if asked and `quantize` is not False) and its processor, on the one device."""
    device = pick_device()
    dtype = compute_dtype(device)
    quantize = cfg.quantization == "4bit" if quantize is None else quantize
    if quantize and device.type != "cuda":
        raise ModelError("--quantization 4bit needs a CUDA GPU (bitsandbytes); use --quantization none on CPU")
    if not quantize:
        skip_bitsandbytes()
    if cfg.model_id.startswith("builtin:"):
        from trainer.builtin import build_model_and_processor

        model, processor = build_model_and_processor(cfg.model_id, seed=cfg.seed)
        model = model.to(device=device, dtype=dtype)
        loaded = Loaded(model, processor, model.config.model_type, device)
    else:
        loaded = _load_pretrained(cfg, token, device, dtype, quantize)
    contiguous_vision_stream(loaded.model)
    return loaded


def contiguous_vision_stream(model) -> int:
    """Lay SigLIP's residual stream out contiguously (Gemma 3's vision tower); returns the modules hooked.

    SiglipVisionEmbeddings returns the patch convolution's output as a transposed view plus the position
    embeddings, and elementwise ops keep their first input's layout: all 27 layers then add residuals across two
    layouts (a strided kernel at ~250 GB/s) and copy before every LayerNorm. That was ~25 % of an 896 px encode on an
    H100 (66 of 262 ms for 16 images, bench/gpu_vision.py). A copy after the embeddings gives the same values (each
    op computes the same elements; LayerNorm already copied to contiguous memory), once per image.
    """
    hooked = 0
    for module in model.modules():
        if type(module).__name__ == "SiglipVisionEmbeddings":
            module.register_forward_hook(_contiguous_output)
            hooked += 1
    return hooked


def _contiguous_output(module, args, output):
    return output.contiguous() if isinstance(output, torch.Tensor) else output


def skip_bitsandbytes() -> None:
    """Keep peft from importing bitsandbytes in a bf16 run (4.4 s of the GPU's billed start-up, measured on an H100).

    peft imports it whenever it is installed (the image has it for QLoRA); a None entry in sys.modules makes
    importlib.util.find_spec report it absent. Once imported (a 4-bit run in this process), it stays.
    """
    import sys

    sys.modules.setdefault("bitsandbytes", None)


def _load_pretrained(cfg: TrainConfig, token: str | None, device, dtype, quantize: bool) -> Loaded:
    from transformers import AutoConfig, AutoModelForImageTextToText

    from trainer.processing import load_processor

    model_id = cfg.model_id.rstrip("/")
    try:
        family = AutoConfig.from_pretrained(model_id, token=token).model_type
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the model config of {model_id!r}: {exc}") from exc
    if family not in ("gemma3", "gemma4"):
        raise ModelError(f"{model_id} is a {family!r} model; this trainer supports gemma3 and gemma4 VLMs")
    kwargs = dict(dtype=dtype, attn_implementation="sdpa", token=token, low_cpu_mem_usage=True)
    if device.type == "cuda":
        kwargs["device_map"] = {"": 0}
    if quantize:
        kwargs["quantization_config"] = _nf4_config()
    # The processor (a 33 MB tokenizer.json with 500k merges: seconds of parsing) loads in a thread while the
    # weights stream to the GPU: start-up time is billed GPU time.
    with ThreadPoolExecutor(max_workers=1) as pool:
        processor = pool.submit(load_processor, model_id, family, token=token, image_budget=cfg.image_budget)
        model = AutoModelForImageTextToText.from_pretrained(model_id, **kwargs)
        return Loaded(model, processor.result(), family, device)


def _nf4_config():
    # QLoRA (Dettmers et al. 2023): NF4 weights, double-quantised constants, bf16 compute; bitsandbytes is
    # imported only here so that bf16 runs and CPU machines never need it.
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=torch.bfloat16)


def apply_lora(model: torch.nn.Module, cfg: TrainConfig):
    """Freeze the base and add LoRA adapters (seeded init) on the language model or on every linear layer."""
    from peft import LoraConfig, get_peft_model

    for p in model.parameters():
        p.requires_grad_(False)
    target = LANGUAGE_TARGETS if cfg.lora_target == "language" else "all-linear"
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=target, task_type="CAUSAL_LM")
    torch.manual_seed(cfg.seed)
    peft_model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    if trainable == 0:
        raise ModelError(f"LoRA target {target!r} matched no module of {type(model).__name__}")
    return peft_model


def wrapped_module_names(peft_model) -> list[str]:
    """Names of the modules that received LoRA adapters (tests and logs)."""
    return [name for name, module in peft_model.named_modules() if hasattr(module, "lora_A")]


def choose_gradient_checkpointing(cfg: TrainConfig, model, seq_len: int) -> tuple[bool, str]:
    """On/off and why. auto: on only when a rough activation estimate would not fit in free GPU memory."""
    if cfg.gradient_checkpointing != "auto":
        return cfg.gradient_checkpointing == "on", f"--gradient-checkpointing {cfg.gradient_checkpointing}"
    if not torch.cuda.is_available():
        return False, "auto: CPU run, memory is not the constraint"
    text = getattr(model.config, "text_config", model.config)
    # ~34 bytes per hidden unit per layer per token in bf16 for attention+MLP activations kept for backward
    # (Korthikanti et al. 2022), plus fp32 logits over the vocabulary for every position.
    tokens = cfg.batch_size * seq_len
    need = tokens * text.hidden_size * text.num_hidden_layers * 34 + tokens * text.vocab_size * 4 * 2
    free, _ = torch.cuda.mem_get_info()
    on = need > 0.8 * free
    return on, f"auto: activations ~{need / 2**30:.1f} GiB vs {free / 2**30:.1f} GiB free -> {'on' if on else 'off'}"


def enable_gradient_checkpointing(model) -> None:
    # use_reentrant=False: required for Gemma 4 and for frozen inputs under LoRA (no enable_input_require_grads).
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def merge_adapter(cfg: TrainConfig, adapter_dir: str, out_dir: str, token: str | None) -> None:
    """Merge the adapter into the bf16 base (never the 4-bit one: merging into NF4 loses the update) and save."""
    from peft import PeftModel

    base = load_model_and_processor(cfg, token, quantize=False)
    model = base.model.to(torch.bfloat16)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir)
    base.processor.save_pretrained(out_dir)
    log(f"merged bf16 model written to {out_dir}")
