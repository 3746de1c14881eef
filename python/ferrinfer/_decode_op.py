"""The native CUDA decode op for a geometry: ``CudaBatchDecode`` where the decode kernels take
it, and where they refuse it (query groups above 16, above 8 at head dim 256 or with fp8 K/V or
RoPE: ``NotImplementedError``) the same interface over the native prefill op, one query row per
request, for groups up to the prefill kernels' 32 — FlashInfer's own route for large groups (its
``use_tensor_cores`` decode is its prefill kernel)."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from . import _native
from ._tensor import view


class _PrefillDecode:
    """The native decode op's interface (``plan``, ``run``) over the native prefill op, for
    geometries the decode kernels refuse: request ``b``'s query is row ``b``, the last
    position of its context (so no causal mask is needed). In CUDA-graph mode ``graph`` =
    ``(max_batch, max_pages)`` becomes the prefill op's limits (one query row per request)."""

    def __init__(self, device: int, heads: Tuple[int, int, int], dtype: str, options: Tuple[Any, Any, Any],
                 graph: Optional[Tuple[int, int]], rope: Optional[Tuple[float, float]], kv_dtype: str) -> None:
        limits = None if graph is None else (graph[0], max(graph[0], 1), graph[1], 0)
        self._op = _native.CudaBatchPrefill(device, *heads, dtype, False, *options, rope=rope,
                                            kv_dtype=kv_dtype, graph=limits)

    def plan(self, stream: int, workspace: tuple, indptr: Any, indices: Any, last: Any, page_size: int) -> None:
        shape = last[2]  # the host last_page_len's descriptor: (name, address, shape, ...)
        qo = np.arange((int(shape[0]) if shape else 0) + 1, dtype=np.int32)
        self._op.plan_paged(stream, workspace, view(qo, "qo_indptr"), indptr, indices, last, page_size, None)

    def run(self, stream: int, q: Any, k: Any, v: Any, kv_layout: str, out: Any, lse: Any = None,
            k_scale: Optional[float] = None, v_scale: Optional[float] = None) -> None:
        self._op.run_paged(stream, q, k, v, kv_layout, out, lse, k_scale=k_scale, v_scale=v_scale)


def native(device: int, heads: Tuple[int, int, int], dtype: str, options: Tuple[Any, Any, Any],
           graph: Optional[Tuple[int, int]], rope: Optional[Tuple[float, float]], kv_dtype: Optional[str]) -> Any:
    """The decode op for ``heads`` (``(num_qo_heads, num_kv_heads, head_dim)``) on ``device``;
    ``graph`` = ``(max_batch, max_pages)`` for the CUDA-graph form. The decode kernels' refusal
    stands when the prefill kernels refuse the geometry too."""
    try:
        return _native.CudaBatchDecode(device, *heads, dtype, *options, graph=graph, rope=rope, kv_dtype=kv_dtype)
    except NotImplementedError as refused:
        try:
            return _PrefillDecode(device, heads, dtype, options, graph, rope, kv_dtype)
        except (NotImplementedError, ValueError):
            raise refused from None
