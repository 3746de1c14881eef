"""Prefill attention with FlashInfer's names: ``single_prefill_with_kv_cache``,
``BatchPrefillWithPagedKVCacheWrapper``, ``BatchPrefillWithRaggedKVCacheWrapper``.

A request's ``qo_len`` query tokens are the last ``qo_len`` positions of its ``kv_len``-token
context (``qo_len <= kv_len``); ``causal`` masks keys after each query's position.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple, Union

import numpy as np

from . import _args, _cuda, _mask, _native, _single_cuda, _tensor
from ._tensor import opt_view, view


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
    (float32, base 2). ``custom_mask`` (bool ``[qo_len, kv_len]``) or ``packed_custom_mask``
    (its little-endian packed bits) replaces ``causal``, as in FlashInfer.
    ``pos_encoding_mode="ROPE_LLAMA"`` rotates query token ``i`` (at ``kv_len - qo_len + i``)
    and key ``t`` (at ``t``) inside attention, with ``rope_scale``/``rope_theta`` (not with a
    custom mask). fp8 scales, a different ``o_dtype`` and fp16 QK reduction raise
    ``NotImplementedError``."""
    op = "single_prefill_with_kv_cache"
    _args.unsupported(op, scale_q=scale_q, scale_k=scale_k, scale_v=scale_v,
                      use_fp16_qk_reduction=use_fp16_qk_reduction, **kwargs)
    rope = _args.rope(op, pos_encoding_mode, rope_scale, rope_theta)
    _args.kv_dtype(op, q, None, o_dtype)
    layout = _args.layout(kv_layout)
    scale, cap, win = _args.options(sm_scale, logits_soft_cap, window_left)
    kv_len = int(k.shape[0] if layout == "NHD" else k.shape[1]) if len(k.shape) == 3 else 0
    mask = _mask.for_single(op, custom_mask, packed_custom_mask, int(q.shape[0]), kv_len)
    if rope is not None and mask is not None:
        raise NotImplementedError(f"{op}: pos_encoding_mode={pos_encoding_mode!r} with a custom mask is not "
                                  "supported by ferrinfer")
    causal = bool(causal) and mask is None
    dev = _cuda.device_of(q)
    if dev is not None:
        return _single_cuda.prefill(dev, q, k, v, layout, causal, (scale, cap, win), return_lse, mask, rope)
    out, lse = _args.outputs(q, None, None, return_lse)
    if rope is not None:
        # The ragged prefill with one request: its RoPE form (the single op has none).
        qo_indptr = np.array([0, int(q.shape[0])], np.int32)
        kv_indptr = np.array([0, kv_len], np.int32)
        _native.batch_prefill_ragged(view(q, "q"), view(k, "k"), view(v, "v"), view(qo_indptr, "qo_indptr"),
                                     view(kv_indptr, "kv_indptr"), layout, view(out, "out"), opt_view(lse, "lse"),
                                     causal, scale, cap, win, None, rope=rope)
        return _args.result(out, lse, return_lse)
    _native.single_prefill(view(q, "q"), view(k, "k"), view(v, "v"), layout, view(out, "out"),
                           opt_view(lse, "lse"), causal, scale, cap, win, mask)
    return _args.result(out, lse, return_lse)


def single_prefill_with_kv_cache_return_lse(q: Any, k: Any, v: Any, **kwargs: Any) -> Tuple[Any, Any]:
    """``single_prefill_with_kv_cache(..., return_lse=True)`` (FlashInfer's older name)."""
    kwargs["return_lse"] = True
    return single_prefill_with_kv_cache(q, k, v, **kwargs)


