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


class MultiLevelCascadeAttentionWrapper:
    """FlashInfer's multi-level cascade attention over a paged cache: level ``i`` has its own
    ``qo_indptr`` (which queries share each of its KV entries: level 0 typically one prefix
    shared by all requests, later levels per group, the last per request) and page tables. A
    level's KV is attended once by all the queries that share it, with one
    :class:`BatchPrefillWithPagedKVCacheWrapper` per level, and the levels' states are merged
    into the output with :func:`merge_state_in_place`. ``causal`` masks the last level only.

    CPU or CUDA by ``float_workspace_buffer``, as the prefill wrapper (on CUDA the levels share
    the one workspace: each level's plan takes its own slice of it). CUDA-graph mode and
    ``window_left`` are not supported (a shared level's keys have no position relative to the
    queries, so a window over them is undefined; the Rust op refuses it for the same reason).
    """

    def __init__(
        self,
        num_levels: int,
        float_workspace_buffer: Any = None,
        kv_layout: str = "NHD",
        use_cuda_graph: bool = False,
        qo_indptr_buf_arr: Any = None,
        paged_kv_indptr_buf_arr: Any = None,
        paged_kv_indices_buf_arr: Any = None,
        paged_kv_last_page_len_buf_arr: Any = None,
        **kwargs: Any,
    ) -> None:
        from .prefill import BatchPrefillWithPagedKVCacheWrapper

        op = type(self).__name__
        _args.unsupported(op, use_cuda_graph=use_cuda_graph, qo_indptr_buf_arr=qo_indptr_buf_arr,
                          paged_kv_indptr_buf_arr=paged_kv_indptr_buf_arr,
                          paged_kv_indices_buf_arr=paged_kv_indices_buf_arr,
                          paged_kv_last_page_len_buf_arr=paged_kv_last_page_len_buf_arr, **kwargs)
        if int(num_levels) < 1:
            raise ValueError(f"{op}: num_levels must be at least 1, got {num_levels}")
        self._levels = [BatchPrefillWithPagedKVCacheWrapper(w, kv_layout)
                        for w in _level_workspaces(float_workspace_buffer, int(num_levels))]

    def plan(
        self,
        qo_indptr_arr: Any,
        paged_kv_indptr_arr: Any,
        paged_kv_indices_arr: Any,
        paged_kv_last_page_len: Any,
        num_qo_heads: int,
        num_kv_heads: int,
        head_dim: int,
        page_size: int,
        causal: bool = False,
        window_left: int = -1,
        **kwargs: Any,
    ) -> None:
        """Plans every level: ``*_arr[i]`` are level ``i``'s tables (FlashInfer's lists). Other
        keywords (``sm_scale``, ``logits_soft_cap``, ``q_data_type``, ...) go to each level's
        prefill ``plan``."""
        op = type(self).__name__ + ".plan"
        tables = (qo_indptr_arr, paged_kv_indptr_arr, paged_kv_indices_arr, paged_kv_last_page_len)
        n = len(self._levels)
        if any(len(t) != n for t in tables):
            raise ValueError(f"{op}: every table list must hold {n} levels, got "
                             f"{', '.join(str(len(t)) for t in tables)}")
        if window_left is not None and int(window_left) >= 0:
            raise NotImplementedError(f"{op}: argument window_left={window_left} is not supported by ferrinfer "
                                      "(undefined over a shared prefix)")
        qo_tokens = {int(_tensor.host_int32(qo, "qo_indptr")[-1]) for qo in qo_indptr_arr}
        if len(qo_tokens) != 1:
            raise ValueError(f"{op}: every level's qo_indptr must cover the same queries, got totals {sorted(qo_tokens)}")
        for i, (w, qo, ip, ix, la) in enumerate(zip(self._levels, *tables)):
            w.plan(qo, ip, ix, la, num_qo_heads, num_kv_heads, head_dim, page_size,
                   causal=bool(causal) and i == n - 1, **kwargs)

    begin_forward = plan

    def run(self, q: Any, paged_kv_cache: Any, **kwargs: Any) -> Any:
        """The attention of ``q [nnz_qo, num_qo_heads, head_dim]`` over all its levels."""
        out, lse = self._levels[0].run(q, paged_kv_cache, return_lse=True, **kwargs)
        for w in self._levels[1:]:
            o, s = w.run(q, paged_kv_cache, return_lse=True, **kwargs)
            merge_state_in_place(out, lse, o, s)
        return out

    forward = run


def _level_workspaces(workspace: Any, levels: int) -> list:
    """One workspace per level: slices of a CUDA workspace (each level's plan lives in its own),
    the caller's value itself otherwise (``None`` or a CPU array: the CPU path)."""
    if _cuda.device_of(workspace) is None:
        return [workspace] * levels
    flat = workspace.view(-1)
    step = flat.numel() // levels
    return [flat[i * step:(i + 1) * step] for i in range(levels)]
