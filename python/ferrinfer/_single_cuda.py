"""Single-request decode and prefill on CUDA tensors, as the batch CUDA ops with one request
whose K/V is one page of ``kv_len`` tokens (what the library's own single ops do on the GPU):
``k``/``v`` are read in place with their strides, NHD or HND.

FlashInfer's single-request functions take no workspace; the plan's workspace here is a
``torch.empty`` on the current stream per call, so torch's caching allocator orders its reuse
with this call's kernels (a cached workspace shared across streams could be overwritten while
a previous call still reads it).
"""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from . import _cuda, _decode_op, _native, _tensor
from ._tensor import opt_view, view

_WORKSPACE_BYTES = 128 << 20  # FlashInfer's usual float workspace
_OPS: dict = {}  # native ops by (kind, device, heads, dtype, options): kernels resolved once


def _tables(*arrays: Any) -> Tuple[Any, ...]:
    return tuple(np.asarray(a, dtype=np.int32) for a in arrays)


def _geometry(op: str, q: Any, k: Any, v: Any, layout: str, q_rank: int) -> Tuple[int, int, int, int]:
    if len(q.shape) != q_rank:
        raise ValueError(f"{op}: q has shape {tuple(q.shape)}, expected rank {q_rank}")
    if len(k.shape) != 3 or tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"{op}: k/v shapes {tuple(k.shape)}/{tuple(v.shape)} (rank 3, equal)")
    kv_len, hkv = (int(k.shape[0]), int(k.shape[1])) if layout == "NHD" else (int(k.shape[1]), int(k.shape[0]))
    return int(q.shape[-2]), hkv, int(q.shape[-1]), kv_len


def _op(key: tuple, make: Any) -> Any:
    if key not in _OPS:
        _OPS[key] = make()
    return _OPS[key]


def decode(dev: int, q: Any, k: Any, v: Any, layout: str, options: tuple, return_lse: bool,
           rope: Any = None, kv_dtype: Any = None, scales: Tuple[Any, Any] = (None, None)) -> Any:
    """``kv_dtype``: an fp8 cache's type (``None``: the cache has q's), read as code × ``scales``
    (``k_scale``, ``v_scale``; ``None`` is 1), on the batch decode op's fp8 kernels."""
    import torch

    op_name = "single_decode_with_kv_cache"
    hq, hkv, d, kv_len = _geometry(op_name, q, k, v, layout, 2)
    dtype = _tensor.dtype_name(q)
    op = _op(("decode", dev, hq, hkv, d, dtype, options, rope, kv_dtype),
             lambda: _decode_op.native(dev, (hq, hkv, d), dtype, options, None, rope, kv_dtype))
    stream = _cuda.stream(dev)
    ws = torch.empty(_WORKSPACE_BYTES, dtype=torch.uint8, device=q.device)
    indptr, indices, last = _tables([0, 1], [0], [kv_len])
    op.plan(stream, _cuda.workspace(ws), view(indptr, "indptr"), view(indices, "indices"),
            view(last, "last_page_len"), kv_len)
    out = torch.empty((1, hq, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((1, hq), dtype=torch.float32, device=q.device) if return_lse else None
    op.run(stream, view(q.unsqueeze(0), "q"), view(k.unsqueeze(0), "k"), view(v.unsqueeze(0), "v"), layout,
           view(out, "out"), opt_view(lse, "lse"), k_scale=scales[0], v_scale=scales[1])
    return (out[0], lse[0]) if return_lse else out[0]


def prefill(dev: int, q: Any, k: Any, v: Any, layout: str, causal: bool, options: tuple,
            return_lse: bool, mask: Any = None, rope: Any = None) -> Any:
    import torch

    op_name = "single_prefill_with_kv_cache"
    hq, hkv, d, kv_len = _geometry(op_name, q, k, v, layout, 3)
    qo_len = int(q.shape[0])
    dtype = _tensor.dtype_name(q)
    op = _op(("prefill", dev, hq, hkv, d, dtype, bool(causal), options, rope),
             lambda: _native.CudaBatchPrefill(dev, hq, hkv, d, dtype, bool(causal), *options, rope=rope))
    stream = _cuda.stream(dev)
    ws = torch.empty(_WORKSPACE_BYTES, dtype=torch.uint8, device=q.device)
    qo_indptr, indptr, indices, last = _tables([0, qo_len], [0, 1], [0], [kv_len])
    op.plan_paged(stream, _cuda.workspace(ws), view(qo_indptr, "qo_indptr"), view(indptr, "indptr"),
                  view(indices, "indices"), view(last, "last_page_len"), kv_len, mask)
    out = torch.empty_like(q)
    lse = torch.empty((qo_len, hq), dtype=torch.float32, device=q.device) if return_lse else None
    op.run_paged(stream, view(q, "q"), view(k.unsqueeze(0), "k"), view(v.unsqueeze(0), "v"), layout,
                 view(out, "out"), opt_view(lse, "lse"))
    return (out, lse) if return_lse else out
