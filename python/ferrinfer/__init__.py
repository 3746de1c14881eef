"""ferrinfer: FlashInfer-class attention kernels written in Rust, under FlashInfer's Python names.

``import ferrinfer as flashinfer`` works for the supported surface: single decode/prefill,
the batch decode (and its CUDA-graph form), paged and ragged prefill wrappers (with custom
masks), the multi-level cascade wrapper, ``append_paged_kv_cache``, the state merges,
``packbits`` and ``segment_packbits``.
Arrays are torch tensors, numpy arrays (``ml_dtypes.bfloat16`` for bf16) or other DLPack
tensors, read and written in place. CPU arrays run on ferrinfer's CPU backend; torch CUDA
tensors run ferrinfer's kernels on the caller's current stream (a wrapper runs on CUDA when its
``float_workspace_buffer`` is a CUDA tensor). Arguments ferrinfer does not implement (RoPE,
fp8 scales, ...) raise ``NotImplementedError`` naming the argument, never a different result.
"""

from ._native import __version__
from ._mask import packbits, segment_packbits
from .cascade import MultiLevelCascadeAttentionWrapper, merge_state, merge_state_in_place, merge_states
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
    "MultiLevelCascadeAttentionWrapper",
    "append_paged_kv_cache",
    "get_batch_indices_positions",
    "get_seq_lens",
    "merge_state",
    "merge_state_in_place",
    "merge_states",
    "packbits",
    "segment_packbits",
    "single_decode_with_kv_cache",
    "single_prefill_with_kv_cache",
    "single_prefill_with_kv_cache_return_lse",
]