class _PrefillBase:
    _name = "prefill"

    def __init__(self, kv_layout: str, use_cuda_graph: bool, jit_args: Any, workspace: Any = None,
                 graph_buffers: Optional[dict] = None) -> None:
        _args.unsupported(self._name, jit_args=jit_args)
        self._kv_layout = _args.layout(kv_layout)
        self._use_cuda_graph = bool(use_cuda_graph)
        self._plan: Optional[dict] = None
        # A CUDA float_workspace_buffer puts the wrapper on that GPU (as in FlashInfer): the
        # plan lives in it, run launches on torch.cuda.current_stream().
        self._workspace = workspace
        self._device = _cuda.device_of(workspace)
        self._ops: dict = {}
        # CUDA-graph mode on CUDA: FlashInfer's fixed *_buf arguments give the limits (batch from
        # qo_indptr_buf, pages from paged_kv_indices_buf, mask bytes from custom_mask_buf) and the
        # first plan's query rows bound every later plan's (FlashInfer's _max_total_num_rows).
        self._graph_buffers = graph_buffers or {}
        self._graph_rows: Optional[int] = None
        self._graph_first: Optional[tuple] = None
        if self._device is not None and self._use_cuda_graph:
            bufs = self._graph_buffers
            missing = [n + "_buf" for n, b in bufs.items() if b is None and n not in ("custom_mask", "mask_indptr")]
            if missing:
                raise ValueError(f"{self._name}: use_cuda_graph=True needs {', '.join(missing)} (fixed-size "
                                 "buffers, as in FlashInfer)")
            if (bufs.get("custom_mask") is None) != (bufs.get("mask_indptr") is None):
                raise ValueError(f"{self._name}: custom_mask_buf and mask_indptr_buf go together")

    def _commit_plan(self, op: str, p: dict, tables: Tuple[Tuple[str, Any], ...],
                     native_plan: Callable[[Any], None]) -> None:
        """Makes ``p`` the wrapper's plan. On CUDA the native op plans it first (``native_plan``
        given the op); in CUDA-graph mode the step is checked against the first plan before, and
        the fixed buffers are filled with its ``tables`` (``(name, host array)``) and mask after.
        A refused plan changes nothing: the previous plan, buffers and limits stay."""
        if self._device is not None:
            graph = self._graph_check(op, p, tables)
            cuda = self._cuda_op(p, graph)
            native_plan(cuda)
            p["cuda"] = cuda
            if graph is not None:
                _args.fill_buffers(op, self._graph_tables(p, tables))
                self._graph_rows = graph[1]
                if self._graph_first is None:
                    self._graph_first = self._graph_kind(p)
        self._plan = p

    @staticmethod
    def _graph_kind(p: dict) -> tuple:
        """What selects a plan's native op and kernel besides its sizes: a captured run replays
        the first plan's, so every later plan of a graph-mode wrapper must match it."""
        return (p["mask"] is not None, p["heads"], p["dtype"], p["kv_dtype"], p["causal"], p["options"], p["rope"])

    def _graph_tables(self, p: dict, tables: Tuple[Tuple[str, Any], ...]) -> list:
        """``(name, fixed buffer, host table)`` of a plan's tables and custom mask."""
        bufs = self._graph_buffers
        named = [(n, bufs[n], t) for n, t in tables]
        if p["mask"] is not None:
            bits, offsets = p["mask"]
            named += [("custom_mask", bufs["custom_mask"], np.frombuffer(bits, dtype=np.uint8)),
                      ("mask_indptr", bufs["mask_indptr"], np.asarray(offsets, dtype=np.int32))]
        return named

    def _graph_check(self, op: str, p: dict, tables: Tuple[Tuple[str, Any], ...]) -> Optional[Tuple[int, ...]]:
        """CUDA-graph mode on CUDA: checks the step against the first plan (query rows at most
        its, the same kind: :meth:`_graph_kind`) and the fixed buffers, and returns the native
        op's limits ``(max_batch, max_qo_tokens, max_pages, max_mask_bytes)``; ``None`` otherwise."""
        if self._device is None or not self._use_cuda_graph:
            return None
        bufs = self._graph_buffers
        rows = int(p["qo_indptr"][-1])
        if self._graph_rows is not None and rows > self._graph_rows:
            raise ValueError(f"{op}: {rows} query rows exceed the first plan's {self._graph_rows} (CUDA-graph mode: "
                             "the first plan sizes the captured run)")
        first = self._graph_first
        if first is not None and first != self._graph_kind(p):
            if first[0] != (p["mask"] is not None):
                raise ValueError(f"{op}: in CUDA-graph mode every plan must {'have' if first[0] else 'lack'} a custom "
                                 "mask, as the first did (a captured run replays the first plan's kernel)")
            raise ValueError(f"{op}: in CUDA-graph mode every plan must keep the first plan's heads, dtypes, causal "
                             "flag, options and RoPE (a captured run replays the first plan's kernel)")
        if p["mask"] is not None and bufs.get("custom_mask") is None:
            raise ValueError(f"{op}: a custom mask in CUDA-graph mode needs custom_mask_buf and mask_indptr_buf")
        _args.check_buffers(op, self._graph_tables(p, tables))
        pages = bufs.get("paged_kv_indices")
        mask = bufs.get("custom_mask")
        return (int(bufs["qo_indptr"].shape[0]) - 1, self._graph_rows or max(rows, 1),
                0 if pages is None else int(pages.shape[0]), 0 if mask is None else int(mask.shape[0]))

    def _plan_common(self, op: str, qo_indptr: Any, kv_lens: np.ndarray, heads: Tuple[int, int, int, Optional[int]],
                     masks: Tuple[Any, Any], causal: bool, dtypes: Tuple[Any, Any, Any],
                     options: Tuple[Any, Any, Any], rope: Tuple[Any, Any, Any], **unsupported: Any) -> dict:
        """What both wrappers' ``plan`` records: host int32 ``qo_indptr``, heads, element type,
        options, RoPE (``rope``: ``pos_encoding_mode``, ``rope_scale``, ``rope_theta``) and the
        custom mask (which replaces ``causal``) packed for the native op."""
        hq, hkv, d_qk, d_vo = heads
        if d_vo is not None and int(d_vo) != int(d_qk):
            raise NotImplementedError(f"{op}: head_dim_vo={d_vo} differs from head_dim_qk={d_qk}")
        _args.unsupported(op, **unsupported)
        rope_args = _args.rope(op, *rope)
        qo = _tensor.host_int32(qo_indptr, "qo_indptr")
        mask = _mask.for_batch(op, masks[0], masks[1], np.diff(qo).tolist(), kv_lens.tolist())
        if rope_args is not None and mask is not None:
            raise NotImplementedError(f"{op}: pos_encoding_mode={rope[0]!r} with a custom mask is not supported "
                                      "by ferrinfer")
        q_dt, kv_dt = _args.q_kv_dtypes(op, *dtypes)
        if kv_dt in _args.FP8:
            # As on the GPU: fp8 K/V are read by the plain (causal / window / soft-cap) forms.
            if mask is not None:
                raise NotImplementedError(f"{op}: a custom mask with kv_data_type={kv_dt} is not supported "
                                          "by ferrinfer")
            if rope_args is not None:
                raise NotImplementedError(f"{op}: pos_encoding_mode={rope[0]!r} with kv_data_type={kv_dt} is "
                                          "not supported by ferrinfer")
        return dict(qo_indptr=qo, heads=(int(hq), int(hkv), int(d_qk)), mask=mask,
                    causal=bool(causal) and mask is None, dtype=q_dt, kv_dtype=kv_dt,
                    options=_args.options(*options), rope=rope_args)

    def _cuda_op(self, p: dict, graph: Optional[Tuple[int, ...]] = None) -> Any:
        """The native CUDA op for the plan's heads, dtype, options and graph limits (built once;
        in graph mode the first plan's kernel stays the op's, see the native op)."""
        key = (p["heads"], p["dtype"], p["causal"], p["options"], p["rope"], p["kv_dtype"], graph)
        if key not in self._ops:
            self._ops[key] = _native.CudaBatchPrefill(self._device, *p["heads"], p["dtype"], p["causal"],
                                                      *p["options"], rope=p["rope"], kv_dtype=p["kv_dtype"],
                                                      graph=graph)
        return self._ops[key]

    @property
    def is_cuda_graph_enabled(self) -> bool:
        return self._use_cuda_graph

    def _check_q(self, op: str, p: dict, q: Any) -> None:
        hq, _, d = p["heads"]
        if len(q.shape) != 3 or tuple(q.shape[1:]) != (hq, d):
            raise ValueError(f"{op}: q shape {tuple(q.shape)} does not match the plan (nnz_qo, {hq}, {d})")
        nnz = int(p["qo_indptr"][-1])
        # CUDA-graph mode: q keeps the captured (padded) rows while plans change the row count.
        padded = self._use_cuda_graph and self._device is not None
        if q.shape[0] < nnz or (q.shape[0] != nnz and not padded):
            raise ValueError(f"{op}: q has {q.shape[0]} rows but the plan's qo_indptr ends at {nnz}")
        _args.check_dtype("q", q, p["dtype"])


