"""Evaluation: greedy generation or constrained label scoring -> breed ids -> metrics report.

- generate: greedy decoding (do_sample=False, explicit GenerationConfig, so the checkpoint's sampling defaults never
  leak in), stopped at <eos> / end-of-turn, text mapped to a breed by `labels.parse_prediction`.
- constrained: the model can only answer one of the 37 labels. One forward pass over each prompt fills the KV cache;
  the cache is repeated 37 times and all label strings (name + end-of-turn) are scored in one more pass; the
  label with the highest total log-probability wins.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from trainer.collate import ChatFormat, answer_ids, encode_prompt, pad_batch
from trainer.data import Example
from trainer.labels import LABELS, parse_prediction
from trainer.metrics import classification_report

Progress = Callable[[int, int], None]


def _batches(examples: list[Example], size: int):
    for start in range(0, len(examples), size):
        yield examples[start:start + size]


def _encode(processor, fmt: ChatFormat, chunk: list[Example], device) -> dict[str, torch.Tensor]:
    batch = pad_batch([encode_prompt(processor, fmt, ex.open()) for ex in chunk],
                      processor.tokenizer.pad_token_id, side="left")
    return {k: v.to(device) for k, v in batch.items()}


def _prompt_batches(processor, fmt: ChatFormat, examples: list[Example], size: int, device, prompts=None):
    """Left-padded prompt batches: decoded here, or from cached prompts whose pixel_values are image features."""
    for start in range(0, len(examples), size):
        if prompts is None:
            yield _encode(processor, fmt, examples[start:start + size], device)
        else:
            batch = pad_batch(prompts[start:start + size], processor.tokenizer.pad_token_id, side="left")
            yield {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _features(model, prompts):
    """Cached features go through the model's forward unchanged (trainer.features); plain runs need nothing."""
    if prompts is None:
        return contextlib.nullcontext()
    from trainer.features import image_features_passthrough

    return image_features_passthrough(model)


@torch.inference_mode()
def predict_generate(model, processor, fmt: ChatFormat, examples: list[Example], batch_size: int,
                     max_new_tokens: int, device, progress: Progress, prompts=None) -> list[str]:
    """Greedy completions (special tokens stripped) for each example, in order."""
    from transformers import GenerationConfig

    tok = processor.tokenizer
    gen = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                           eos_token_id=[tok.eos_token_id, fmt.end_of_turn_id], bos_token_id=tok.bos_token_id)
    texts: list[str] = []
    with _features(model, prompts):
        for batch in _prompt_batches(processor, fmt, examples, batch_size, device, prompts):
            out = model.generate(**batch, generation_config=gen)
            texts += [tok.decode(_until_stop(row, gen.eos_token_id), skip_special_tokens=True)
                      for row in out[:, batch["input_ids"].shape[1]:].tolist()]
            progress(len(texts), len(examples))
    return [t.strip() for t in texts]


def _until_stop(ids: list[int], stop: list[int]) -> list[int]:
    """Generated ids up to (not including) the first stop token; the rest is padding."""
    for i, token in enumerate(ids):
        if token in stop:
            return ids[:i]
    return ids


def candidate_tensor(tokenizer, fmt: ChatFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """(37, L) ids of every label + end-of-turn, right-padded, and the matching 0/1 mask."""
    ids = [answer_ids(tokenizer, fmt, i) for i in range(len(LABELS))]
    width = max(map(len, ids))
    cand = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        cand[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return cand, mask


@torch.inference_mode()
def score_labels(model, batch: dict[str, torch.Tensor], cand: torch.Tensor, cand_mask: torch.Tensor) -> torch.Tensor:
    """(B, 37) total log-probability of each label string after each (left-padded) prompt."""
    b, k = batch["input_ids"].shape[0], cand.shape[0]
    mask = batch["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(**batch, position_ids=positions, use_cache=True)
    first = torch.log_softmax(out.logits[:, -1].float(), -1)[:, cand[:, 0]]  # (B, 37): first label token
    cache = out.past_key_values
    cache.batch_repeat_interleave(k)
    rest, rest_mask = cand[:, :-1].repeat(b, 1), cand_mask[:, 1:].repeat(b, 1)
    full_mask = torch.cat([mask.repeat_interleave(k, 0), cand_mask[:, :-1].repeat(b, 1)], dim=1)
    pos = positions[:, -1:].repeat_interleave(k, 0) + 1 + torch.arange(rest.shape[1], device=rest.device)
    logits = model(input_ids=rest, attention_mask=full_mask, position_ids=pos, past_key_values=cache,
                   use_cache=True).logits
    logp = torch.log_softmax(logits.float(), -1).gather(-1, cand[:, 1:].repeat(b, 1).unsqueeze(-1)).squeeze(-1)
    return first + (logp * rest_mask).sum(-1).view(b, k)


def predict_constrained(model, processor, fmt: ChatFormat, examples: list[Example], batch_size: int,
                        device, progress: Progress, prompts=None, packed: bool = False) -> list[int]:
    """The best-scoring label index for each example (packed: all labels in one pass, trainer.scoring)."""
    from trainer.scoring import score_labels_packed

    cand, cand_mask = (t.to(device) for t in candidate_tensor(processor.tokenizer, fmt))
    cand_ids = [answer_ids(processor.tokenizer, fmt, i) for i in range(len(LABELS))]
    preds: list[int] = []
    with _features(model, prompts):
        for batch in _prompt_batches(processor, fmt, examples, batch_size, device, prompts):
            scores = score_labels_packed(model, batch, cand_ids) if packed else score_labels(model, batch, cand,
                                                                                              cand_mask)
            preds += scores.argmax(-1).tolist()
            progress(len(preds), len(examples))
    return preds


def evaluate(model, processor, fmt: ChatFormat, examples: list[Example], mode: str, *, batch_size: int,
             max_new_tokens: int, device, progress: Progress, prompts=None, fast: bool = False
             ) -> tuple[dict, list[dict]]:
    """(REPORT, prediction rows) for one mode on `examples`.

    `prompts`: the examples' cached prompt tensors with image features (trainer.features), or None to decode and
    encode here; `fast`: constrained scoring in one packed pass instead of 37 repeated caches (same scores).
    """
    model.eval()
    if mode == "generate":
        outputs = predict_generate(model, processor, fmt, examples, batch_size, max_new_tokens, device, progress,
                                   prompts)
        preds = [parse_prediction(text) for text in outputs]
    else:
        preds = predict_constrained(model, processor, fmt, examples, batch_size, device, progress, prompts, fast)
        outputs = [LABELS[p] for p in preds]
    report = classification_report([ex.label for ex in examples], preds)
    rows = [
        {"mode": mode, "image_id": ex.image_id, "label": LABELS[ex.label], "output": out,
         "pred": None if p is None else LABELS[p], "correct": p == ex.label}
        for ex, out, p in zip(examples, outputs, preds, strict=True)
    ]
    return report, rows
