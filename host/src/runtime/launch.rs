//! The one typed launch path. Kernels take a by-value `#[repr(C)]` parameter block
//! (`ferrinfer_kernels::abi`; the Hopper prefill a second one, its tensor maps); nothing else
//! in the crate calls `cuLaunchKernel`.
use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use ferrinfer_kernels::abi::Abi;

use super::context::Gpu;
use crate::error::Result;

/// Grid and block dimensions plus dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchDims {
    /// Grid (x, y, z) in blocks.
    pub grid: (u32, u32, u32),
    /// Block (x, y, z) in threads.
    pub block: (u32, u32, u32),
    /// Dynamic shared memory in bytes.
    pub smem_bytes: u32,
}

impl LaunchDims {
    fn config(self) -> LaunchConfig {
        LaunchConfig {
            grid_dim: self.grid,
            block_dim: self.block,
            shared_mem_bytes: self.smem_bytes,
        }
    }
}

/// Host wrapper giving a kernel-crate parameter block cudarc's `DeviceRepr` (the orphan rule
/// forbids implementing it on the kernel crate's types directly).
#[repr(transparent)]
struct KernelArg<P: Abi>(P);

// SAFETY: `Abi` types are #[repr(C)] plain-old-data with identical host/device layout, passed
// by value as one `.param` blob; repr(transparent) keeps that layout.
unsafe impl<P: Abi> DeviceRepr for KernelArg<P> {}

impl Gpu {
    /// Launches kernel `name` with parameter block `params` on this GPU's stream.
    ///
    /// # Safety
    /// `name` must be a kernel whose single parameter is of type `P`, and every pointer and
    /// size in `params` must satisfy that kernel's documented launch contract (buffers large
    /// enough, alignment); callers validate on the host before calling.
    pub(crate) unsafe fn launch<P: Abi>(
        &self,
        name: &str,
        dims: LaunchDims,
        params: P,
    ) -> Result<()> {
        let f = self.function(name, dims.smem_bytes)?; // binds the context to this thread
        let arg = KernelArg(params);
        let cfg = dims.config();
        let mut b = self.stream().launch_builder(&f);
        b.arg(&arg);
        // SAFETY: per this function's contract.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// As [`Gpu::launch`] for the kernels that take a second by-value block (the Hopper
    /// prefill's TMA tensor maps, `abi::KvTensorMaps`).
    ///
    /// # Safety
    /// As [`Gpu::launch`], for a kernel whose parameters are `(P, Q)`.
    pub(crate) unsafe fn launch2<P: Abi, Q: Abi>(
        &self,
        name: &str,
        dims: LaunchDims,
        params: P,
        second: Q,
    ) -> Result<()> {
        let f = self.function(name, dims.smem_bytes)?;
        let (a, b2) = (KernelArg(params), KernelArg(second));
        let cfg = dims.config();
        let mut b = self.stream().launch_builder(&f);
        b.arg(&a);
        b.arg(&b2);
        // SAFETY: per this function's contract.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }
}
