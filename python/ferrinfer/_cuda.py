"""The CUDA path's Python half: which device a call runs on, the caller's current stream, and
the refusal of ops whose CUDA path does not exist yet.

A call runs on CUDA when its first tensor argument is a torch CUDA tensor; every other tensor
must then be on the same device (the native module refuses anything else with ``ValueError``).
Kernels are queued on ``torch.cuda.current_stream(device)`` — the stream torch itself would use
for the next op, so ordering with the caller's work (a side stream, CUDA-graph capture) is
torch's — and nothing here synchronises.
"""

from __future__ import annotations

from typing import Any, Optional

from . import _tensor


def device_of(x: Any) -> Optional[int]:
    """The CUDA device index of torch tensor ``x``, or ``None`` for anything on the host."""
    if not _tensor.is_torch(x) or x.device.type != "cuda":
        return None
    import torch

    return torch.cuda.current_device() if x.device.index is None else int(x.device.index)


def stream(device: int) -> int:
    """The raw ``cudaStream_t`` of torch's current stream on ``device``."""
    import torch

    return int(torch.cuda.current_stream(device).cuda_stream)


def not_yet(op: str, *tensors: Any) -> None:
    """``NotImplementedError`` when any of ``tensors`` is on CUDA (an op whose CUDA path is not
    written yet), so a CUDA tensor is never read as host memory."""
    for t in tensors:
        if device_of(t) is not None:
            raise NotImplementedError(
                f"{op}: CUDA tensors are not supported by this op yet (CUDA path: the batch decode and "
                "prefill wrappers, append_paged_kv_cache and the merges); pass CPU tensors"
            )


def workspace(buf: Any, name: str = "float_workspace_buffer") -> tuple:
    """``(address, bytes, device index, buf)`` of a contiguous torch CUDA workspace."""
    if not buf.is_contiguous():
        raise ValueError(f"{name}: must be contiguous")
    return (int(buf.data_ptr()), int(buf.numel()) * int(buf.element_size()), device_of(buf), buf)
