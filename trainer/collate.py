"""Chat samples -> tensors with answer-only labels.

A sample is `prompt + answer + end-of-turn`, where `prompt` is the chat template rendered for the user turn
(image + question) with the generation prompt (`<start_of_turn>model\\n` on Gemma 3, `<|turn>model\\n` on Gemma 4).
The prompt goes through the processor (which expands the image into its soft tokens, however many there are), the
answer is tokenised on its own and appended. So the label mask is exact by construction: no searching for turn
markers or caption ids in the token stream (the reference's failure modes), and training sees byte-for-byte the
prefix that evaluation generates from. The end-of-turn token is read from the template, never hard-coded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.labels import LABELS

IGNORE = -100
TOKEN_KEYS = ("input_ids", "attention_mask", "labels", "token_type_ids", "mm_token_type_ids")
PROMPTS = {
    "list": "Identify the breed of the pet in this photo. Choose exactly one of: "
    + ", ".join(LABELS)
    + ". Answer with the breed name only.",
    "short": "What breed is the pet in this photo? Answer with the breed name only.",
}
_SENTINEL = "ANSWERSENTINEL"


class MaskingError(ValueError):
    """A sample would train on nothing, or the chat template has no recognisable end-of-turn token."""


@dataclass(frozen=True)
class ChatFormat:
    """What the chat template says about one prompt style: the prompt text and the end-of-turn token."""

    prompt_text: str
    end_of_turn_id: int
    end_of_turn: str


def build_chat_format(processor, prompt_style: str = "list") -> ChatFormat:
    """Render the template once to find the prompt and the token that closes the model's turn."""
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPTS[prompt_style]}]}
    model = {"role": "assistant", "content": [{"type": "text", "text": _SENTINEL}]}
    # Thinking off (the reference's choice, and what a one-word classifier wants); only templates that know the
    # variable get it, others would warn about an unused kwarg.
    extra = {"enable_thinking": False} if "enable_thinking" in (_template(processor) or "") else {}
    prompt = processor.apply_chat_template([user], tokenize=False, add_generation_prompt=True, **extra)
    full = processor.apply_chat_template([user, model], tokenize=False, **extra)
    if _SENTINEL not in full:
        raise MaskingError("the chat template dropped the assistant text; cannot build training targets")
    tokenizer = processor.tokenizer
    suffix = full[full.index(_SENTINEL) + len(_SENTINEL):]
    suffix_ids = tokenizer.encode(suffix, add_special_tokens=False)
    # A control token: special, or at least an added (never split) token. Gemma4Processor's constructor re-registers
    # the special-token list, after which <turn|> is only an added token.
    control = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    if not suffix_ids or suffix_ids[0] not in control:
        raise MaskingError(f"the chat template ends the model turn with {suffix!r}, not a special end-of-turn token")
    eot_id = suffix_ids[0]
    return ChatFormat(prompt_text=prompt, end_of_turn_id=eot_id, end_of_turn=tokenizer.convert_ids_to_tokens(eot_id))


def _template(processor) -> str | None:
    template = getattr(processor, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None)
    return template if isinstance(template, str) else None


def answer_ids(tokenizer, fmt: ChatFormat, label: int) -> list[int]:
    """Token ids the model must produce for a label: the breed name then the end-of-turn token."""
    return tokenizer.encode(LABELS[label], add_special_tokens=False) + [fmt.end_of_turn_id]


def encode_prompt(processor, fmt: ChatFormat, image) -> dict[str, torch.Tensor]:
    """Processor output for one image + the prompt (batch of 1). The template already emits <bos>."""
    out = processor(text=[fmt.prompt_text], images=[[image]], add_special_tokens=False, return_tensors="pt")
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}


def encode_train_sample(processor, fmt: ChatFormat, image, label: int) -> dict[str, torch.Tensor]:
    """Prompt + answer ids, labels -100 everywhere but the answer and its end-of-turn token."""
    sample = append_answer(encode_prompt(processor, fmt, image), answer_ids(processor.tokenizer, fmt, label))
    if int((sample["labels"] != IGNORE).sum()) < 1:
        raise MaskingError(f"sample with label {label} has no target token")
    return sample


def append_answer(prompt: dict[str, torch.Tensor], answer: list[int]) -> dict[str, torch.Tensor]:
    """A prompt's tensors + the answer ids; labels -100 on the prompt. Image inputs pass through untouched."""
    sample = dict(prompt)
    target = torch.tensor([answer], dtype=torch.long)
    n_prompt = sample["input_ids"].shape[1]
    sample["input_ids"] = torch.cat([sample["input_ids"], target], dim=1)
    sample["attention_mask"] = torch.cat([sample["attention_mask"], torch.ones_like(target)], dim=1)
    for key in ("token_type_ids", "mm_token_type_ids"):  # answer tokens are text: type 0
        if key in sample:
            sample[key] = torch.cat([sample[key], torch.zeros_like(target)], dim=1)
    sample["labels"] = torch.cat([torch.full((1, n_prompt), IGNORE), target], dim=1)
    return sample


def pad_batch(samples: list[dict[str, torch.Tensor]], pad_id: int, side: str = "right",
              width: int | None = None) -> dict[str, torch.Tensor]:
    """Stack samples: per-token tensors padded (ids=pad, mask=0, labels=-100, types=0) to the longest sample (or
    `width` if longer); images concatenated."""
    width = max([s["input_ids"].shape[1] for s in samples] + [width or 0])
    fill = {"input_ids": pad_id, "labels": IGNORE}
    batch: dict[str, torch.Tensor] = {}
    for key in samples[0]:
        if key in TOKEN_KEYS:
            rows = [_pad_row(s[key], width, fill.get(key, 0), side) for s in samples]
        else:
            rows = [s[key] for s in samples]
        batch[key] = torch.cat(rows, dim=0)
    return batch


def fixed_shape_batch(samples: list[dict[str, torch.Tensor]], pad_id: int, rows: int, width: int):
    """A training batch of exactly `rows` x `width` tokens (or wider, if a sample is), for a compiled step.

    Missing rows are copies of the first sample with every label ignored: they add nothing to the loss, so
    nothing to any gradient, and keep one graph shape for the last, short micro-batch of an epoch.
    """
    filler = {**samples[0], "labels": torch.full_like(samples[0]["labels"], IGNORE)}
    return pad_batch(samples + [filler] * (rows - len(samples)), pad_id, width=width)


def _pad_row(row: torch.Tensor, width: int, value: int, side: str) -> torch.Tensor:
    pad = torch.full((1, width - row.shape[1]), value, dtype=row.dtype)
    return torch.cat([row, pad] if side == "right" else [pad, row], dim=1)


class TrainSamples(torch.utils.data.Dataset):
    """Lazily decoded, encoded training samples (decode + resize run in DataLoader workers)."""

    def __init__(self, examples, processor, fmt: ChatFormat):
        self.examples, self.processor, self.fmt = examples, processor, fmt

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ex = self.examples[i]
        return encode_train_sample(self.processor, self.fmt, ex.open(), ex.label)
