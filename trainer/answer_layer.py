"""The last decoder layer computed at the answer rows only: its other rows feed nothing the loss reads.

The fast path's loss needs the model's output at the ~5 answer positions of each ~420-token sample
(trainer.train.answer_loss_sum). Every other layer's output at every position feeds the next layer's keys and
values, but the last layer's output feeds only the final norm and the LM head. So that layer needs its input norm and
its key and value projections at every row, and its query, attention, o_proj, MLP and four norms only at the answer
rows: at gemma-3-4b's dims, ~1/34 of the step's work, less the keys and values (BENCHMARKS.md).

It computes what the full layer computes at those rows, to rounding (tests/trainer/test_answer_layer.py). Each LoRA
module's dropout mask is the one the full layer draws: drawn at the full layer's shape, in the same order, then
taken at the answer rows, so the RNG stream after the layer is the same as well.

Gemma 3 only (Gemma 4's layers share keys and values and take per-layer inputs: not attempted), under the fused
forwards (trainer.fused: the adapters' dropout runs in the activations' dtype, as drawn here), with SDPA or eager
attention, no attention dropout and no gradient checkpointing (its recompute in backward would run the full layer).
The layer runs eagerly: its shapes change with the batch's answer count, and its share of the step is small.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from functools import partial

import torch

from trainer.collate import IGNORE

CUT = True  # False: the whole last layer, as before (the bench's A/B: gpu_train.py --whole-last-layer)
ROWS_LAYER = "_gemmactl_answer_layer"  # base model attribute inside `answer_rows_only`: the layer to cut
_ELIGIBLE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # base model -> its last layer, or None


def answer_grid(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(grid, slots) for a batch's labels, computed on the host.

    grid (B, A): each sample's answer rows (positions whose next token is an answer token), padded with the
    last position, whose query always sees real keys; slots: the flat indices into B x A of the real rows, in the
    order trainer.train.answer_rows lists them.
    """
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE
    counts = keep.sum(1)
    filled = torch.arange(max(int(counts.max()), 1)) < counts[:, None]
    grid = torch.full(filled.shape, labels.shape[1] - 1, dtype=torch.long)
    grid[filled] = keep.nonzero()[:, 1]
    return grid, filled.flatten().nonzero().squeeze(1)


def last_layer(base) -> torch.nn.Module | None:
    """The base model's last decoder layer if it can be cut to the answer rows (module docstring), else None."""
    if base not in _ELIGIBLE:
        _ELIGIBLE[base] = _find_last_layer(base)
    return _ELIGIBLE[base]


def _find_last_layer(base) -> torch.nn.Module | None:
    from trainer.fused import decoder_layers

    text = base.config.get_text_config()
    layers = decoder_layers(base)
    if (base.config.model_type != "gemma3" or not layers or type(layers[-1]).__name__ != "Gemma3DecoderLayer"
            or text._attn_implementation not in ("sdpa", "eager") or getattr(text, "attention_dropout", 0.0)):
        return None
    return layers[-1]


@contextmanager
def answer_rows_only(model):
    """Inside: `answer_loss_sum` cuts the last decoder layer to the answer rows, when this model allows it."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layer = last_layer(base) if CUT else None
    if layer is None or getattr(base, "is_gradient_checkpointing", False) or not _fused(layer):
        yield
        return
    compiled = layer._compiled_call_impl  # set by trainer.fused's compiled step: the full layer's graph
    layer._compiled_call_impl = None
    base.__dict__[ROWS_LAYER] = layer
    try:
        yield
    finally:
        del base.__dict__[ROWS_LAYER]
        layer._compiled_call_impl = compiled


def _fused(layer) -> bool:
    """Every LoRA module of the layer runs trainer.fused's forward (whose dropout `_project` reproduces)."""
    return all("forward" in m.__dict__ for m in layer.modules() if hasattr(m, "lora_A"))


@contextmanager
def at_rows(layer, grid: torch.Tensor):
    """Inside: `layer` returns its output at `grid`'s rows only, (B, A, hidden)."""
    layer.forward = partial(_rows_forward, layer, grid)  # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        del layer.forward


