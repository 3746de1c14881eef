"""Type stubs of the native module (python/src). Each tensor argument is a descriptor made by
``ferrinfer._tensor.view``; outputs are written in place. Options: ``sm_scale`` None = 1/sqrt(D),
``soft_cap`` None = off, ``window_left`` None = no window."""

from typing import Any, Optional, Tuple

Descriptor = Tuple[str, int, Tuple[int, ...], Tuple[int, ...], str, str, int, bool, Any]
# A custom mask as ``ferrinfer._mask`` packs it: (packed bytes, per-request byte offsets).
Mask = Tuple[Any, Any]

__version__: str

def single_decode(q: Descriptor, k: Descriptor, v: Descriptor, kv_layout: str, out: Descriptor,
                  lse: Optional[Descriptor], sm_scale: Optional[float], soft_cap: Optional[float],
                  window_left: Optional[int], rope: Optional[Tuple[float, float]] = None,
                  k_scale: Optional[float] = None, v_scale: Optional[float] = None) -> None: ...
def single_prefill(q: Descriptor, k: Descriptor, v: Descriptor, kv_layout: str, out: Descriptor,
                   lse: Optional[Descriptor], causal: bool, sm_scale: Optional[float],
                   soft_cap: Optional[float], window_left: Optional[int], mask: Optional[Mask] = None) -> None: ...
def batch_prefill_ragged(q: Descriptor, k: Descriptor, v: Descriptor, qo_indptr: Descriptor,
                         kv_indptr: Descriptor, kv_layout: str, out: Descriptor, lse: Optional[Descriptor],
                         causal: bool, sm_scale: Optional[float], soft_cap: Optional[float],
                         window_left: Optional[int], mask: Optional[Mask] = None,
                         rope: Optional[Tuple[float, float]] = None, k_scale: Optional[float] = None,
                         v_scale: Optional[float] = None) -> None: ...
def batch_decode_paged(q: Descriptor, k_cache: Descriptor, v_cache: Descriptor, kv_layout: str,
                       kv_indptr: Descriptor, kv_indices: Descriptor, kv_last_page_len: Descriptor,
                       out: Descriptor, lse: Optional[Descriptor], sm_scale: Optional[float],
                       soft_cap: Optional[float], window_left: Optional[int],
                       rope: Optional[Tuple[float, float]] = None, k_scale: Optional[float] = None,
                       v_scale: Optional[float] = None) -> None: ...
def batch_prefill_paged(q: Descriptor, k_cache: Descriptor, v_cache: Descriptor, kv_layout: str,
                        qo_indptr: Descriptor, kv_indptr: Descriptor, kv_indices: Descriptor,
                        kv_last_page_len: Descriptor, out: Descriptor, lse: Optional[Descriptor],
                        causal: bool, sm_scale: Optional[float], soft_cap: Optional[float],
                        window_left: Optional[int], mask: Optional[Mask] = None,
                        rope: Optional[Tuple[float, float]] = None, k_scale: Optional[float] = None,
                        v_scale: Optional[float] = None) -> None: ...
def append_paged_kv_cache(append_key: Descriptor, append_value: Descriptor, batch_indices: Descriptor,
                          positions: Descriptor, k_cache: Descriptor, v_cache: Descriptor, kv_layout: str,
                          kv_indices: Descriptor, kv_indptr: Descriptor,
                          kv_last_page_len: Descriptor) -> None: ...
def merge_state(v_a: Descriptor, s_a: Descriptor, v_b: Descriptor, s_b: Descriptor, v_out: Descriptor,
                s_out: Descriptor) -> None: ...
def merge_state_in_place(v: Descriptor, s: Descriptor, v_other: Descriptor, s_other: Descriptor) -> None: ...
def merge_states(v: Descriptor, s: Descriptor, v_out: Descriptor, s_out: Descriptor) -> None: ...

# CUDA path: `stream` is a raw cudaStream_t (torch.cuda.current_stream(device).cuda_stream).
Workspace = Tuple[int, int, int, Any]  # (address, bytes, device index, tensor)

class CudaBatchDecode:
    def __init__(self, device: int, num_qo_heads: int, num_kv_heads: int, head_dim: int, dtype: str,
                 sm_scale: Optional[float], soft_cap: Optional[float], window_left: Optional[int],
                 graph: Optional[Tuple[int, int]] = None, rope: Optional[Tuple[float, float]] = None,
                 kv_dtype: Optional[str] = None) -> None: ...
    def plan(self, stream: int, workspace: Workspace, indptr: Descriptor, indices: Descriptor,
             last_page_len: Descriptor, page_size: int) -> None: ...
    def workspace_bytes(self, max_batch: int, max_pages: int) -> int: ...
    def run(self, stream: int, q: Descriptor, k: Descriptor, v: Descriptor, kv_layout: str, out: Descriptor,
            lse: Optional[Descriptor] = None, k_scale: Optional[float] = None,
            v_scale: Optional[float] = None) -> None: ...

def merge_state_cuda(stream: int, device: int, v_a: Descriptor, s_a: Descriptor, v_b: Descriptor,
                     s_b: Descriptor, v_out: Descriptor, s_out: Optional[Descriptor] = None,
                     in_place: bool = False) -> None: ...
def merge_states_cuda(stream: int, device: int, v: Descriptor, s: Descriptor, v_out: Descriptor,
                      s_out: Optional[Descriptor] = None) -> None: ...
def append_paged_kv_cache_cuda(stream: int, device: int, append_key: Descriptor, append_value: Descriptor,
                               host: list, dev: list, k_cache: Descriptor, v_cache: Descriptor,
                               kv_layout: str) -> None: ...

class CudaBatchPrefill:
    def __init__(self, device: int, num_qo_heads: int, num_kv_heads: int, head_dim: int, dtype: str, causal: bool,
                 sm_scale: Optional[float], soft_cap: Optional[float], window_left: Optional[int],
                 rope: Optional[Tuple[float, float]] = None, kv_dtype: Optional[str] = None,
                 graph: Optional[Tuple[int, int, int, int]] = None) -> None: ...
    def plan_paged(self, stream: int, workspace: Workspace, qo_indptr: Descriptor, indptr: Descriptor,
                   indices: Descriptor, last_page_len: Descriptor, page_size: int,
                   mask: Optional[Mask] = None) -> None: ...
    def plan_ragged(self, stream: int, workspace: Workspace, qo_indptr: Descriptor, kv_indptr: Descriptor,
                    mask: Optional[Mask] = None) -> None: ...
    def run_paged(self, stream: int, q: Descriptor, k: Descriptor, v: Descriptor, kv_layout: str, out: Descriptor,
                  lse: Optional[Descriptor] = None, k_scale: Optional[float] = None,
                  v_scale: Optional[float] = None) -> None: ...
    def run_ragged(self, stream: int, q: Descriptor, k: Descriptor, v: Descriptor, out: Descriptor,
                   lse: Optional[Descriptor] = None, k_scale: Optional[float] = None,
                   v_scale: Optional[float] = None) -> None: ...
