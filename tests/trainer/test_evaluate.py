"""Evaluation modes: constrained scoring equals brute-force full-sequence scoring; generation is deterministic."""

from __future__ import annotations

import io

import pytest
import torch

from trainer.collate import answer_ids, build_chat_format
from trainer.data import Example, load_splits
from trainer.evaluate import _encode, candidate_tensor, evaluate, predict_generate, score_labels
from trainer.labels import LABELS


def _brute_force(model, processor, fmt, example) -> torch.Tensor:
    one = _encode(processor, fmt, [example], "cpu")
    n = one["input_ids"].shape[1]
    scores = []
    for label in range(len(LABELS)):
        ids = torch.tensor([answer_ids(processor.tokenizer, fmt, label)])
        inputs = dict(one, input_ids=torch.cat([one["input_ids"], ids], 1))
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        for key in ("token_type_ids", "mm_token_type_ids"):
            if key in one:
                inputs[key] = torch.cat([one[key], torch.zeros_like(ids)], 1)
        with torch.no_grad():
            logp = torch.log_softmax(model(**inputs).logits[0].float(), -1)
        scores.append(sum(logp[n - 1 + j, t] for j, t in enumerate(ids[0].tolist())))
    return torch.stack(scores)


@pytest.mark.parametrize("family", ["tiny_gemma3", "tiny_gemma4"])
def test_constrained_scores_match_brute_force_with_left_padding(request, family):
    model, processor = request.getfixturevalue(family)
    model.eval()
    fmt = build_chat_format(processor, "short")
    examples = load_splits("builtin:synthetic-pets").test[::37][:2]
    if family == "tiny_gemma4":  # another aspect ratio -> other soft-token count -> real left padding
        buf = io.BytesIO()
        examples[1].open().resize((64, 24)).save(buf, format="PNG")
        examples[1] = Example(examples[1].label, "wide", buf.getvalue())
        lengths = [_encode(processor, fmt, [e], "cpu")["input_ids"].shape[1] for e in examples]
        assert lengths[0] != lengths[1]
    cand, mask = candidate_tensor(processor.tokenizer, fmt)
    batched = score_labels(model, _encode(processor, fmt, examples, "cpu"), cand, mask)
    for row, example in enumerate(examples):
        assert torch.allclose(batched[row], _brute_force(model, processor, fmt, example), atol=1e-3)


def test_generation_is_greedy_and_deterministic(tiny_gemma3):
    model, processor = tiny_gemma3
    fmt = build_chat_format(processor, "short")
    examples = load_splits("builtin:synthetic-pets").test[:4]
    first = predict_generate(model, processor, fmt, examples, 2, 6, "cpu", lambda d, t: None)
    again = predict_generate(model, processor, fmt, examples, 4, 6, "cpu", lambda d, t: None)
    assert first == again and all(isinstance(t, str) for t in first)


@pytest.mark.parametrize("mode", ["generate", "constrained"])
def test_evaluate_report_and_rows(tiny_gemma3, mode):
    model, processor = tiny_gemma3
    fmt = build_chat_format(processor, "short")
    examples = load_splits("builtin:synthetic-pets").test[:5]
    seen = []
    report, rows = evaluate(model, processor, fmt, examples, mode, batch_size=2, max_new_tokens=4, device="cpu",
                            progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (5, 5) and report["n"] == 5 and len(rows) == 5
    assert set(rows[0]) == {"mode", "image_id", "label", "output", "pred", "correct"}
    if mode == "constrained":
        assert report["unknown"] == 0 and all(r["pred"] in LABELS for r in rows)
