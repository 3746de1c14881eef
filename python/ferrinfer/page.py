"""Paged KV cache helpers with FlashInfer's names: ``append_paged_kv_cache`` and the index
helpers ``get_batch_indices_positions`` and ``get_seq_lens``."""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from . import _args, _cuda, _native, _tensor
from ._tensor import view


def append_paged_kv_cache(
    append_key: Any,
    append_value: Any,
    batch_indices: Any,
    positions: Any,
    paged_kv_cache: Any,
    kv_indices: Any,
    kv_indptr: Any,
    kv_last_page_len: Any,
    kv_layout: str = "NHD",
) -> None:
    """Writes rows ``append_key``/``append_value`` ``[nnz, num_kv_heads, head_dim]`` into the
    cache: row ``i`` goes to position ``positions[i]`` of request ``batch_indices[i]``, whose
    pages are described by the CSR tables (which must already cover the new positions).

    On CUDA (``append_key`` a CUDA tensor) the tables are validated from host copies — CUDA
    index tensors are copied to the host for that (a synchronisation; pass CPU tables to avoid
    it) — and the kernel reads device int32 copies (the caller's CUDA tensors when they are
    contiguous int32, else copies made on the current stream)."""
    k_cache, v_cache = _args.split_cache(paged_kv_cache)
    dev = _cuda.device_of(append_key)
    if dev is not None:
        _append_cuda(dev, append_key, append_value, (batch_indices, positions, kv_indptr, kv_indices),
                     kv_last_page_len, k_cache, v_cache, _args.layout(kv_layout))
        return
    _native.append_paged_kv_cache(
        view(append_key, "append_key"), view(append_value, "append_value"),
        view(_tensor.host_int32(batch_indices, "batch_indices"), "batch_indices"),
        view(_tensor.host_int32(positions, "positions"), "positions"),
        view(k_cache, "k_cache"), view(v_cache, "v_cache"), _args.layout(kv_layout),
        view(_tensor.host_int32(kv_indices, "kv_indices"), "kv_indices"),
        view(_tensor.host_int32(kv_indptr, "kv_indptr"), "kv_indptr"),
        view(_tensor.host_int32(kv_last_page_len, "kv_last_page_len"), "kv_last_page_len"))


def _like(x: Any, a: np.ndarray) -> Any:
    """``a`` as the kind of array ``x`` is (torch on ``x``'s device, or numpy)."""
    if _tensor.is_torch(x):
        import torch

        return torch.from_numpy(a).to(x.device)
    return a


def get_seq_lens(kv_indptr: Any, kv_last_page_len: Any, page_size: int) -> Any:
    """Sequence lengths from CSR page tables: ``(pages - 1) * page_size + last_page_len``
    (0 for a request without pages)."""
    indptr = _tensor.host_int32(kv_indptr, "kv_indptr").astype(np.int64)
    last = _tensor.host_int32(kv_last_page_len, "kv_last_page_len").astype(np.int64)
    pages = np.diff(indptr)
    lens = np.where(pages > 0, (pages - 1) * int(page_size) + last, 0).astype(np.int32)
    return _like(kv_indptr, lens)


def _into(dst: Any, a: np.ndarray, name: str) -> Any:
    """Writes ``a`` into the caller's ``dst`` (torch or numpy, ``len(a)`` entries) and returns it."""
    if tuple(dst.shape) != a.shape:
        raise ValueError(f"{name}: expected shape {a.shape}, got {tuple(dst.shape)}")
    if _tensor.is_torch(dst):
        import torch

        dst.copy_(torch.from_numpy(a))
    else:
        dst[...] = a
    return dst


def get_batch_indices_positions(
    append_indptr: Any, seq_lens: Any, nnz: int, batch_indices: Any = None, positions: Any = None
) -> Tuple[Any, Any]:
    """For ``nnz`` new rows laid out by ``append_indptr``: each row's request and its position,
    the last ``append_len`` positions of a request of (new) length ``seq_lens[b]``. Written into
    ``batch_indices``/``positions`` when given, else returned as new int32 arrays."""
    indptr = _tensor.host_int32(append_indptr, "append_indptr").astype(np.int64)
    lens = _tensor.host_int32(seq_lens, "seq_lens").astype(np.int64)
    counts = np.diff(indptr)
    if counts.size != lens.size:
        raise ValueError(f"seq_lens: {lens.size} entries for {counts.size} requests")
    if int(indptr[-1]) != int(nnz):
        raise ValueError(f"nnz: {nnz} differs from append_indptr[-1] = {int(indptr[-1])}")
    batch = np.repeat(np.arange(counts.size), counts)
    offset = np.arange(int(nnz)) - np.repeat(indptr[:-1], counts)
    pos = np.repeat(lens - counts, counts) + offset
    batch, pos = batch.astype(np.int32), pos.astype(np.int32)
    return (
        _like(append_indptr, batch) if batch_indices is None else _into(batch_indices, batch, "batch_indices"),
        _like(append_indptr, pos) if positions is None else _into(positions, pos, "positions"),
    )


def _append_cuda(dev: int, k: Any, v: Any, tables: tuple, last: Any, k_cache: Any, v_cache: Any,
                 layout: str) -> None:
    import torch

    names = ("batch_indices", "positions", "kv_indptr", "kv_indices")
    host = [_tensor.host_int32(t, n) for t, n in zip(tables, names)]
    device = []
    for t, h in zip(tables, host):
        if _cuda.device_of(t) == dev and t.dtype == torch.int32 and t.is_contiguous():
            device.append(t)
        else:
            device.append(torch.from_numpy(h).to(f"cuda:{dev}", non_blocking=True))
    host_views = [view(h, n) for h, n in zip(host, names)]
    host_views.append(view(_tensor.host_int32(last, "kv_last_page_len"), "kv_last_page_len"))
    _native.append_paged_kv_cache_cuda(_cuda.stream(dev), dev, view(k, "append_key"), view(v, "append_value"),
                                       host_views, [view(d, n) for d, n in zip(device, names)],
                                       view(k_cache, "k_cache"), view(v_cache, "v_cache"), layout)