class BatchPrefillWithPagedKVCacheWrapper(_PrefillBase):
    """Batch prefill / append attention over a paged KV cache: ``plan`` from host CSR tables
    (``qo_indptr``, ``paged_kv_indptr``, ``paged_kv_indices``, ``paged_kv_last_page_len``),
    then ``run(q, paged_kv_cache)`` per layer. Cache forms as in
    :class:`ferrinfer.BatchDecodeWithPagedKVCacheWrapper`.

    ``use_cuda_graph=True`` on CUDA takes FlashInfer's fixed buffers (``qo_indptr_buf``,
    ``paged_kv_indptr_buf``, ``paged_kv_indices_buf``, ``paged_kv_last_page_len_buf``; with
    custom masks ``custom_mask_buf`` and ``mask_indptr_buf``): their sizes bound the batch, the
    pages and the mask bytes, each ``plan`` copies its tables into them, and a ``run`` captured
    in a CUDA graph stays valid after later plans. As in FlashInfer, the first plan's query rows
    bound every later plan's (``q``/``out`` may keep that many rows); its kernel — tile, custom
    mask or none — stays the wrapper's."""

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
        _args.unsupported(self._name, **kwargs)
        super().__init__(kv_layout, use_cuda_graph, jit_args, float_workspace_buffer,
                         dict(qo_indptr=qo_indptr_buf, paged_kv_indptr=paged_kv_indptr_buf,
                              paged_kv_indices=paged_kv_indices_buf, paged_kv_last_page_len=paged_kv_last_page_len_buf,
                              custom_mask=custom_mask_buf, mask_indptr=mask_indptr_buf))

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
        """Records the step's tables (host int32 copies), heads, options and custom mask
        (``custom_mask``: every request's bool ``[qo_len, kv_len]`` matrix flattened one after
        another, or ``packed_custom_mask``: the same packed per request, little-endian; it
        replaces ``causal``, as in FlashInfer)."""
        op = self._name + ".plan"
        tables = (_tensor.host_int32(paged_kv_indptr, "paged_kv_indptr"),
                  _tensor.host_int32(paged_kv_indices, "paged_kv_indices"),
                  _tensor.host_int32(paged_kv_last_page_len, "paged_kv_last_page_len"))
        p = self._plan_common(op, qo_indptr, _paged_kv_lens(tables, int(page_size)),
                              (num_qo_heads, num_kv_heads, head_dim_qk, head_dim_vo), (custom_mask, packed_custom_mask),
                              causal, (q_data_type, kv_data_type, o_data_type),
                              (sm_scale, logits_soft_cap, window_left), (pos_encoding_mode, rope_scale, rope_theta),
                              use_fp16_qk_reduction=use_fp16_qk_reduction, **kwargs)
        p.update(tables=tables, page_size=int(page_size))
        ip, ix, la = tables
        self._commit_plan(op, p, (("qo_indptr", p["qo_indptr"]), ("paged_kv_indptr", ip), ("paged_kv_indices", ix),
                                  ("paged_kv_last_page_len", la)),
                          lambda cuda: cuda.plan_paged(_cuda.stream(self._device), _cuda.workspace(self._workspace),
                                                       view(p["qo_indptr"], "qo_indptr"), view(ip, "paged_kv_indptr"),
                                                       view(ix, "paged_kv_indices"),
                                                       view(la, "paged_kv_last_page_len"), p["page_size"], p["mask"]))

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
        **kwargs: Any,
    ) -> Union[Any, Tuple[Any, Any]]:
        """Attention of ``q [nnz_qo, num_qo_heads, head_dim]`` over the planned pages. Returns
        ``out``, or ``(out, lse)`` with ``lse [nnz_qo, num_qo_heads]`` (float32, base 2). An fp8
        cache (planned with ``kv_data_type``; CPU arrays or CUDA tensors) is read as code ×
        ``k_scale`` / ``v_scale`` (default 1)."""
        op = self._name + ".run"
        if args:
            raise NotImplementedError(f"{op}: extra positional arguments are not supported (pass k_scale/v_scale "
                                      "by keyword)")
        _args.unsupported(op, q_scale=q_scale, **kwargs)
        p = _args.planned(self._plan, op)
        k, v = _args.split_cache(paged_kv_cache)
        ks, vs = _args.fp8_scales(op, p["kv_dtype"], k_scale, v_scale)
        self._check_q(op, p, q)
        _, hkv, d = p["heads"]
        _args.check_paged_k(op, k, p["page_size"], hkv, d, self._kv_layout)
        scale, cap, planned_win = p["options"]
        win = _args.run_window(op, planned_win, window_left, p.get("cuda") is not None)
        out, lse = _args.outputs(q, out, lse, return_lse)
        if p.get("cuda") is not None:
            p["cuda"].run_paged(_cuda.stream(self._device), view(q, "q"), view(k, "k_cache"), view(v, "v_cache"),
                                self._kv_layout, view(out, "out"), opt_view(lse, "lse"), k_scale=ks, v_scale=vs)
            return _args.result(out, lse, return_lse)
        _cuda.not_yet(op, q)
        indptr, indices, last = p["tables"]
        kd, vd = view(k, "k_cache"), view(v, "v_cache")
        _check_kv_dtype("paged_kv_cache", kd, p)
        _native.batch_prefill_paged(view(q, "q"), kd, vd, self._kv_layout,
                                    view(p["qo_indptr"], "qo_indptr"), view(indptr, "paged_kv_indptr"),
                                    view(indices, "paged_kv_indices"), view(last, "paged_kv_last_page_len"),
                                    view(out, "out"), opt_view(lse, "lse"), p["causal"], scale, cap, win, p["mask"],
                                    rope=p["rope"], k_scale=ks, v_scale=vs)
        return _args.result(out, lse, return_lse)

    forward = run


