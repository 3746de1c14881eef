"""Decode attention with FlashInfer's names: ``single_decode_with_kv_cache``,
``BatchDecodeWithPagedKVCacheWrapper`` and its CUDA-graph variant.

``lse`` values are base-2 log-sum-exps of the scaled logits, as FlashInfer's.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import numpy as np

from . import _args, _cuda, _decode_op, _native, _single_cuda, _tensor
from ._tensor import view, opt_view


def single_decode_with_kv_cache(
    q: Any,
    k: Any,
    v: Any,
    kv_layout: str = "NHD",
    pos_encoding_mode: str = "NONE",
    use_tensor_cores: bool = False,
    q_scale: Optional[float] = None,
    k_scale: Optional[float] = None,
    v_scale: Optional[float] = None,
    window_left: int = -1,
    logits_soft_cap: Optional[float] = None,
    sm_scale: Optional[float] = None,
    rope_scale: Optional[float] = None,
    rope_theta: Optional[float] = None,
    return_lse: bool = False,
    **kwargs: Any,
) -> Union[Any, Tuple[Any, Any]]:
    """Decode attention of one request: ``q [num_qo_heads, head_dim]`` against ``k``, ``v``
    ``[kv_len, num_kv_heads, head_dim]`` (NHD) or ``[num_kv_heads, kv_len, head_dim]`` (HND).

    Returns ``out`` like ``q``, or ``(out, lse)`` with ``lse [num_qo_heads]`` (float32, base 2)
    when ``return_lse``. ``use_tensor_cores`` only picks a kernel and is accepted.
    ``pos_encoding_mode="ROPE_LLAMA"`` rotates q (at position ``kv_len - 1``) and every key
    (at its index) inside attention, with ``rope_scale``/``rope_theta``. ``k``/``v`` may be fp8
    (``float8_e4m3fn`` or ``float8_e5m2``; CPU arrays or CUDA tensors), read as code × ``k_scale``
    / ``v_scale`` (default 1); ``q_scale`` raises ``NotImplementedError``.
    """
    op = "single_decode_with_kv_cache"
    _args.unsupported(op, q_scale=q_scale, **kwargs)
    rope = _args.rope(op, pos_encoding_mode, rope_scale, rope_theta)
    scale, cap, win = _args.options(sm_scale, logits_soft_cap, window_left)
    dev = _cuda.device_of(q)
    if dev is not None:
        kv_dt = _tensor.dtype_name(k)
        scales = _args.fp8_scales(op, kv_dt, k_scale, v_scale)
        return _single_cuda.decode(dev, q, k, v, _args.layout(kv_layout), (scale, cap, win), return_lse, rope,
                                   kv_dt if kv_dt in _args.FP8 else None, scales)
    kd, vd = view(k, "k"), view(v, "v")
    ks, vs = _args.fp8_scales(op, kd[4], k_scale, v_scale)
    out, lse = _args.outputs(q, None, None, return_lse)
    _native.single_decode(view(q, "q"), kd, vd, _args.layout(kv_layout),
                          view(out, "out"), opt_view(lse, "lse"), scale, cap, win, rope=rope,
                          k_scale=ks, v_scale=vs)
    return _args.result(out, lse, return_lse)


class BatchDecodeWithPagedKVCacheWrapper:
    """Batch decode over a paged KV cache: ``plan`` once per step from host page tables, then
    ``run`` per layer. The cache is a ``(k_cache, v_cache)`` pair or one tensor
    ``[num_pages, 2, page_size, num_kv_heads, head_dim]`` (NHD) /
    ``[num_pages, 2, num_kv_heads, page_size, head_dim]`` (HND).

    ``float_workspace_buffer`` picks the device, as in FlashInfer: a torch CUDA tensor (FlashInfer's
    usual 128 MiB ``uint8``) runs ``plan``/``run`` on that GPU — the plan's tables and split-KV
    partials live in it, ``run`` launches on ``torch.cuda.current_stream()`` and neither
    allocates device memory nor synchronises. Anything else (``None``, a CPU tensor) runs on the
    CPU. ``plan`` takes host (CPU) page tables; CUDA index tensors are accepted but cost a
    device-to-host copy (a synchronisation).
    """

    def __init__(
        self,
        float_workspace_buffer: Any = None,
        kv_layout: str = "NHD",
        use_cuda_graph: bool = False,
        use_tensor_cores: bool = False,
        paged_kv_indptr_buffer: Any = None,
        paged_kv_indices_buffer: Any = None,
        paged_kv_last_page_len_buffer: Any = None,
        backend: str = "auto",
        jit_args: Any = None,
        **kwargs: Any,
    ) -> None:
        _args.unsupported(type(self).__name__, jit_args=jit_args, **kwargs)
        self._kv_layout = _args.layout(kv_layout)
        self._use_cuda_graph = bool(use_cuda_graph)
        self._buffers = (paged_kv_indptr_buffer, paged_kv_indices_buffer, paged_kv_last_page_len_buffer)
        if self._use_cuda_graph and any(b is None for b in self._buffers):
            raise ValueError("use_cuda_graph=True needs paged_kv_indptr_buffer, paged_kv_indices_buffer "
                             "and paged_kv_last_page_len_buffer (fixed-size buffers)")
        self._plan: Optional[dict] = None
        self._workspace = float_workspace_buffer
        self._device = _cuda.device_of(float_workspace_buffer)
        self._ops: dict = {}  # CUDA ops by (heads, dtype, options, graph limits)

    @property
    def is_cuda_graph_enabled(self) -> bool:
        return self._use_cuda_graph

    def plan(
        self,
        indptr: Any,
        indices: Any,
        last_page_len: Any,
        num_qo_heads: int,
        num_kv_heads: int,
        head_dim: int,
        page_size: int,
        *,
        pos_encoding_mode: str = "NONE",
        window_left: int = -1,
        logits_soft_cap: Optional[float] = None,
        q_data_type: Any = "float16",
        kv_data_type: Any = None,
        data_type: Any = None,
        sm_scale: Optional[float] = None,
        rope_scale: Optional[float] = None,
        rope_theta: Optional[float] = None,
        non_blocking: bool = True,
        block_tables: Any = None,
        seq_lens: Any = None,
        fixed_split_size: Optional[int] = None,
        disable_split_kv: bool = False,
        **kwargs: Any,
    ) -> None:
        """Records the step's page tables (copied to host int32 arrays) and options.
        ``pos_encoding_mode="ROPE_LLAMA"`` rotates q and the keys inside attention (query at
        ``kv_len - 1``, key ``t`` at ``t``; ``rope_scale``, ``rope_theta`` as FlashInfer's)."""
        op = "BatchDecodeWithPagedKVCacheWrapper.plan"
        _args.unsupported(op, block_tables=block_tables, seq_lens=seq_lens, **kwargs)
        rope = _args.rope(op, pos_encoding_mode, rope_scale, rope_theta)
        if data_type is not None:
            q_data_type = data_type
        q_dt, kv_dt = _args.q_kv_dtypes(op, q_data_type, kv_data_type)
        tables = (_tensor.host_int32(indptr, "indptr"), _tensor.host_int32(indices, "indices"),
                  _tensor.host_int32(last_page_len, "last_page_len"))
        if self._use_cuda_graph:
            _args.fill_buffers(op, list(zip(("indptr", "indices", "last_page_len"), self._buffers, tables)))
        options = _args.options(sm_scale, logits_soft_cap, window_left)
        cuda_op = None
        if self._device is not None:
            cuda_op = self._cuda_op((int(num_qo_heads), int(num_kv_heads), int(head_dim)), q_dt, options, rope,
                                    kv_dt)
            cuda_op.plan(_cuda.stream(self._device), _cuda.workspace(self._workspace), view(tables[0], "indptr"),
                         view(tables[1], "indices"), view(tables[2], "last_page_len"), int(page_size))
        self._plan = dict(cuda=cuda_op, tables=tables, heads=(int(num_qo_heads), int(num_kv_heads), int(head_dim)),
                          page_size=int(page_size), dtype=q_dt, kv_dtype=kv_dt,
                          options=options, rope=rope)

    def _cuda_op(self, heads: Tuple[int, int, int], dtype: str, options: Tuple[Any, Any, Any],
                 rope: Optional[Tuple[float, float]], kv_dtype: str) -> Any:
        """The native CUDA op for this geometry, K/V type and option set (built once: kernels
        resolved, graph limits from the fixed buffers)."""
        graph = None
        if self._use_cuda_graph:
            graph = (int(self._buffers[0].shape[0]) - 1, int(self._buffers[1].shape[0]))
        key = (heads, dtype, options, graph, rope, kv_dtype)
        if key not in self._ops:
            self._ops[key] = _decode_op.native(self._device, heads, dtype, options, graph, rope, kv_dtype)
        return self._ops[key]

    begin_forward = plan

    def run(
        self,
        q: Any,
        paged_kv_cache: Any,
        *args: Any,
        q_scale: Optional[float] = None,
        k_scale: Optional[float] = None,
        v_scale: Optional[float] = None,
        out: Any = None,
        lse: Any = None,
        return_lse: bool = False,
        enable_pdl: Optional[bool] = None,
        window_left: Optional[int] = None,
        sinks: Any = None,
        **kwargs: Any,
    ) -> Union[Any, Tuple[Any, Any]]:
        """Decode attention of ``q [batch, num_qo_heads, head_dim]`` over the planned pages.
        Returns ``out`` (written in place when given), or ``(out, lse)`` with ``lse [batch,
        num_qo_heads]`` (float32, base 2) when ``return_lse``. An fp8 cache (planned with
        ``kv_data_type``; CPU arrays or CUDA tensors) is read as code × ``k_scale`` /
        ``v_scale`` (default 1)."""
        op = "BatchDecodeWithPagedKVCacheWrapper.run"
        if args:
            raise NotImplementedError(f"{op}: extra positional arguments are not supported (pass k_scale/v_scale "
                                      "by keyword)")
        _args.unsupported(op, q_scale=q_scale, sinks=sinks, **kwargs)
        p = _args.planned(self._plan, op)
        k, v = _args.split_cache(paged_kv_cache)
        ks, vs = _args.fp8_scales(op, p["kv_dtype"], k_scale, v_scale)
        hq, hkv, d = p["heads"]
        if tuple(q.shape[1:]) != (hq, d):
            raise ValueError(f"{op}: q shape {tuple(q.shape)} does not match the plan (batch, {hq}, {d})")
        _args.check_paged_k(op, k, p["page_size"], hkv, d, self._kv_layout)
        _args.check_dtype("q", q, p["dtype"])
        scale, cap, planned_win = p["options"]
        win = _args.run_window(op, planned_win, window_left, p["cuda"] is not None)
        out, lse = _args.outputs(q, out, lse, return_lse)
        if p["cuda"] is not None:
            p["cuda"].run(_cuda.stream(self._device), view(q, "q"), view(k, "k_cache"), view(v, "v_cache"),
                          self._kv_layout, view(out, "out"), opt_view(lse, "lse"), k_scale=ks, v_scale=vs)
            return _args.result(out, lse, return_lse)
        _cuda.not_yet(op, q)
        indptr, indices, last = p["tables"]
        kd, vd = view(k, "k_cache"), view(v, "v_cache")
        if kd[4] != p["kv_dtype"]:
            raise ValueError(f"paged_kv_cache: dtype {kd[4]} differs from the planned {p['kv_dtype']}")
        _native.batch_decode_paged(view(q, "q"), kd, vd, self._kv_layout,
                                   view(indptr, "indptr"), view(indices, "indices"),
                                   view(last, "last_page_len"), view(out, "out"), opt_view(lse, "lse"),
                                   scale, cap, win, rope=p["rope"], k_scale=ks, v_scale=vs)
        return _args.result(out, lse, return_lse)

    forward = run


class CUDAGraphBatchDecodeWithPagedKVCacheWrapper(BatchDecodeWithPagedKVCacheWrapper):
    """The CUDA-graph form of :class:`BatchDecodeWithPagedKVCacheWrapper`: page tables live in
    fixed-size buffers given at construction, which ``plan`` refills."""

    def __init__(
        self,
        workspace_buffer: Any,
        indptr_buffer: Any,
        indices_buffer: Any,
        last_page_len_buffer: Any,
        kv_layout: str = "NHD",
        use_tensor_cores: bool = False,
    ) -> None:
        super().__init__(workspace_buffer, kv_layout, use_cuda_graph=True, use_tensor_cores=use_tensor_cores,
                         paged_kv_indptr_buffer=indptr_buffer, paged_kv_indices_buffer=indices_buffer,
                         paged_kv_last_page_len_buffer=last_page_len_buffer)
