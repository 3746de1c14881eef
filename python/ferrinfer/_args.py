"""Keyword arguments shared by the wrappers: FlashInfer's conventions turned into ferrinfer's
options, and a clear refusal of every argument ferrinfer does not implement (never a silently
different result)."""

from __future__ import annotations

from typing import Any, Optional, Tuple

from . import _tensor

LAYOUTS = ("NHD", "HND")

# FlashInfer's defaults of arguments that are neither None nor False: passing these values asks
# for nothing ferrinfer lacks.
NEUTRAL = {"q_len_per_req": 1, "token_pos_in_items_len": 0}


def unsupported(op: str, **given: Any) -> None:
    """Raises ``NotImplementedError`` naming the first argument that is set (not ``None``,
    ``False``, ``"NONE"`` or FlashInfer's neutral default): the features behind it are not
    implemented by ferrinfer. The wrappers pass their unsupported parameters and any other
    keyword argument of FlashInfer's signatures (``**kwargs``) through here."""
    for name, value in given.items():
        if value is None or value is False or (isinstance(value, str) and value.upper() == "NONE"):
            continue
        if name in NEUTRAL and value == NEUTRAL[name]:
            continue
        raise NotImplementedError(f"{op}: argument {name}={value!r} is not supported by ferrinfer")


def layout(kv_layout: str) -> str:
    if kv_layout not in LAYOUTS:
        raise ValueError(f"kv_layout: {kv_layout!r} is not 'NHD' or 'HND'")
    return kv_layout


def options(
    sm_scale: Optional[float], logits_soft_cap: Optional[float], window_left: Optional[int]
) -> Tuple[Optional[float], Optional[float], Optional[int]]:
    """FlashInfer's option values as ferrinfer's: ``logits_soft_cap`` ``None``/0 is off,
    ``window_left`` < 0 (or ``None``) is no window; ``sm_scale`` ``None`` is 1/sqrt(head_dim)."""
    cap = None if logits_soft_cap is None or float(logits_soft_cap) == 0.0 else float(logits_soft_cap)
    win = None if window_left is None or int(window_left) < 0 else int(window_left)
    scale = None if sm_scale is None else float(sm_scale)
    return scale, cap, win


def check_dtype(arg: str, x: Any, expected: Optional[str]) -> None:
    """``x``'s dtype must be ``expected`` (a dtype name) when one was planned."""
    if expected is not None and _tensor.dtype_name(x) != expected:
        raise ValueError(f"{arg}: dtype {_tensor.dtype_name(x)} differs from the planned {expected}")


def split_cache(paged_kv_cache: Any) -> Tuple[Any, Any]:
    """FlashInfer's two cache forms as (K, V) views: a ``(k, v)`` pair, or one tensor
    ``[num_pages, 2, ...]`` whose index 1 selects K (0) or V (1)."""
    if isinstance(paged_kv_cache, (tuple, list)):
        if len(paged_kv_cache) != 2:
            raise ValueError(f"paged_kv_cache: a tuple must be (k_cache, v_cache), got {len(paged_kv_cache)} items")
        return paged_kv_cache[0], paged_kv_cache[1]
    shape = tuple(paged_kv_cache.shape)
    if len(shape) != 5 or shape[1] != 2:
        raise ValueError(
            "paged_kv_cache: expected a (k_cache, v_cache) tuple or one tensor of shape "
            f"[num_pages, 2, page_size, num_kv_heads, head_dim] (NHD) or "
            f"[num_pages, 2, num_kv_heads, page_size, head_dim] (HND), got shape {shape}"
        )
    return paged_kv_cache[:, 0], paged_kv_cache[:, 1]
