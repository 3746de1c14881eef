"""The CUDA path's Python half: which device a call runs on, the caller's current stream, and
the refusal of ops whose CUDA path does not exist yet.

Every tensor of a CUDA call must be on the same device (the native module refuses anything else with ``ValueError``).
Kernels are queued on ``torch.cuda.current_stream(device)`` — the stream torch itself would use
for the next op, so ordering with the caller's work (a side stream, CUDA-graph capture) is
torch's — and nothing here synchronises. A wrapper runs on CUDA when its
``float_workspace_buffer`` is a CUDA tensor (FlashInfer's rule); functions without a workspace
(single decode/prefill, the append, the merges) follow their first tensor.
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
    """``NotImplementedError`` when any of ``tensors`` is on CUDA in a wrapper built for the
    CPU (its ``float_workspace_buffer`` was not a CUDA tensor), so a CUDA tensor is never read
    as host memory."""
    for t in tensors:
        if device_of(t) is not None:
            raise NotImplementedError(
                f"{op}: CUDA tensors in a wrapper built for the CPU; give the wrapper a CUDA "
                "float_workspace_buffer (as FlashInfer's) to run it on that GPU"
            )


def workspace(buf: Any, name: str = "float_workspace_buffer") -> tuple:
    """``(address, bytes, device index, buf)`` of a contiguous torch CUDA workspace."""
    if not buf.is_contiguous():
        raise ValueError(f"{name}: must be contiguous")
    return (int(buf.data_ptr()), int(buf.numel()) * int(buf.element_size()), device_of(buf), buf)
