"""Constrained eval in two forward passes: the prompt once, then all 37 label strings packed into one sequence.

The plain scorer repeats the prompt's KV cache 37 times and runs the labels as 37 rows; its memory grows as
37 x prompt length x layers, which for a 27B model is gigabytes per image. Here the labels' tokens are packed
side by side after the prompt (about 150 tokens for the 37 breeds), each attending to the prompt and to the earlier
tokens of its own label only, through an explicit attention mask per layer type (full and sliding window), with
position ids continuing the prompt. The log-probabilities are the same as scoring each label on its own.
"""

from __future__ import annotations

import torch


def _packed_layout(cand_ids: list[list[int]]):
    """Flattened label tokens: inputs (all but each label's last token), targets, owning label, offset."""
    inputs, targets, owner, offset = [], [], [], []
    for c, ids in enumerate(cand_ids):
        for j in range(len(ids) - 1):
            inputs.append(ids[j])
            targets.append(ids[j + 1])
            owner.append(c)
            offset.append(j)
    return inputs, targets, owner, offset


def _layer_masks(model, prefix_mask: torch.Tensor, owner: torch.Tensor, offset: torch.Tensor, dtype) -> dict:
    """Additive (B, 1, S, K) masks per layer type; K = the keys that layer's cache returns (prefix kept + S)."""
    text = model.config.get_text_config()
    b, p = prefix_mask.shape
    s = owner.shape[0]
    own = (owner[:, None] == owner[None, :]) & (offset[None, :] <= offset[:, None])  # (S, S): same label, causal
    q_idx = p + offset  # sequence index each packed token would have if its label followed the prompt alone
    masks = {}
    for layer_type in set(getattr(text, "layer_types", None) or ["full_attention"]):
        window = getattr(text, "sliding_window", None) if layer_type == "sliding_attention" else None
        kept = p if window is None else min(p, window - 1)
        k_idx = torch.arange(p - kept, p, device=owner.device)
        visible = prefix_mask[:, None, -kept:].bool().expand(b, s, kept)
        if window is not None:
            visible = visible & (k_idx[None, None, :] > (q_idx[None, :, None] - window))
            in_window = (offset[None, :] > offset[:, None] - window)
            packed = own & in_window
        else:
            packed = own
        allowed = torch.cat([visible, packed[None].expand(b, s, s)], dim=-1)
        additive = torch.zeros(allowed.shape, dtype=dtype, device=owner.device)
        masks[layer_type] = additive.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
    return masks


@torch.inference_mode()
def score_labels_packed(model, batch: dict[str, torch.Tensor], cand_ids: list[list[int]]) -> torch.Tensor:
    """(B, 37) total log-probability of each label string (its tokens + end-of-turn) after each prompt."""
    device = batch["input_ids"].device
    mask = batch["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(**batch, position_ids=positions, use_cache=True, logits_to_keep=1)  # only the last row is used
    firsts = torch.tensor([ids[0] for ids in cand_ids], device=device)
    scores = torch.log_softmax(out.logits[:, -1].float(), -1)[:, firsts]
    inputs, targets, owner, offset = (torch.tensor(v, device=device) for v in _packed_layout(cand_ids))
    if inputs.numel() == 0:
        return scores
    b = mask.shape[0]
    dtype = out.logits.dtype if out.logits.is_floating_point() else torch.float32
    masks = _layer_masks(model, mask, owner, offset, _attn_dtype(model, dtype))
    pos = positions[:, -1:] + 1 + offset[None, :]
    logits = model(input_ids=inputs[None].expand(b, -1), attention_mask=masks, position_ids=pos,
                   past_key_values=out.past_key_values, use_cache=True).logits
    # One row at a time: (labels' tokens x 262k) fp32 log-probs are ~150 MB per prompt.
    logp = torch.stack([torch.log_softmax(row.float(), -1).gather(-1, targets[:, None]).squeeze(-1)
                        for row in logits])
    return scores.index_add(1, owner, logp)


def _attn_dtype(model, fallback) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return fallback
