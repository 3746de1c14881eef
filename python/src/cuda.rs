//! The CUDA path: torch CUDA tensors read and written in place (device pointers, strides,
//! device index), kernels launched on the caller's current stream (`torch.cuda.current_stream
//! (device).cuda_stream`, passed by the Python layer), in the device's primary context — the
//! one torch uses. Nothing here allocates device memory or synchronises: outputs are allocated
//! by torch, a decode plan lives in the caller's `float_workspace_buffer`, and the only copy is
//! the plan's async upload of its host-built tables on the caller's stream.
//!
//! Every tensor is checked (device, dtype, shape, contiguity, extent, aliasing) here and the
//! library checks its spans again before any launch; the same typed errors as the CPU path.
use cudarc::driver::DeviceRepr;
use ferrinfer::dtype::KvDtype;
use ferrinfer::kv::{BatchPages, KvLayout, KvPoolConfig};
use ferrinfer::{DType, DeviceSpan, Gpu, HeadConfig};
use half::{bf16, f16};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::errors::lib;
use crate::tensor::{Dt, RawTensor, Tensor};

/// The primary-context handle of `device`, launching on the caller's stream `stream`.
pub fn gpu_on(device: usize, stream: usize) -> PyResult<Gpu> {
    let gpu = lib(Gpu::primary(device))?;
    // SAFETY: `stream` is torch's current stream of `device` (or 0, the legacy default
    // stream), read by the Python layer just before this call; torch keeps its streams alive
    // for the process. An op keeps the handle until its next call replaces it, and launches
    // only during calls.
    Ok(unsafe { gpu.on_borrowed_stream(stream as cudarc::driver::sys::CUstream) })
}

/// Element types of the spans made here.
pub trait SpanElem: DeviceRepr {
    const DT: Dt;
}
impl SpanElem for f16 {
    const DT: Dt = Dt::F16;
}
impl SpanElem for bf16 {
    const DT: Dt = Dt::Bf16;
}
impl SpanElem for f32 {
    const DT: Dt = Dt::F32;
}
impl<F: ferrinfer::fp8::Fp8Format> SpanElem for ferrinfer::fp8::Fp8<F> {
    const DT: Dt = <ferrinfer::fp8::Fp8<F> as crate::tensor::Elem>::DT;
}

/// Tensor `raw` on CUDA device `device`.
pub fn cuda(raw: RawTensor, device: usize) -> PyResult<Tensor> {
    Tensor::from_cuda(raw, device)
}

/// The arrays of an attention call (q, k, v, out, optional lse), each on CUDA device `device`.
pub fn cuda_io(
    device: usize,
    [q, k, v, out]: [RawTensor; 4],
    lse: Option<RawTensor>,
) -> PyResult<(Tensor, Tensor, Tensor, Tensor, Option<Tensor>)> {
    let lse = lse.map(|l| cuda(l, device)).transpose()?;
    Ok((
        cuda(q, device)?,
        cuda(k, device)?,
        cuda(v, device)?,
        cuda(out, device)?,
        lse,
    ))
}

/// The tensor's addressed elements (from its first) as a span of `T` on `gpu`.
pub fn span<T: SpanElem>(gpu: &Gpu, t: &Tensor) -> PyResult<DeviceSpan<T>> {
    t.expect_dtype(&[T::DT])?;
    // SAFETY: the descriptor was checked to be on `gpu`'s device; the Python layer holds the
    // tensor for the call, and torch's caching allocator reuses its memory only in the order
    // of the stream the work was queued on (the caller's current stream, ours too).
    lib(unsafe { gpu.span::<T>(t.addr as u64, t.span()?) })
}

/// The caller's `float_workspace_buffer` as `(address, bytes, device index, tensor)`.
pub type Workspace = (usize, usize, i64, Py<PyAny>);

/// `Err(ValueError)` unless the workspace is on `device`, the op's device.
pub fn workspace_on(ws: &Workspace, device: usize) -> PyResult<()> {
    if usize::try_from(ws.2).ok() == Some(device) {
        return Ok(());
    }
    Err(PyValueError::new_err(format!(
        "float_workspace_buffer: on cuda:{}, the op runs on cuda:{device}",
        ws.2
    )))
}

/// The planned element type from `q_data_type`'s name (`op` names the wrapper in the error).
pub fn plan_dtype(op: &str, dtype: &str) -> PyResult<(Dt, DType)> {
    match dtype {
        "float16" => Ok((Dt::F16, DType::F16)),
        "bfloat16" => Ok((Dt::Bf16, DType::Bf16)),
        other => Err(PyTypeError::new_err(format!(
            "{op}: q_data_type {other} (float16 or bfloat16)"
        ))),
    }
}

/// The planned K/V element type from `kv_data_type`'s name: the queries' type `q` (also when
/// `None`), `float8_e4m3fn` or `float8_e5m2`.
pub fn kv_dtype(op: &str, q: Dt, kv_dtype: Option<&str>) -> PyResult<Dt> {
    match kv_dtype {
        None => Ok(q),
        Some("float8_e4m3fn") => Ok(Dt::F8E4m3),
        Some("float8_e5m2") => Ok(Dt::F8E5m2),
        Some(other) if other == q.name() => Ok(q),
        Some(other) => Err(PyTypeError::new_err(format!(
            "{op}: kv_data_type {other} (the queries' {}, float8_e4m3fn or float8_e5m2)",
            q.name()
        ))),
    }
}

/// The library's K/V type for an fp8 `kv` (`None`: 16-bit, the op's default).
pub fn lib_kv_dtype(kv: Dt) -> Option<KvDtype> {
    match kv {
        Dt::F8E4m3 => Some(KvDtype::E4m3),
        Dt::F8E5m2 => Some(KvDtype::E5m2),
        _ => None,
    }
}

/// The cache geometry a plan is checked against. FlashInfer's `plan` takes no cache, so the
/// pages are those the tables name (up to the largest id); `run` refuses a cache with fewer.
pub fn planned_cache(pages: &BatchPages, page_size: usize, heads: &HeadConfig) -> KvPoolConfig {
    let num_pages = pages
        .kv_indices
        .iter()
        .map(|&p| usize::try_from(p).map_or(usize::MAX, |p| p.saturating_add(1)))
        .max()
        .unwrap_or(1)
        .max(1);
    KvPoolConfig {
        num_pages,
        page_size,
        num_kv_heads: heads.num_kv_heads,
        head_dim: heads.head_dim,
        layout: KvLayout::Nhd,
    }
}