def _rows_forward(layer, grid, hidden_states, position_embeddings=None, attention_mask=None, position_ids=None,
                  past_key_values=None, **kwargs):
    """Gemma3DecoderLayer.forward, its output at `grid`'s rows only."""
    x = layer.input_layernorm(hidden_states)  # every row: the keys and values read it
    attended = _attention(layer.self_attn, x, grid, position_embeddings, attention_mask, kwargs)
    h = _take(hidden_states, grid) + layer.post_attention_layernorm(attended)
    mlp = _mlp(layer.mlp, layer.pre_feedforward_layernorm(h), grid, x.shape[1])
    return h + layer.post_feedforward_layernorm(mlp)


def _attention(attn, x, grid, position_embeddings, mask, kwargs):
    """Gemma3Attention.forward for the queries at `grid`'s rows, over the keys and values of every row."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.gemma3.modeling_gemma3 import eager_attention_forward, rotate_half

    (b, s, _), d = x.shape, attn.head_dim
    q = _project(attn.q_proj, _take(x, grid), grid, x.shape, full=x).view(b, grid.shape[1], -1, d).transpose(1, 2)
    k = attn.k_proj(x).view(b, s, -1, d).transpose(1, 2)
    v = attn.v_proj(x).view(b, s, -1, d).transpose(1, 2)
    q, k = attn.q_norm(q), attn.k_norm(k)
    cos, sin = position_embeddings
    cos_q, sin_q = _take(cos.expand(b, -1, -1), grid).unsqueeze(1), _take(sin.expand(b, -1, -1), grid).unsqueeze(1)
    q = q * cos_q + rotate_half(q) * sin_q
    k = k * cos.unsqueeze(1) + rotate_half(k) * sin.unsqueeze(1)
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, eager_attention_forward)
    out, _ = interface(attn, q, k, v, _mask_rows(mask, grid, s, q.dtype, attn.config._attn_implementation),
                       dropout=0.0, scaling=attn.scaling, sliding_window=attn.sliding_window, **kwargs)
    flat = out.reshape(b, grid.shape[1], -1).contiguous()
    return _project(attn.o_proj, flat, grid, (b, s, flat.shape[-1]))


def _mlp(mlp, x, grid, seq: int):
    """Gemma3MLP.forward at the rows `x` holds (grid's), its dropout masks drawn at `seq` rows a sample."""
    full = (x.shape[0], seq, x.shape[-1])
    mid = mlp.act_fn(_project(mlp.gate_proj, x, grid, full)) * _project(mlp.up_proj, x, grid, full)
    return _project(mlp.down_proj, mid, grid, (x.shape[0], seq, mid.shape[-1]))


def _mask_rows(mask, grid, seq: int, dtype, implementation: str):
    """The attention mask's rows for the grid's queries, (B, 1, A, S); built causal where the model passed none."""
    if mask is None:  # causal, no padding: key j is visible from position p when j <= p
        visible = (torch.arange(seq, device=grid.device) <= grid[..., None]).unsqueeze(1)
        return visible if implementation == "sdpa" else torch.zeros(visible.shape, dtype=dtype,
                                                                    device=grid.device).masked_fill(
            ~visible, torch.finfo(dtype).min)
    full = mask.expand(grid.shape[0], -1, -1, -1)
    batch = torch.arange(grid.shape[0], device=grid.device)[:, None]
    return full[batch, 0, grid].unsqueeze(1)


def _project(module, rows, grid, full_shape, full=None):
    """`module(x)` at grid's rows (`rows`: x there), drawing the dropout mask the call on the full (B, S, in) input draws.

    `full`: that input, when it is at hand (the query's); otherwise the mask is drawn on a tensor of its shape
    and dtype (a mask does not depend on the values) and applied as dropout applies it: x * mask * 1/(1-p).
    """
    from trainer.fused import lora_add

    if not hasattr(module, "lora_A") or module.disable_adapters or module.merged:
        return module(rows)  # no adapter at work: no dropout is drawn
    drop = module.lora_dropout[module.active_adapters[0]]
    if not isinstance(drop, torch.nn.Dropout) or not drop.training or drop.p == 0:
        dropped = rows
    elif full is not None:
        dropped = _take(drop(full), grid)
    else:
        ones = torch.ones(full_shape, dtype=rows.dtype, device=rows.device)
        dropped = rows * _take(drop(ones) != 0, grid) * (1 / (1 - drop.p))
    return lora_add(module, module.base_layer(rows), dropped)


def _take(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """x (B, S, ...) at grid's rows: (B, A, ...)."""
    return x[torch.arange(x.shape[0], device=x.device)[:, None], grid]
