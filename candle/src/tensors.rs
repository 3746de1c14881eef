//! Tensor plumbing shared by the ops: which candle dtypes map to ferrinfer's element types, the
//! checks every public function runs on its tensors before any work, and the access to a CPU
//! storage's contiguous elements inside a custom op.
use candle_core::{CpuStorage, DType, Layout, Result, Tensor, WithDType};
use ferrinfer::Float16;
use half::{bf16, f16};

use crate::error::invalid;

/// An element type both libraries know: ferrinfer computes on f16 and bf16 storage (f32
/// accumulation), candle stores them as `CpuStorage::{F16, BF16}` (and `CudaSlice`s).
#[cfg(not(feature = "cuda"))]
pub(crate) trait Half: Float16 + WithDType {}
/// An element type both libraries know (see the CPU-only build's definition), which candle's
/// CUDA storage also holds.
#[cfg(feature = "cuda")]
pub(crate) trait Half: Float16 + WithDType + candle_core::cuda_backend::CudaDType {}
impl Half for f16 {}
impl Half for bf16 {}

/// The dtype of `t`, refused unless ferrinfer has kernels for it.
pub(crate) fn attention_dtype(op: &str, what: &str, t: &Tensor) -> Result<DType> {
    match t.dtype() {
        d @ (DType::F16 | DType::BF16) => Ok(d),
        d => Err(invalid(
            op,
            format!(
                "{what} has dtype {d:?}: ferrinfer attention takes f16 or bf16 \
                 (convert with `to_dtype`)"
            ),
        )),
    }
}

/// `Ok` when this build runs ferrinfer on `device` (the CPU always, CUDA with the `cuda`
/// feature); otherwise an error naming `what` (a tensor or the cache) and the device.
pub(crate) fn check_device(op: &str, what: &str, device: &candle_core::Device) -> Result<()> {
    if device.is_cpu() || (cfg!(feature = "cuda") && device.is_cuda()) {
        return Ok(());
    }
    Err(invalid(
        op,
        format!(
            "{what} is on {:?}: this build of ferrinfer-candle runs on the CPU{}",
            device.location(),
            if cfg!(feature = "cuda") {
                " and CUDA"
            } else {
                " only (build with the `cuda` feature for CUDA tensors)"
            }
        ),
    ))
}

/// Checks that `q` has an attention dtype and lives on a device this build runs on
/// ([`check_device`]), and that every tensor of `rest` has `q`'s dtype and device.
pub(crate) fn same_dtype_and_device(
    op: &str,
    (qname, q): (&str, &Tensor),
    rest: &[(&str, &Tensor)],
) -> Result<DType> {
    let dtype = attention_dtype(op, qname, q)?;
    check_device(op, qname, q.device())?;
    for &(name, t) in rest {
        if t.dtype() != dtype {
            return Err(invalid(
                op,
                format!("{name} has dtype {:?}, {qname} has {dtype:?}", t.dtype()),
            ));
        }
        if !t.device().same_device(q.device()) {
            return Err(invalid(op, format!("{name} is not on {qname}'s device")));
        }
    }
    Ok(dtype)
}

/// The dims of `t`, refused unless it has rank `N`; `names` spells the expected shape.
pub(crate) fn dims<const N: usize>(
    op: &str,
    what: &str,
    names: &str,
    t: &Tensor,
) -> Result<[usize; N]> {
    <[usize; N]>::try_from(t.dims()).map_err(|_| {
        invalid(
            op,
            format!(
                "{what} must be {names} (rank {N}), got shape {:?}",
                t.dims()
            ),
        )
    })
}

/// The elements of a contiguous CPU storage as `T` (the public functions make their inputs
/// contiguous before applying an op, so a strided layout here is a bug, reported not panicked).
pub(crate) fn elems<'a, T: WithDType>(
    op: &str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> Result<&'a [T]> {
    let all = storage.as_slice::<T>()?;
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| invalid(op, "input is not contiguous"))?;
    all.get(start..end)
        .ok_or_else(|| invalid(op, "layout outside its storage"))
}

/// Converts lengths (tokens per request) to the i32 prefix sums ferrinfer's tables use.
pub(crate) fn indptr(
    op: &str,
    what: &str,
    lens: impl IntoIterator<Item = usize>,
) -> Result<Vec<i32>> {
    let mut out = vec![0i32];
    let mut total = 0usize;
    for n in lens {
        total = total
            .checked_add(n)
            .ok_or_else(|| invalid(op, format!("{what}: total length overflows")))?;
        let t = i32::try_from(total)
            .map_err(|_| invalid(op, format!("{what}: total length {total} exceeds i32")))?;
        out.push(t);
    }
    Ok(out)
}
