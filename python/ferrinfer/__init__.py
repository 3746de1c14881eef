"""ferrinfer: FlashInfer-class attention kernels written in Rust, under FlashInfer's Python names.

``import ferrinfer as flashinfer`` works for the supported surface: single decode/prefill,
the batch decode (and its CUDA-graph form), paged and ragged prefill wrappers,
``append_paged_kv_cache`` and the state merges. Arrays are torch tensors, numpy arrays
(``ml_dtypes.bfloat16`` for bf16) or other DLPack tensors, read and written in place.
This build runs on CPU tensors (ferrinfer's CPU backend); CUDA tensors raise
``NotImplementedError``. Arguments ferrinfer does not implement (RoPE, custom masks, fp8
scales, ...) raise ``NotImplementedError`` naming the argument, never a different result.
"""

from ._native import __version__
from .cascade import merge_state, merge_state_in_place, merge_states
from .decode import (
    BatchDecodeWithPagedKVCacheWrapper,
    CUDAGraphBatchDecodeWithPagedKVCacheWrapper,
    single_decode_with_kv_cache,
)
from .page import append_paged_kv_cache, get_batch_indices_positions, get_seq_lens
from .prefill import (
    BatchPrefillWithPagedKVCacheWrapper,
    BatchPrefillWithRaggedKVCacheWrapper,
    single_prefill_with_kv_cache,
    single_prefill_with_kv_cache_return_lse,
)

__all__ = [
    "__version__",
    "BatchDecodeWithPagedKVCacheWrapper",
    "BatchPrefillWithPagedKVCacheWrapper",
    "BatchPrefillWithRaggedKVCacheWrapper",
    "CUDAGraphBatchDecodeWithPagedKVCacheWrapper",
    "append_paged_kv_cache",
    "get_batch_indices_positions",
    "get_seq_lens",
    "merge_state",
    "merge_state_in_place",
    "merge_states",
    "single_decode_with_kv_cache",
    "single_prefill_with_kv_cache",
    "single_prefill_with_kv_cache_return_lse",
]
