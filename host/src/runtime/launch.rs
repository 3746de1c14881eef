//! The one typed launch path. Kernels take a by-value `#[repr(C)]` parameter block
//! (`ferrinfer_kernels::abi`; the Hopper prefill a second one, its tensor maps); nothing else
//! in the crate calls `cuLaunchKernel`. Kernels that begin with `griddepcontrol.wait` are
//! launched as programmatic dependents where the handle allows ([`Gpu::set_dependent_launch`]).
use std::ffi::c_void;

use cudarc::driver::sys::{self, CUlaunchAttributeID};
use cudarc::driver::{CudaFunction, DeviceRepr, LaunchConfig, PushKernelArg};
use ferrinfer_kernels::abi::Abi;
use ferrinfer_kernels::kernel_key::{KernelKey, KernelName};

use super::context::Gpu;
use crate::error::{Error, Result};

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

/// Dynamic shared memory every kernel may use without raising its limit (bytes).
const DEFAULT_SMEM: u32 = 48 * 1024;

/// A kernel function resolved once, when the op that launches it is built
/// ([`Gpu::kernel`]), with its dynamic shared-memory limit already raised: launches take it
/// directly, without a lookup.
#[derive(Clone)]
pub(crate) struct Kernel {
    f: CudaFunction,
    key: KernelKey,
    name: KernelName,
    smem_bytes: u32,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kernel({}, {} B smem)", self.key, self.smem_bytes)
    }
}

impl Kernel {
    /// The kernel's symbol.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The function, for occupancy queries.
    pub(crate) fn function(&self) -> &CudaFunction {
        &self.f
    }

    /// `Err` when a launch asks for more dynamic shared memory than the kernel allows: the
    /// 48 KiB every kernel has, or more if it was resolved for more.
    fn check_smem(&self, dims: &LaunchDims) -> Result<()> {
        if dims.smem_bytes > self.smem_bytes.max(DEFAULT_SMEM) {
            return Err(Error::unsupported(
                "launch",
                "shared memory",
                format!(
                    "{} resolved for {} bytes, launched with {}",
                    self.key, self.smem_bytes, dims.smem_bytes
                ),
            ));
        }
        Ok(())
    }
}

impl Gpu {
    /// Resolves kernel `key` from the loaded module (through the module's cache), raising its
    /// dynamic shared-memory limit to `smem_bytes`.
    pub(crate) fn kernel(&self, key: KernelKey, smem_bytes: u32) -> Result<Kernel> {
        let name = key.name();
        let f = self.function(&name, smem_bytes)?;
        Ok(Kernel {
            f,
            key,
            name,
            smem_bytes,
        })
    }

    /// Launches resolved kernel `k` with parameter block `params` on this GPU's stream: as a
    /// programmatic dependent when the kernel waits for its dependency in-kernel and the
    /// handle has that on ([`Gpu::set_dependent_launch`]), else plainly.
    ///
    /// # Safety
    /// As [`Gpu::launch`], for `k`'s kernel.
    pub(crate) unsafe fn launch_kernel<P: Abi>(
        &self,
        k: &Kernel,
        dims: LaunchDims,
        params: P,
    ) -> Result<()> {
        k.check_smem(&dims)?;
        if k.key.waits_for_prior_grids() && self.dependent_launch() {
            // SAFETY: forwarded contract; the key says the kernel waits in-kernel, and the
            // setting is on only where the image has the instruction.
            return unsafe { self.launch_dependent(k, dims, params) };
        }
        let arg = KernelArg(params);
        let mut b = self.stream().launch_builder(&k.f);
        b.arg(&arg);
        // SAFETY: per this function's contract (cudarc binds the context for the launch).
        unsafe { b.launch(dims.config()) }?;
        Ok(())
    }

    /// [`Gpu::launch_kernel`] as a programmatic dependent launch (Hopper's PDL): the kernel
    /// may start before the previous kernel on the stream has finished, once every CTA of that
    /// kernel has executed `griddepcontrol.launch_dependents` (or exited). In a stream capture
    /// the edge becomes a programmatic graph edge.
    ///
    /// # Safety
    /// As [`Gpu::launch_kernel`]; `k`'s kernel runs `griddepcontrol.wait` in every thread
    /// before it reads anything earlier kernels write and before its first store
    /// (`ferrinfer_kernels::arch::grid_dep`), and this GPU's image has the instruction.
    unsafe fn launch_dependent<P: Abi>(
        &self,
        k: &Kernel,
        dims: LaunchDims,
        params: P,
    ) -> Result<()> {
        self.bind()?;
        let mut arg = KernelArg(params);
        let mut args = [(&mut arg as *mut KernelArg<P>).cast::<c_void>()];
        // SAFETY: an all-zero attribute is valid plain data; id and value are set below.
        let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let cfg = sys::CUlaunchConfig {
            gridDimX: dims.grid.0,
            gridDimY: dims.grid.1,
            gridDimZ: dims.grid.2,
            blockDimX: dims.block.0,
            blockDimY: dims.block.1,
            blockDimZ: dims.block.2,
            sharedMemBytes: dims.smem_bytes,
            hStream: self.cu_stream(),
            attrs: &mut attr,
            numAttrs: 1,
        };
        // SAFETY: the context is bound; `args` points at the one by-value parameter block,
        // alive for the call (the driver copies it); the rest per this function's contract.
        unsafe {
            sys::cuLaunchKernelEx(
                &cfg,
                k.f.cu_function(),
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()?;
        Ok(())
    }

    /// As [`Gpu::launch_kernel`] for the kernels that take a second by-value block (the Hopper
    /// prefill's TMA tensor maps, `abi::KvTensorMaps`).
    ///
    /// # Safety
    /// As [`Gpu::launch`], for `k`'s kernel, whose parameters are `(P, Q)`.
    pub(crate) unsafe fn launch_kernel2<P: Abi, Q: Abi>(
        &self,
        k: &Kernel,
        dims: LaunchDims,
        params: P,
        second: Q,
    ) -> Result<()> {
        k.check_smem(&dims)?;
        let (a, b2) = (KernelArg(params), KernelArg(second));
        let mut b = self.stream().launch_builder(&k.f);
        b.arg(&a);
        b.arg(&b2);
        // SAFETY: per this function's contract.
        unsafe { b.launch(dims.config()) }?;
        Ok(())
    }

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
}