class BatchPrefillWithRaggedKVCacheWrapper(_PrefillBase):
    """Batch prefill over packed ("ragged") K/V: request ``b`` has query rows
    ``qo_indptr[b]:qo_indptr[b+1]`` and K/V rows ``kv_indptr[b]:kv_indptr[b+1]``. CUDA-graph
    mode as the paged wrapper's, with ``qo_indptr_buf`` and ``kv_indptr_buf`` (``k``/``v`` then
    stay at the captured addresses, at least as long as every plan's K/V)."""

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
        _args.unsupported(self._name, **kwargs)
        super().__init__(kv_layout, use_cuda_graph, jit_args, float_workspace_buffer,
                         dict(qo_indptr=qo_indptr_buf, kv_indptr=kv_indptr_buf, custom_mask=custom_mask_buf,
                              mask_indptr=mask_indptr_buf))

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
        """Records the offsets (host int32 copies), heads, options and custom mask (as the paged
        wrapper's ``plan``)."""
        op = self._name + ".plan"
        kv = _tensor.host_int32(kv_indptr, "kv_indptr")
        p = self._plan_common(op, qo_indptr, np.diff(kv), (num_qo_heads, num_kv_heads, head_dim_qk, head_dim_vo),
                              (custom_mask, packed_custom_mask), causal, (q_data_type, kv_data_type, o_data_type),
                              (sm_scale, logits_soft_cap, window_left), (pos_encoding_mode, rope_scale, rope_theta),
                              use_fp16_qk_reduction=use_fp16_qk_reduction, **kwargs)
        p.update(kv_indptr=kv)
        self._commit_plan(op, p, (("qo_indptr", p["qo_indptr"]), ("kv_indptr", kv)),
                          lambda cuda: cuda.plan_ragged(_cuda.stream(self._device), _cuda.workspace(self._workspace),
                                                        view(p["qo_indptr"], "qo_indptr"), view(kv, "kv_indptr"),
                                                        p["mask"]))

    begin_forward = plan

    def run(
        self,
        q: Any,
        k: Any,
        v: Any,
        *args: Any,
        k_scale: Optional[float] = None,
        v_scale: Optional[float] = None,
        out: Any = None,
        lse: Any = None,
        return_lse: bool = False,
        enable_pdl: Optional[bool] = None,
        **kwargs: Any,
    ) -> Union[Any, Tuple[Any, Any]]:
        """Attention of ``q [nnz_qo, num_qo_heads, head_dim]`` over ``k``, ``v``
        ``[nnz_kv, num_kv_heads, head_dim]``. Returns ``out`` or ``(out, lse)``. fp8 ``k``/``v``
        (planned with ``kv_data_type``) are read as code × ``k_scale`` / ``v_scale`` (default
        1; keyword arguments ferrinfer adds to FlashInfer's ragged ``run``)."""
        op = self._name + ".run"
        if args:
            raise NotImplementedError(f"{op}: extra positional arguments are not supported")
        _args.unsupported(op, **kwargs)
        p = _args.planned(self._plan, op)
        ks, vs = _args.fp8_scales(op, p["kv_dtype"], k_scale, v_scale)
        self._check_q(op, p, q)
        _, hkv, d = p["heads"]
        if len(k.shape) != 3 or tuple(k.shape[1:]) != (hkv, d):
            raise ValueError(f"{op}: k shape {tuple(k.shape)} does not match the plan (nnz_kv, {hkv}, {d})")
        scale, cap, win = p["options"]
        out, lse = _args.outputs(q, out, lse, return_lse)
        if p.get("cuda") is not None:
            p["cuda"].run_ragged(_cuda.stream(self._device), view(q, "q"), view(k, "k"), view(v, "v"),
                                 view(out, "out"), opt_view(lse, "lse"), k_scale=ks, v_scale=vs)
            return _args.result(out, lse, return_lse)
        _cuda.not_yet(op, q)
        kd = view(k, "k")
        _check_kv_dtype("k", kd, p)
        _native.batch_prefill_ragged(view(q, "q"), kd, view(v, "v"), view(p["qo_indptr"], "qo_indptr"),
                                     view(p["kv_indptr"], "kv_indptr"), "NHD", view(out, "out"),
                                     opt_view(lse, "lse"), p["causal"], scale, cap, win, p["mask"],
                                     rope=p["rope"], k_scale=ks, v_scale=vs)
        return _args.result(out, lse, return_lse)

    forward = run


def _check_kv_dtype(arg: str, k_view: tuple, p: dict) -> None:
    """The K/V array's dtype (a native view's ``[4]``) must be the planned ``kv_data_type``."""
    if k_view[4] != p["kv_dtype"]:
        raise ValueError(f"{arg}: dtype {k_view[4]} differs from the planned kv_data_type {p['kv_dtype']}")


def _paged_kv_lens(tables: Tuple[np.ndarray, np.ndarray, np.ndarray], page_size: int) -> np.ndarray:
    """Each request's KV length from FlashInfer's page tables: full pages plus the last one's
    fill (0 for a request without pages). Malformed tables are refused later, by the native
    op's checks; here they only have to give some length per request."""
    indptr, _, last = tables
    pages = np.diff(indptr).astype(np.int64)
    n = min(pages.size, last.size)
    lens = np.zeros(pages.size, dtype=np.int64)
    lens[:n] = np.where(pages[:n] > 0, (pages[:n] - 1) * page_size + last[:n], 0)
    return lens
