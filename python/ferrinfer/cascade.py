"""Attention-state merges with FlashInfer's names (cascade attention's building block).

A state is ``(v, s)``: the normalised attention output over some keys and its base-2
log-sum-exp. Merging the states of disjoint key sets gives the state of their union.

On torch CUDA tensors the merges run on the GPU, on ``torch.cuda.current_stream()``, with
float16/bfloat16 values (float32 values raise ``NotImplementedError`` there).
"""

from __future__ import annotations

from typing import Any, Tuple

from . import _args, _cuda, _native, _tensor
from ._tensor import view


def merge_state(v_a: Any, s_a: Any, v_b: Any, s_b: Any) -> Tuple[Any, Any]:
    """Merges two states: ``v_* [seq_len, num_heads, head_dim]``, ``s_* [seq_len, num_heads]``
    (float32). Returns ``(v, s)``, ``v`` of ``v_a``'s dtype."""
    v = _tensor.empty(v_a, v_a.shape)
    s = _tensor.empty(v_a, s_a.shape, "float32")
    dev = _cuda.device_of(v_a)
    if dev is not None:
        _native.merge_state_cuda(_cuda.stream(dev), dev, view(v_a, "v_a"), view(s_a, "s_a"), view(v_b, "v_b"),
                                 view(s_b, "s_b"), view(v, "v_merged"), view(s, "s_merged"))
        return v, s
    _native.merge_state(view(v_a, "v_a"), view(s_a, "s_a"), view(v_b, "v_b"), view(s_b, "s_b"),
                        view(v, "v_merged"), view(s, "s_merged"))
    return v, s


def merge_state_in_place(v: Any, s: Any, v_other: Any, s_other: Any, mask: Any = None) -> None:
    """``(v, s) ← (v, s) ⊕ (v_other, s_other)`` in place. ``mask`` is not supported."""
    _args.unsupported("merge_state_in_place", mask=mask)
    dev = _cuda.device_of(v)
    if dev is not None:
        _native.merge_state_cuda(_cuda.stream(dev), dev, view(v, "v"), view(s, "s"), view(v_other, "v_other"),
                                 view(s_other, "s_other"), view(v, "v"), view(s, "s"), in_place=True)
        return
    _native.merge_state_in_place(view(v, "v"), view(s, "s"), view(v_other, "v_other"), view(s_other, "s_other"))


def merge_states(v: Any, s: Any) -> Tuple[Any, Any]:
    """Merges ``num_states`` states per row: ``v [seq_len, num_states, num_heads, head_dim]``,
    ``s [seq_len, num_states, num_heads]`` → ``([seq_len, num_heads, head_dim],
    [seq_len, num_heads])``."""
    if len(v.shape) != 4:
        raise ValueError(f"v: expected [seq_len, num_states, num_heads, head_dim], got shape {tuple(v.shape)}")
    seq, _, h, d = (int(x) for x in v.shape)
    v_out = _tensor.empty(v, (seq, h, d))
    s_out = _tensor.empty(v, (seq, h), "float32")
    dev = _cuda.device_of(v)
    if dev is not None:
        _native.merge_states_cuda(_cuda.stream(dev), dev, view(v, "v"), view(s, "s"), view(v_out, "v_merged"),
                                  view(s_out, "s_merged"))
        return v_out, s_out
    _native.merge_states(view(v, "v"), view(s, "s"), view(v_out, "v_merged"), view(s_out, "s_merged"))
    return v_out, s_out
