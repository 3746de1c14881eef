"""Prefill attention with FlashInfer's names: ``single_prefill_with_kv_cache``,
``BatchPrefillWithPagedKVCacheWrapper``, ``BatchPrefillWithRaggedKVCacheWrapper``.

A request's ``qo_len`` query tokens are the last ``qo_len`` positions of its ``kv_len``-token
context (``qo_len <= kv_len``); ``causal`` masks keys after each query's position.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

from . import _args, _cuda, _native, _single_cuda, _tensor
from ._tensor import opt_view, view
from .decode import _outputs, _planned


def _unsupported_plan(op: str, head_dim_qk: int, head_dim_vo: Optional[int], **given: Any) -> None:
    if head_dim_vo is not None and int(head_dim_vo) != int(head_dim_qk):
        raise NotImplementedError(f"{op}: head_dim_vo={head_dim_vo} differs from head_dim_qk={head_dim_qk}")
    _args.unsupported(op, **given)


def _kv_dtype(op: str, q_data_type: Any, kv_data_type: Any) -> str:
    q_dt = _tensor.dtype_name(q_data_type)
    kv_dt = q_dt if kv_data_type is None else _tensor.dtype_name(kv_data_type)
    if kv_dt != q_dt:
        raise NotImplementedError(f"{op}: kv_data_type {kv_dt} differs from q_data_type {q_dt}")
    return q_dt


def single_prefill_with_kv_cache(
    q: Any,
    k: Any,
    v: Any,
    scale_q: Any = None,
    scale_k: Any = None,
    scale_v: Any = None,
    o_dtype: Any = None,
    custom_mask: Any = None,
    packed_custom_mask: Any = None,
    causal: bool = False,
    kv_layout: str = "NHD",
    pos_encoding_mode: str = "NONE",
    use_fp16_qk_reduction: bool = False,
    sm_scale: Optional[float] = None,
    window_left: int = -1,
    logits_soft_cap: Optional[float] = None,
    rope_scale: Optional[float] = None,
    rope_theta: Optional[float] = None,
    backend: str = "auto",
    return_lse: bool = False,
    **kwargs: Any,
) -> Union[Any, Tuple[Any, Any]]:
    """Prefill attention of one request: ``q [qo_len, num_qo_heads, head_dim]`` against ``k``,
    ``v`` ``[kv_len, num_kv_heads, head_dim]`` (NHD) or ``[num_kv_heads, kv_len, head_dim]``
    (HND). Returns ``out`` like ``q``, or ``(out, lse)`` with ``lse [qo_len, num_qo_heads]``
    (float32, base 2). Custom masks, RoPE, fp8 scales, a different ``o_dtype`` and fp16 QK
    reduction raise ``NotImplementedError``."""
    op = "single_prefill_with_kv_cache"
    _args.unsupported(op, scale_q=scale_q, scale_k=scale_k, scale_v=scale_v, custom_mask=custom_mask,
                      packed_custom_mask=packed_custom_mask, pos_encoding_mode=pos_encoding_mode,
                      use_fp16_qk_reduction=use_fp16_qk_reduction, rope_scale=rope_scale, rope_theta=rope_theta,
                      **kwargs)
    if o_dtype is not None and _tensor.dtype_name(o_dtype) != _tensor.dtype_name(q):
        raise NotImplementedError(f"{op}: o_dtype {_tensor.dtype_name(o_dtype)} differs from q's dtype")
    scale, cap, win = _args.options(sm_scale, logits_soft_cap, window_left)
    dev = _cuda.device_of(q)
    if dev is not None:
        return _single_cuda.prefill(dev, q, k, v, _args.layout(kv_layout), bool(causal), (scale, cap, win),
                                    return_lse)
    out, lse = _outputs(q, None, None, return_lse)
    _native.single_prefill(view(q, "q"), view(k, "k"), view(v, "v"), _args.layout(kv_layout), view(out, "out"),
                           opt_view(lse, "lse"), bool(causal), scale, cap, win)
    return (out, lse) if return_lse else out


def single_prefill_with_kv_cache_return_lse(q: Any, k: Any, v: Any, **kwargs: Any) -> Tuple[Any, Any]:
    """``single_prefill_with_kv_cache(..., return_lse=True)`` (FlashInfer's older name)."""
    kwargs["return_lse"] = True
    return single_prefill_with_kv_cache(q, k, v, **kwargs)


class _PrefillBase:
    _name = "prefill"

    def __init__(self, kv_layout: str, use_cuda_graph: bool, jit_args: Any, workspace: Any = None) -> None:
        _args.unsupported(self._name, jit_args=jit_args)
        self._kv_layout = _args.layout(kv_layout)
        self._use_cuda_graph = bool(use_cuda_graph)
        self._plan: Optional[dict] = None
        # A CUDA float_workspace_buffer puts the wrapper on that GPU (as in FlashInfer): the
        # plan lives in it, run launches on torch.cuda.current_stream().
        self._workspace = workspace
        self._device = _cuda.device_of(workspace)
        self._ops: dict = {}
        if self._device is not None and self._use_cuda_graph:
            raise NotImplementedError(f"{self._name}: use_cuda_graph=True on CUDA (the CUDA path of the prefill "
                                      "wrappers has no graph mode yet)")

    def _cuda_op(self, p: dict) -> Any:
        """The native CUDA op for the plan's heads, dtype and options (built once)."""
        key = (p["heads"], p["dtype"], p["causal"], p["options"])
        if key not in self._ops:
            self._ops[key] = _native.CudaBatchPrefill(self._device, *p["heads"], p["dtype"], p["causal"],
                                                      *p["options"])
        return self._ops[key]

    def _cuda_out(self, op: str, p: dict, window_left: Optional[int]) -> None:
        if window_left is not None and _args.options(None, None, window_left)[2] != p["options"][2]:
            raise NotImplementedError(f"{op}: window_left differing from plan() on CUDA (re-plan instead)")

    @property
    def is_cuda_graph_enabled(self) -> bool:
        return self._use_cuda_graph

    def _check_q(self, op: str, p: dict, q: Any) -> None:
        hq, _, d = p["heads"]
        if len(q.shape) != 3 or tuple(q.shape[1:]) != (hq, d):
            raise ValueError(f"{op}: q shape {tuple(q.shape)} does not match the plan (nnz_qo, {hq}, {d})")
        nnz = int(p["qo_indptr"][-1])
        if q.shape[0] != nnz:
            raise ValueError(f"{op}: q has {q.shape[0]} rows but the plan's qo_indptr ends at {nnz}")
        _args.check_dtype("q", q, p["dtype"])


class BatchPrefillWithPagedKVCacheWrapper(_PrefillBase):
    """Batch prefill / append attention over a paged KV cache: ``plan`` from host CSR tables
    (``qo_indptr``, ``paged_kv_indptr``, ``paged_kv_indices``, ``paged_kv_last_page_len``),
    then ``run(q, paged_kv_cache)`` per layer. Cache forms as in
    :class:`ferrinfer.BatchDecodeWithPagedKVCacheWrapper`."""

    _name = "BatchPrefillWithPagedKVCacheWrapper"

    def __init__(
        self,
        float_workspace_buffer: Any = None,
        kv_layout: str = "NHD",
        use_cuda_graph: bool = False,
        qo_indptr_buf: Any = None,
        paged_kv_indptr_buf: Any = None,
        paged_kv_indices_buf: Any = None,
        paged_kv_last_page_len_buf: Any = None,
        custom_mask_buf: Any = None,
        mask_indptr_buf: Any = None,
        backend: str = "auto",
        jit_args: Any = None,
        **kwargs: Any,
    ) -> None:
        _args.unsupported(self._name, custom_mask_buf=custom_mask_buf, mask_indptr_buf=mask_indptr_buf, **kwargs)
        super().__init__(kv_layout, use_cuda_graph, jit_args, float_workspace_buffer)

    def plan(
        self,
        qo_indptr: Any,
        paged_kv_indptr: Any,
        paged_kv_indices: Any,
        paged_kv_last_page_len: Any,
        num_qo_heads: int,
        num_kv_heads: int,
        head_dim_qk: int,
        page_size: int,
        head_dim_vo: Optional[int] = None,
        custom_mask: Any = None,
        packed_custom_mask: Any = None,
        causal: bool = False,
        pos_encoding_mode: str = "NONE",
        use_fp16_qk_reduction: bool = False,
        sm_scale: Optional[float] = None,
        window_left: int = -1,
        logits_soft_cap: Optional[float] = None,
        rope_scale: Optional[float] = None,
        rope_theta: Optional[float] = None,
        q_data_type: Any = "float16",
        kv_data_type: Any = None,
        o_data_type: Any = None,
        non_blocking: bool = True,
        **kwargs: Any,
    ) -> None:
        """Records the step's tables (host int32 copies), heads and options."""
        op = self._name + ".plan"
        _unsupported_plan(op, head_dim_qk, head_dim_vo, custom_mask=custom_mask,
                          packed_custom_mask=packed_custom_mask, pos_encoding_mode=pos_encoding_mode,
                          use_fp16_qk_reduction=use_fp16_qk_reduction, rope_scale=rope_scale, rope_theta=rope_theta,
                          **kwargs)
        dtype = _kv_dtype(op, q_data_type, kv_data_type)
        if o_data_type is not None and _tensor.dtype_name(o_data_type) != dtype:
            raise NotImplementedError(f"{op}: o_data_type {_tensor.dtype_name(o_data_type)} differs from q_data_type")
        self._plan = dict(
            qo_indptr=_tensor.host_int32(qo_indptr, "qo_indptr"),
            tables=(_tensor.host_int32(paged_kv_indptr, "paged_kv_indptr"),
                    _tensor.host_int32(paged_kv_indices, "paged_kv_indices"),
                    _tensor.host_int32(paged_kv_last_page_len, "paged_kv_last_page_len")),
            heads=(int(num_qo_heads), int(num_kv_heads), int(head_dim_qk)), page_size=int(page_size),
            causal=bool(causal), dtype=dtype,
            options=_args.options(sm_scale, logits_soft_cap, window_left))
        if self._device is not None:
            p = self._plan
            p["cuda"] = self._cuda_op(p)
            ip, ix, la = p["tables"]
            p["cuda"].plan_paged(_cuda.stream(self._device), _cuda.workspace(self._workspace),
                                 view(p["qo_indptr"], "qo_indptr"), view(ip, "paged_kv_indptr"),
                                 view(ix, "paged_kv_indices"), view(la, "paged_kv_last_page_len"), p["page_size"])

    begin_forward = plan

    def run(
        self,
        q: Any,
        paged_kv_cache: Any,
        *args: Any,
        k_scale: Optional[float] = None,
        v_scale: Optional[float] = None,
        out: Any = None,
        lse: Any = None,
        return_lse: bool = False,
        enable_pdl: Optional[bool] = None,
        window_left: Optional[int] = None,
        **kwargs: Any,
    ) -> Union[Any, Tuple[Any, Any]]:
        """Attention of ``q [nnz_qo, num_qo_heads, head_dim]`` over the planned pages. Returns
        ``out``, or ``(out, lse)`` with ``lse [nnz_qo, num_qo_heads]`` (float32, base 2)."""
        op = self._name + ".run"
        if args:
            raise NotImplementedError(f"{op}: extra positional arguments (fp8 scales) are not supported")
        _args.unsupported(op, k_scale=k_scale, v_scale=v_scale, **kwargs)
        p = _planned(self._plan, op)
        k, v = _args.split_cache(paged_kv_cache)
        self._check_q(op, p, q)
        _, hkv, d = p["heads"]
        ps = p["page_size"]
        want = (ps, hkv, d) if self._kv_layout == "NHD" else (hkv, ps, d)
        if len(k.shape) != 4 or tuple(k.shape[1:]) != want:
            raise ValueError(f"{op}: paged_kv_cache K shape {tuple(k.shape)} does not match the plan "
                             f"(num_pages, {', '.join(map(str, want))}) in {self._kv_layout}")
        scale, cap, win = p["options"]
        if window_left is not None:
            win = _args.options(None, None, window_left)[2]
        out, lse = _outputs(q, out, lse, return_lse)
        if p.get("cuda") is not None:
            self._cuda_out(op, p, window_left)
            p["cuda"].run_paged(_cuda.stream(self._device), view(q, "q"), view(k, "k_cache"), view(v, "v_cache"),
                                self._kv_layout, view(out, "out"), opt_view(lse, "lse"))
            return (out, lse) if return_lse else out
        _cuda.not_yet(op, q)
        indptr, indices, last = p["tables"]
        _native.batch_prefill_paged(view(q, "q"), view(k, "k_cache"), view(v, "v_cache"), self._kv_layout,
                                    view(p["qo_indptr"], "qo_indptr"), view(indptr, "paged_kv_indptr"),
                                    view(indices, "paged_kv_indices"), view(last, "paged_kv_last_page_len"),
                                    view(out, "out"), opt_view(lse, "lse"), p["causal"], scale, cap, win)
        return (out, lse) if return_lse else out

    forward = run


class BatchPrefillWithRaggedKVCacheWrapper(_PrefillBase):
    """Batch prefill over packed ("ragged") K/V: request ``b`` has query rows
    ``qo_indptr[b]:qo_indptr[b+1]`` and K/V rows ``kv_indptr[b]:kv_indptr[b+1]``."""

    _name = "BatchPrefillWithRaggedKVCacheWrapper"

    def __init__(
        self,
        float_workspace_buffer: Any = None,
        kv_layout: str = "NHD",
        use_cuda_graph: bool = False,
        qo_indptr_buf: Any = None,
        kv_indptr_buf: Any = None,
        custom_mask_buf: Any = None,
        mask_indptr_buf: Any = None,
        backend: str = "auto",
        jit_args: Any = None,
        **kwargs: Any,
    ) -> None:
        _args.unsupported(self._name, custom_mask_buf=custom_mask_buf, mask_indptr_buf=mask_indptr_buf, **kwargs)
        super().__init__(kv_layout, use_cuda_graph, jit_args, float_workspace_buffer)

    def plan(
        self,
        qo_indptr: Any,
        kv_indptr: Any,
        num_qo_heads: int,
        num_kv_heads: int,
        head_dim_qk: int,
        head_dim_vo: Optional[int] = None,
        custom_mask: Any = None,
        packed_custom_mask: Any = None,
        causal: bool = False,
        pos_encoding_mode: str = "NONE",
        use_fp16_qk_reduction: bool = False,
        window_left: int = -1,
        logits_soft_cap: Optional[float] = None,
        sm_scale: Optional[float] = None,
        rope_scale: Optional[float] = None,
        rope_theta: Optional[float] = None,
        q_data_type: Any = "float16",
        kv_data_type: Any = None,
        o_data_type: Any = None,
        non_blocking: bool = True,
        **kwargs: Any,
    ) -> None:
        """Records the offsets (host int32 copies), heads and options."""
        op = self._name + ".plan"
        _unsupported_plan(op, head_dim_qk, head_dim_vo, custom_mask=custom_mask,
                          packed_custom_mask=packed_custom_mask, pos_encoding_mode=pos_encoding_mode,
                          use_fp16_qk_reduction=use_fp16_qk_reduction, rope_scale=rope_scale, rope_theta=rope_theta,
                          **kwargs)
        dtype = _kv_dtype(op, q_data_type, kv_data_type)
        if o_data_type is not None and _tensor.dtype_name(o_data_type) != dtype:
            raise NotImplementedError(f"{op}: o_data_type {_tensor.dtype_name(o_data_type)} differs from q_data_type")
        self._plan = dict(
            qo_indptr=_tensor.host_int32(qo_indptr, "qo_indptr"),
            kv_indptr=_tensor.host_int32(kv_indptr, "kv_indptr"),
            heads=(int(num_qo_heads), int(num_kv_heads), int(head_dim_qk)), causal=bool(causal),
            dtype=dtype,
            options=_args.options(sm_scale, logits_soft_cap, window_left))
        if self._device is not None:
            p = self._plan
            p["cuda"] = self._cuda_op(p)
            p["cuda"].plan_ragged(_cuda.stream(self._device), _cuda.workspace(self._workspace),
                                  view(p["qo_indptr"], "qo_indptr"), view(p["kv_indptr"], "kv_indptr"))

    begin_forward = plan

    def run(
        self,
        q: Any,
        k: Any,
        v: Any,
        *args: Any,
        out: Any = None,
        lse: Any = None,
        return_lse: bool = False,
        enable_pdl: Optional[bool] = None,
        **kwargs: Any,
    ) -> Union[Any, Tuple[Any, Any]]:
        """Attention of ``q [nnz_qo, num_qo_heads, head_dim]`` over ``k``, ``v``
        ``[nnz_kv, num_kv_heads, head_dim]``. Returns ``out`` or ``(out, lse)``."""
        op = self._name + ".run"
        if args:
            raise NotImplementedError(f"{op}: extra positional arguments are not supported")
        _args.unsupported(op, **kwargs)
        p = _planned(self._plan, op)
        self._check_q(op, p, q)
        _, hkv, d = p["heads"]
        if len(k.shape) != 3 or tuple(k.shape[1:]) != (hkv, d):
            raise ValueError(f"{op}: k shape {tuple(k.shape)} does not match the plan (nnz_kv, {hkv}, {d})")
        scale, cap, win = p["options"]
        out, lse = _outputs(q, out, lse, return_lse)
        if p.get("cuda") is not None:
            p["cuda"].run_ragged(_cuda.stream(self._device), view(q, "q"), view(k, "k"), view(v, "v"),
                                 view(out, "out"), opt_view(lse, "lse"))
            return (out, lse) if return_lse else out
        _cuda.not_yet(op, q)
        _native.batch_prefill_ragged(view(q, "q"), view(k, "k"), view(v, "v"), view(p["qo_indptr"], "qo_indptr"),
                                     view(p["kv_indptr"], "kv_indptr"), "NHD", view(out, "out"),
                                     opt_view(lse, "lse"), p["causal"], scale, cap, win)
        return (out, lse) if return_lse else out

    forward = run
