"""Keyword arguments shared by the wrappers: FlashInfer's conventions turned into ferrinfer's
options, and a clear refusal of every argument ferrinfer does not implement (never a silently
different result)."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

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


def rope(op: str, pos_encoding_mode: str, rope_scale: Optional[float],
         rope_theta: Optional[float]) -> Optional[Tuple[float, float]]:
    """FlashInfer's position encoding as ``(rope_scale, rope_theta)`` for RoPE inside attention
    (``"ROPE_LLAMA"``: ``rotate_half`` pairs over the whole head, positions divided by
    ``rope_scale``, defaults 1 and 10⁴), or ``None`` (``"NONE"``, with no ``rope_*`` given).
    ``"ALIBI"`` and any other mode raise ``NotImplementedError``."""
    mode = "NONE" if pos_encoding_mode is None else str(pos_encoding_mode).upper()
    if mode == "NONE":
        unsupported(op, rope_scale=rope_scale, rope_theta=rope_theta)
        return None
    if mode != "ROPE_LLAMA":
        raise NotImplementedError(f"{op}: pos_encoding_mode={pos_encoding_mode!r} is not supported by ferrinfer "
                                  "(NONE and ROPE_LLAMA are)")
    scale = 1.0 if rope_scale is None else float(rope_scale)
    theta = 1e4 if rope_theta is None else float(rope_theta)
    if not (scale > 0.0 and scale != float("inf")) or not (theta > 1.0 and theta != float("inf")):
        raise ValueError(f"{op}: rope_scale={rope_scale!r} must be finite and > 0, rope_theta={rope_theta!r} "
                         "finite and > 1")
    return scale, theta


def run_window(op: str, planned: Optional[int], window_left: Optional[int], cuda: bool) -> Optional[int]:
    """The window of a ``run`` given ``window_left`` (``None``: the planned one). A CUDA plan
    has its window compiled into the launch, so a different one is refused there."""
    if window_left is None:
        return planned
    win = options(None, None, window_left)[2]
    if cuda and win != planned:
        raise NotImplementedError(f"{op}: window_left differing from plan() on CUDA (re-plan instead)")
    return win


FP8 = ("float8_e4m3fn", "float8_e5m2")



def kv_dtype(op: str, q_data_type: Any, kv_data_type: Any, o_data_type: Any = None) -> str:
    """The planned element type: K/V (and the output, when named) must share q's."""
    q_dt = _tensor.dtype_name(q_data_type)
    for name, dt in (("kv_data_type", kv_data_type), ("o_data_type", o_data_type)):
        if dt is not None and _tensor.dtype_name(dt) != q_dt:
            raise NotImplementedError(f"{op}: {name} {_tensor.dtype_name(dt)} differs from q_data_type {q_dt}")
    return q_dt


def q_kv_dtypes(op: str, q_data_type: Any, kv_data_type: Any, o_data_type: Any = None) -> Tuple[str, str]:
    """A paged wrapper's planned ``(q dtype, K/V dtype)``: K/V of q's type, or fp8
    (``float8_e4m3fn``, ``float8_e5m2``) read with ``k_scale``/``v_scale`` at ``run``; the
    output (when named) is q's type."""
    q_dt = kv_dtype(op, q_data_type, None, o_data_type)
    if kv_data_type is None:
        return q_dt, q_dt
    kv_dt = _tensor.dtype_name(kv_data_type)
    if kv_dt in FP8:
        return q_dt, kv_dt
    return kv_dtype(op, q_data_type, kv_data_type), q_dt


def fp8_scales(op: str, kv_dt: str, k_scale: Optional[float],
               v_scale: Optional[float]) -> Tuple[Optional[float], Optional[float]]:
    """``k_scale``/``v_scale`` for a cache of ``kv_dt``: fp8 caches are read as code × scale
    (default 1); scales other than 1 with a 16-bit cache raise ``NotImplementedError``."""
    if kv_dt in FP8:
        return (None if k_scale is None else float(k_scale)), (None if v_scale is None else float(v_scale))
    for name, s in (("k_scale", k_scale), ("v_scale", v_scale)):
        if s is not None and float(s) != 1.0:
            raise NotImplementedError(f"{op}: {name}={s!r} with a {kv_dt} cache is not supported by ferrinfer "
                                      "(scales apply to fp8 caches)")
    return None, None


def check_paged_k(op: str, k: Any, page_size: int, num_kv_heads: int, head_dim: int, kv_layout: str) -> None:
    """A paged K view is ``[num_pages, page_size, Hkv, D]`` (NHD) or ``[num_pages, Hkv,
    page_size, D]`` (HND) for the planned geometry."""
    want = (page_size, num_kv_heads, head_dim) if kv_layout == "NHD" else (num_kv_heads, page_size, head_dim)
    if len(k.shape) != 4 or tuple(k.shape[1:]) != want:
        raise ValueError(f"{op}: paged_kv_cache K shape {tuple(k.shape)} does not match the plan "
                         f"(num_pages, {', '.join(map(str, want))}) in {kv_layout}")


def outputs(q: Any, out: Any, lse: Any, return_lse: bool) -> Tuple[Any, Any]:
    """The caller's ``out``/``lse`` or new ones like ``q`` (``lse`` only when asked for)."""
    if out is None:
        out = _tensor.empty(q, q.shape)
    if lse is None and return_lse:
        lse = _tensor.empty(q, q.shape[:-1], "float32")
    return out, lse


def result(out: Any, lse: Any, return_lse: bool) -> Any:
    """What the wrappers return: ``out``, or ``(out, lse)`` when ``return_lse``."""
    return (out, lse) if return_lse else out


def planned(plan: Optional[dict], op: str) -> dict:
    if plan is None:
        raise RuntimeError(f"{op}: plan() must be called before run()")
    return plan


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


def check_buffers(op: str, named: Sequence[Tuple[str, Any, Any]]) -> None:
    """Refuses any planned table that does not fit its fixed buffer (CUDA-graph mode: FlashInfer's
    ``*_buf`` arguments). ``named``: ``(name, buffer, table)``, tables numpy arrays."""
    for name, buf, t in named:
        if t.size > buf.shape[0]:
            raise ValueError(f"{op}: {name} has {t.size} entries but its buffer holds {buf.shape[0]}")


def fill_buffers(op: str, named: Sequence[Tuple[str, Any, Any]]) -> None:
    """Copies planned host tables into the caller's fixed buffers (CUDA-graph mode: FlashInfer's
    ``*_buf`` arguments, which it fills the same way), refusing any table that does not fit
    before copying anything (:func:`check_buffers`)."""
    check_buffers(op, named)
    for _, buf, t in named:
        if _tensor.is_torch(buf):
            import torch

            buf[: t.size].copy_(torch.from_numpy(t), non_blocking=True)
        else:
            buf[: t.size] = t
