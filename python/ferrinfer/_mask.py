"""Custom attention masks in FlashInfer's forms, turned into what the native prefill functions
take: ``(packed bits, byte offsets)``.

A request's mask is a row-major ``[qo_len, kv_len]`` boolean matrix (``True``: the query attends
the key). FlashInfer accepts it as ``custom_mask`` (booleans; batch wrappers: all requests'
matrices flattened one after another) or as ``packed_custom_mask`` (``uint8``, 8 entries per
byte, little-endian bit order, each request's bits starting on a byte of its own: what
``segment_packbits(..., bitorder="little")`` makes). As in FlashInfer, a custom mask replaces the
causal flag (``causal`` only applies when no mask is given); a window still applies.

The packing runs on the host (numpy): a CUDA mask is copied to the host once per ``plan``
(FlashInfer packs on the device).
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from . import _tensor

Packed = Tuple[bytes, List[int]]


def _host(x: Any) -> np.ndarray:
    if _tensor.is_torch(x):
        return x.detach().cpu().contiguous().numpy()
    return np.ascontiguousarray(np.asarray(x))


def _bitorder(bitorder: str) -> str:
    if bitorder not in ("big", "little"):
        raise ValueError(f"bitorder: {bitorder!r} is not 'big' or 'little'")
    return bitorder


def _like(packed: np.ndarray, x: Any) -> Any:
    """``packed`` as the caller's array kind: a torch tensor on ``x``'s device, or numpy."""
    if _tensor.is_torch(x):
        import torch

        return torch.from_numpy(packed).to(x.device)
    return packed


def packbits(x: Any, bitorder: str = "big") -> Any:
    """FlashInfer's ``packbits``: a 1-d boolean array packed 8 entries per byte (``uint8``), in
    ``bitorder`` ("big": the first entry is the byte's most significant bit, numpy's default;
    "little": its least, what the attention masks use)."""
    bits = _host(x).reshape(-1).astype(bool)
    return _like(np.packbits(bits, bitorder=_bitorder(bitorder)), x)


def segment_packbits(x: Any, indptr: Any, bitorder: str = "big") -> Tuple[Any, Any]:
    """FlashInfer's ``segment_packbits``: packs each segment ``x[indptr[i]:indptr[i+1]]`` on
    bytes of its own; returns ``(packed, new_indptr)`` with ``new_indptr`` the byte offsets."""
    bits = _host(x).reshape(-1).astype(bool)
    offsets = [int(i) for i in _host(indptr).reshape(-1)]
    packed, new = _segments(bits, offsets, _bitorder(bitorder))
    return _like(packed, x), _like(np.asarray(new, dtype=np.int32), indptr)


def _segments(bits: np.ndarray, offsets: Sequence[int], bitorder: str) -> Tuple[np.ndarray, List[int]]:
    if not offsets or offsets[0] != 0 or any(b < a for a, b in zip(offsets, offsets[1:])) \
            or offsets[-1] > bits.size:
        raise ValueError(f"indptr: must start at 0, not decrease and end within the {bits.size} entries")
    parts = [np.packbits(bits[a:b], bitorder=bitorder) for a, b in zip(offsets, offsets[1:])]
    new = [0]
    for p in parts:
        new.append(new[-1] + p.size)
    packed = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)
    return packed.astype(np.uint8), new


def for_batch(op: str, custom_mask: Any, packed_custom_mask: Any, qo_lens: Sequence[int],
              kv_lens: Sequence[int]) -> Optional[Packed]:
    """The batch's mask for the native op, or ``None`` when neither form is given.
    ``custom_mask``: booleans, ``Σ qo_len·kv_len`` of them; ``packed_custom_mask``: ``uint8``,
    ``Σ ⌈qo_len·kv_len / 8⌉`` bytes (``packed_custom_mask`` wins when both are given, as in
    FlashInfer)."""
    sizes = [int(q) * int(k) for q, k in zip(qo_lens, kv_lens)]
    if packed_custom_mask is not None:
        packed = _host(packed_custom_mask).reshape(-1)
        if packed.dtype != np.uint8:
            raise ValueError(f"{op}: packed_custom_mask must be uint8, got {packed.dtype}")
        offsets = [0]
        for n in sizes:
            offsets.append(offsets[-1] + (n + 7) // 8)
        if packed.size != offsets[-1]:
            raise ValueError(f"{op}: packed_custom_mask has {packed.size} bytes, the requests need "
                             f"{offsets[-1]} (⌈qo_len·kv_len / 8⌉ each)")
        return packed.tobytes(), offsets
    if custom_mask is None:
        return None
    bits = _host(custom_mask).reshape(-1)
    if bits.dtype != np.bool_:
        raise ValueError(f"{op}: custom_mask must be bool, got {bits.dtype}")
    ends = np.cumsum([0] + sizes).tolist()
    if bits.size != ends[-1]:
        raise ValueError(f"{op}: custom_mask has {bits.size} entries, the requests need {ends[-1]} "
                         "(qo_len·kv_len each)")
    packed, offsets = _segments(bits, ends, "little")
    return packed.tobytes(), offsets


def for_single(op: str, custom_mask: Any, packed_custom_mask: Any, qo_len: int, kv_len: int) -> Optional[Packed]:
    """One request's mask: ``custom_mask`` ``[qo_len, kv_len]`` booleans, or its packed form."""
    if packed_custom_mask is None and custom_mask is not None:
        shape = tuple(custom_mask.shape)
        if shape != (qo_len, kv_len):
            raise ValueError(f"{op}: custom_mask shape {shape}, expected ({qo_len}, {kv_len}) = (qo_len, kv_len)")
    return for_batch(op, custom_mask, packed_custom_mask, [qo_len], [kv_len])
