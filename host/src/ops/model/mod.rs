//! The GPU kernels a Llama-architecture model runs beside attention, as one handle:
//! [`ModelKernels`] (RMSNorm and residual-add + RMSNorm, the fused QKV split + RoPE epilogue,
//! SiLU-and-mul, 16-bit → f32, embedding gather, greedy argmax, the few-row products of decode
//! steps). RMSNorm, SiLU-and-mul and the
//! gather write f32 or a 16-bit type ([`ModelOut`]): the input of a 16-bit matrix product.
//!
//! Every op validates its sizes on the host and returns a typed [`Error`] before anything is
//! launched; buffers may be larger than an op needs (engines reuse max-size buffers), only
//! `len() >= needed` is required. Launches are asynchronous, in order on the [`Gpu`]'s stream.
//! Values that live on the device (token ids, positions) cannot be checked without a
//! synchronisation, so the kernels are safe for any value instead: see [`ModelKernels::gather_rows`]
//! and [`ModelKernels::qkv_rope`].
//!
//! On Hopper the kernels can launch as programmatic dependents ([`Gpu::set_dependent_launch`]): each
//! waits in-kernel for the kernel before it (the products first load their weights), so a
//! step's chain of small kernels overlaps each launch with the previous kernel's tail.
//!
//! CPU twins, which define the semantics and are the tests' references:
//! [`crate::cpu::norm`], [`crate::cpu::rope`], [`crate::cpu::activation`],
//! [`crate::cpu::sampling::argmax`]. Device side: `kernels-gpu/src/model/`.
mod elementwise;
mod gemv;
mod norm;
mod out;
mod rope;

pub use gemv::GROUP_ROWS as GEMV_GROUP_ROWS;
pub use out::ModelOut;

use ferrinfer_kernels::abi::Abi;
use ferrinfer_kernels::kernel_key::{KernelKey, ModelKernel};

use crate::error::{Error, Result};
use crate::runtime::{DeviceBuffer, Gpu, Kernel, LaunchDims};

/// Largest grid x dimension.
const MAX_GRID_X: usize = i32::MAX as usize;

/// The model kernels on one GPU: construction resolves every kernel (a missing one is
/// [`Error::KernelMissing`] here, not at the first launch); the ops launch on the GPU's stream.
#[derive(Clone, Debug)]
pub struct ModelKernels {
    gpu: Gpu,
    /// Every model kernel, in `ModelKernel::ALL` order.
    kernels: Vec<Kernel>,
}

impl ModelKernels {
    /// Resolves the kernels on `gpu`.
    pub fn new(gpu: &Gpu) -> Result<Self> {
        let kernels = ModelKernel::ALL
            .iter()
            .map(|&m| gpu.kernel(KernelKey::Model(m), 0))
            .collect::<Result<_>>()?;
        Ok(Self {
            gpu: gpu.clone(),
            kernels,
        })
    }

    /// The GPU the ops launch on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Checks that `b` belongs to this GPU and holds at least `want` elements.
    fn buffer<T: cudarc::driver::DeviceRepr>(
        &self,
        op: &'static str,
        what: &'static str,
        b: &DeviceBuffer<T>,
        want: usize,
    ) -> Result<()> {
        self.gpu.check_buffer(op, b)?;
        if b.len() < want {
            return Err(Error::shape(op, what, format!(">= {want}"), b.len()));
        }
        Ok(())
    }

    /// Launches `kernel` with `p` (no-op for an empty grid).
    ///
    /// # Safety
    /// As [`Gpu::launch`]: `p` satisfies `kernel`'s launch contract for `dims`.
    unsafe fn launch<P: Abi>(&self, kernel: ModelKernel, dims: LaunchDims, p: P) -> Result<()> {
        if dims.grid.0 == 0 {
            return Ok(());
        }
        let k = self
            .kernels
            .get(kernel.index())
            .ok_or_else(|| Error::KernelMissing(kernel.name().to_string()))?;
        // SAFETY: forwarded contract.
        unsafe { self.gpu.launch_kernel(k, dims, p) }
    }
}

/// `a · b`, or [`Error::Overflow`].
fn mul(op: &'static str, what: &'static str, a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b).ok_or(Error::Overflow { op, what })
}

/// `v` as u32, or [`Error::Overflow`] (`limit` lowers the bound).
fn small(op: &'static str, what: &'static str, v: usize, limit: usize) -> Result<u32> {
    if v > limit.min(u32::MAX as usize) {
        return Err(Error::Overflow { op, what });
    }
    Ok(v as u32)
}

/// `v ≥ 1`, else [`Error::InvalidArgument`].
fn positive(op: &'static str, what: &'static str, v: usize) -> Result<()> {
    if v == 0 {
        return Err(Error::invalid(op, what, "0 (must be ≥ 1)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{entry_names, Arch};

    #[test]
    fn every_model_kernel_is_embedded() {
        for arch in Arch::ALL {
            let names = entry_names(arch.ptx());
            for k in ModelKernel::ALL {
                assert!(names.contains(&k.name()), "{}: {k:?} missing", arch.name());
            }
        }
    }

    #[test]
    fn size_helpers() {
        assert!(matches!(
            mul("op", "x", usize::MAX, 2),
            Err(Error::Overflow { .. })
        ));
        assert_eq!(small("op", "x", 7, MAX_GRID_X).unwrap(), 7);
        assert!(small("op", "x", MAX_GRID_X + 1, MAX_GRID_X).is_err());
        assert!(small("op", "x", u32::MAX as usize + 1, usize::MAX).is_err());
        assert!(positive("op", "x", 0).is_err());
    }
}
