"""Tensor intake: what the native module needs to know about a caller's array, read zero-copy.

An array becomes a descriptor tuple ``(name, address, shape, strides, dtype, device,
device_index, writable, owner)`` with strides in elements; ``owner`` is the array itself, so the
descriptor keeps a temporary (a converted index array, a DLPack import) alive for the call. torch tensors are read through
``data_ptr()``/``stride()`` (CPU and CUDA), numpy arrays (``ml_dtypes.bfloat16`` included)
through ``__array_interface__``, and any other CPU DLPack producer through
``numpy.from_dlpack``. Nothing is copied; every rule about what an op accepts (dtype, rank,
contiguity, device, aliasing) is checked by the native module, which names the argument.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np

Descriptor = Tuple[str, int, Tuple[int, ...], Tuple[int, ...], str, str, int, bool, Any]


def is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _torch_view(x: Any, name: str) -> Descriptor:
    dtype = str(x.dtype).split(".")[-1]
    dev = x.device
    index = -1 if dev.index is None else int(dev.index)
    return (name, int(x.data_ptr()), tuple(x.shape), tuple(x.stride()), dtype, dev.type, index, True, x)


def _numpy_view(a: np.ndarray, name: str) -> Descriptor:
    size = a.dtype.itemsize
    if any(s % size for s in a.strides):
        raise ValueError(f"{name}: strides {a.strides} are not a multiple of the element size {size}")
    ptr = a.__array_interface__["data"][0]
    strides = tuple(s // size for s in a.strides)
    return (name, int(ptr), tuple(a.shape), strides, a.dtype.name, "cpu", -1, bool(a.flags.writeable), a)


def view(x: Any, name: str) -> Descriptor:
    """The descriptor of array ``x`` (argument ``name`` in error messages)."""
    if is_torch(x):
        return _torch_view(x, name)
    if isinstance(x, np.ndarray):
        return _numpy_view(x, name)
    if hasattr(x, "__dlpack__"):
        return _numpy_view(np.from_dlpack(x), name)
    raise TypeError(f"{name}: expected a torch.Tensor, a numpy array or a DLPack tensor, got {type(x).__name__}")


def opt_view(x: Any, name: str) -> Optional[Descriptor]:
    return None if x is None else view(x, name)


def dtype_name(x: Any) -> str:
    """``'float16'``, ``'bfloat16'``, ... for a torch or numpy dtype, an array, or a string."""
    if isinstance(x, str):
        return x.split(".")[-1]
    if hasattr(x, "dtype"):
        x = x.dtype
    if type(x).__module__.split(".")[0] == "torch":
        return str(x).split(".")[-1]
    return np.dtype(x).name


def empty(like: Any, shape: Sequence[int], dtype: Optional[str] = None) -> Any:
    """A new array on ``like``'s device and of ``like``'s kind (torch or numpy): ``dtype``
    (a name) or ``like``'s dtype."""
    shape = tuple(int(s) for s in shape)
    if is_torch(like):
        import torch

        dt = like.dtype if dtype is None else getattr(torch, dtype)
        return torch.empty(shape, dtype=dt, device=like.device)
    arr = like if isinstance(like, np.ndarray) else np.from_dlpack(like)
    return np.empty(shape, dtype=arr.dtype if dtype is None else np.dtype(dtype))


def host_int32(x: Any, name: str) -> np.ndarray:
    """A 1-d host copy of an index array (list, numpy, torch on any device) as int32: plans are
    made from host arrays, and the copy keeps the plan independent of later writes."""
    if is_torch(x):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-d array, got shape {a.shape}")
    if a.size and a.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected an integer array, got dtype {a.dtype}")
    if a.size and (a.min() < -(2**31) or a.max() >= 2**31):
        raise ValueError(f"{name}: values do not fit int32")
    return np.ascontiguousarray(a, dtype=np.int32)
