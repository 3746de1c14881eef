//! Device discovery, context, stream and the loaded kernel module.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cudarc::driver::sys::{self, CUdevice_attribute_enum as Attr};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, DeviceRepr, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;

use super::buffer::DeviceBuffer;
use crate::error::{Error, Result};
use crate::kernels::Arch;

/// Which image the module was loaded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleImage {
    /// A cubin assembled at build time for the device's exact architecture (no JIT).
    Cubin,
    /// PTX, compiled by the driver's JIT at load time.
    Ptx,
}

/// Facts about the device, read once at start-up.
#[derive(Clone, Debug)]
pub struct GpuInfo {
    /// Device ordinal.
    pub ordinal: usize,
    /// Marketing name.
    pub name: String,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// Streaming multiprocessors.
    pub sm_count: u32,
    /// Total device memory in bytes.
    pub total_memory: usize,
    /// Opt-in maximum dynamic shared memory per block, bytes.
    pub max_smem_per_block: u32,
    /// Driver API version (e.g. 13000 for CUDA 13.0).
    pub driver_version: i32,
    /// Kernel architecture chosen for this device.
    pub arch: Arch,
    /// Image the module was loaded from.
    pub image: ModuleImage,
    /// Wall time of the module load (JIT included for PTX).
    pub module_load: Duration,
    /// Why the cubin was not used, when it was not.
    pub cubin_fallback: Option<String>,
}

/// Result of looking for a GPU: found, or the reason there is none.
pub enum Discovery {
    /// A usable GPU with ferrinfer's kernels loaded.
    Found(Gpu),
    /// No usable GPU; the string says why (no driver library, no device, ...).
    NotFound(String),
}

/// What every handle of one context shares: the context, the loaded module, the device facts
/// and the resolved functions. Handles differ only in the stream they launch on.
struct Inner {
    ctx: Arc<CudaContext>,
    module: Arc<CudaModule>,
    info: GpuInfo,
    functions: Mutex<HashMap<String, (CudaFunction, u32)>>,
}

/// A CUDA device with ferrinfer's kernel module loaded and a stream to launch on. Cheap to
/// clone (shared handle); every op launches on this stream in order. Handles made by
/// [`Gpu::on_borrowed_stream`] share the context and the module and differ only in the stream:
/// buffers, plans and ops of one are valid with the others.
#[derive(Clone)]
pub struct Gpu {
    inner: Arc<Inner>,
    stream: Arc<CudaStream>,
    /// Whether kernels that wait in-kernel launch as programmatic dependents
    /// ([`Gpu::set_dependent_launch`]); shared by this handle's clones, not by handles of other
    /// streams.
    pdl: Arc<AtomicBool>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("info", &self.inner.info)
            .finish()
    }
}

/// Whether the CUDA driver library can be opened; probed before any driver call, since cudarc
/// loads libcuda on first use and panics when it is missing. cudarc's own probe
/// (`sys::is_culib_present`) exists only in its `dynamic-loading` mode, and a program that also
/// holds candle's CUDA backend builds cudarc in `dynamic-linking` mode (libcuda linked at load
/// time, so this is then always true; `docs/decisions.md` §6). The names are a subset of those
/// cudarc tries (`get_lib_name_candidates("cuda")` and `("nvcuda")`), so when one opens here,
/// cudarc's own load succeeds too.
fn driver_library_present() -> bool {
    use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
    [
        format!("{DLL_PREFIX}cuda{DLL_SUFFIX}"),
        format!("{DLL_PREFIX}cuda{DLL_SUFFIX}.1"),
        format!("{DLL_PREFIX}nvcuda{DLL_SUFFIX}"),
    ]
    .iter()
    // SAFETY: only probes whether libcuda can be dlopen'ed (its initialisers run; no driver
    // call); the handle is closed at once, cudarc keeps its own.
    .any(|name| unsafe { libloading::Library::new(name) }.is_ok())
}

fn no_gpu_code(e: &cudarc::driver::DriverError) -> bool {
    matches!(
        e.0,
        sys::cudaError_enum::CUDA_ERROR_NO_DEVICE
            | sys::cudaError_enum::CUDA_ERROR_NOT_INITIALIZED
            | sys::cudaError_enum::CUDA_ERROR_INVALID_DEVICE
            | sys::cudaError_enum::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH
            | sys::cudaError_enum::CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE
            | sys::cudaError_enum::CUDA_ERROR_SYSTEM_NOT_READY
            | sys::cudaError_enum::CUDA_ERROR_DEVICE_UNAVAILABLE
    )
}

impl Gpu {
    /// Looks for GPU `ordinal` and loads the kernels on it. "No driver library", "no driver"
    /// and "no device" are [`Discovery::NotFound`], not errors; a device that exists but
    /// cannot be used (too old, module load failure) is an error.
    pub fn discover(ordinal: usize) -> Result<Discovery> {
        if !driver_library_present() {
            return Ok(Discovery::NotFound(
                "no CUDA driver library (libcuda.so) on this machine".into(),
            ));
        }
        let ctx = match CudaContext::new(ordinal) {
            Ok(c) => c,
            Err(e) if no_gpu_code(&e) => {
                return Ok(Discovery::NotFound(format!(
                    "CUDA driver reports no usable device: {e}"
                )))
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Discovery::Found(Self::with_context(ctx)?))
    }

    /// Like [`Gpu::discover`], but "no GPU" is [`Error::NoGpu`].
    pub fn new(ordinal: usize) -> Result<Gpu> {
        match Self::discover(ordinal)? {
            Discovery::Found(g) => Ok(g),
            Discovery::NotFound(why) => Err(Error::NoGpu(why)),
        }
    }

    /// Loads the kernels into an existing context (e.g. one shared with candle).
    pub fn with_context(ctx: Arc<CudaContext>) -> Result<Gpu> {
        let (major, minor) = ctx.compute_capability()?;
        let arch = Arch::for_compute_capability(major, minor)
            .ok_or(Error::UnsupportedArch { major, minor })?;
        let name = ctx.name()?;
        let sm_count = ctx.attribute(Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32;
        let max_smem_per_block =
            ctx.attribute(Attr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)? as u32;
        let total_memory = ctx.total_mem()?;
        let mut driver_version = 0i32;
        // SAFETY: writes one int; the library is loaded (context exists).
        unsafe { sys::cuDriverGetVersion(&mut driver_version) }.result()?;

        let t0 = Instant::now();
        let mut cubin_fallback = None;
        let mut loaded = None;
        match arch.cubin() {
            Some(c) if arch.cubin_runs_on(major, minor) => {
                match ctx.load_module(Ptx::from_binary(c.to_vec())) {
                    Ok(m) => loaded = Some((m, ModuleImage::Cubin)),
                    Err(e) => cubin_fallback = Some(format!("cubin load failed: {e}")),
                }
            }
            Some(_) => {
                cubin_fallback = Some(format!(
                    "no native cubin for compute capability {major}.{minor}"
                ))
            }
            None => {
                cubin_fallback =
                    Some("this build embedded no cubin (no ptxas at build time)".into())
            }
        }
        let (module, image) = match loaded {
            Some(x) => x,
            None => (
                ctx.load_module(Ptx::from_src(arch.ptx()))?,
                ModuleImage::Ptx,
            ),
        };
        let module_load = t0.elapsed();
        let stream = ctx.default_stream();
        let info = GpuInfo {
            ordinal: ctx.ordinal(),
            name,
            compute_capability: (major, minor),
            sm_count,
            total_memory,
            max_smem_per_block,
            driver_version,
            arch,
            image,
            module_load,
            cubin_fallback,
        };
        let pdl = matches!(arch, Arch::Sm90 | Arch::Sm90a)
            && std::env::var("FERRINFER_PDL").is_ok_and(|v| v == "1");
        Ok(Gpu {
            inner: Arc::new(Inner {
                ctx,
                module,
                info,
                functions: Mutex::new(HashMap::new()),
            }),
            stream,
            pdl: Arc::new(AtomicBool::new(pdl)),
        })
    }

    /// Device facts.
    pub fn info(&self) -> &GpuInfo {
        &self.inner.info
    }

    /// Whether this GPU's kernel image has Hopper's programmatic dependent launch
    /// (`griddepcontrol`: the sm_90 and sm_90a images).
    pub fn supports_dependent_launch(&self) -> bool {
        matches!(self.inner.info.arch, Arch::Sm90 | Arch::Sm90a)
    }

    /// Launches the kernels that wait for their dependency in-kernel (decode, merge, KV copy
    /// and model kernels; `KernelKey::waits_for_prior_grids`) as programmatic dependents
    /// (`true`: each may start while the kernel before it finishes, its launch and prologue
    /// overlapping that kernel's tail; in a stream capture the edges become programmatic graph
    /// edges) or plainly (`false`). The results are the same bits either way. Off by default
    /// (on where supported when the environment sets `FERRINFER_PDL=1`). Applies to this
    /// handle and its clones (the ops built from them), not to handles of other streams made
    /// from it afterwards, which start from this setting. Returns the setting in effect
    /// (`false` where unsupported, whatever was asked).
    pub fn set_dependent_launch(&self, on: bool) -> bool {
        let on = on && self.supports_dependent_launch();
        self.pdl.store(on, Ordering::Relaxed);
        on
    }

    /// Whether kernels that allow it launch as programmatic dependents.
    pub fn dependent_launch(&self) -> bool {
        self.pdl.load(Ordering::Relaxed)
    }

    /// The cudarc context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.inner.ctx
    }

    /// This handle's context and module over another stream of the same context.
    pub(crate) fn with_stream(&self, stream: Arc<CudaStream>) -> Gpu {
        Gpu {
            inner: self.inner.clone(),
            stream,
            pdl: Arc::new(AtomicBool::new(self.dependent_launch())),
        }
    }

    /// The raw handle of the stream every op launches on.
    pub fn cu_stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }

    /// The stream every op launches on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Makes this GPU's context current on the calling thread. cudarc binds for its own calls;
    /// ours that go to the raw driver API (function lookup, attributes, occupancy, raw copies)
    /// bind first, so any thread may use a `Gpu` (libtest runs tests on many threads).
    pub(crate) fn bind(&self) -> Result<()> {
        self.inner.ctx.bind_to_thread()?;
        Ok(())
    }

    pub(crate) fn ctx_id(&self) -> usize {
        Arc::as_ptr(&self.inner) as usize
    }

    /// Looks up a kernel (cached), raising its dynamic shared memory limit to `smem_bytes` when
    /// that exceeds the 48 KiB default.
    pub(crate) fn function(&self, name: &str, smem_bytes: u32) -> Result<CudaFunction> {
        self.bind()?;
        let mut map = self
            .inner
            .functions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !map.contains_key(name) {
            let f = self
                .inner
                .module
                .load_function(name)
                .map_err(|_| Error::KernelMissing(name.to_string()))?;
            map.insert(name.to_string(), (f, 48 * 1024));
        }
        let Some(entry) = map.get_mut(name) else {
            return Err(Error::KernelMissing(name.to_string()));
        };
        if smem_bytes > entry.1 {
            if smem_bytes > self.inner.info.max_smem_per_block {
                return Err(Error::unsupported(
                    "launch",
                    "shared memory",
                    format!(
                        "{name} needs {smem_bytes} bytes, device allows {}",
                        self.inner.info.max_smem_per_block
                    ),
                ));
            }
            entry.0.set_attribute(
                sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem_bytes as i32,
            )?;
            entry.1 = smem_bytes;
        }
        Ok(entry.0.clone())
    }

    /// Registers used per thread by kernel `name` (from the loaded module).
    pub fn kernel_registers(&self, name: &str) -> Result<i32> {
        let f = self.function(name, 0)?;
        // SAFETY: reads one attribute of a loaded function.
        let mut v = 0i32;
        unsafe {
            sys::cuFuncGetAttribute(
                &mut v,
                sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_NUM_REGS,
                f.cu_function(),
            )
        }
        .result()?;
        Ok(v)
    }

    /// Allocates `len` zeroed elements.
    pub fn alloc<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<DeviceBuffer<T>> {
        Ok(DeviceBuffer {
            slice: self.stream.alloc_zeros::<T>(len)?,
            ctx_id: self.ctx_id(),
        })
    }

    /// Copies a host slice to a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<DeviceBuffer<T>> {
        Ok(DeviceBuffer {
            slice: self.stream.clone_htod(host)?,
            ctx_id: self.ctx_id(),
        })
    }

    /// Overwrites a device buffer with a host slice of the same length.
    pub fn write<T: DeviceRepr>(&self, dst: &mut DeviceBuffer<T>, host: &[T]) -> Result<()> {
        if host.len() != dst.len() {
            return Err(Error::shape(
                "write",
                "host slice length",
                dst.len(),
                host.len(),
            ));
        }
        self.stream.memcpy_htod(host, &mut dst.slice)?;
        Ok(())
    }

    /// Writes `host` into the first `host.len()` elements of `dst`.
    pub fn write_prefix<T: DeviceRepr>(&self, dst: &mut DeviceBuffer<T>, host: &[T]) -> Result<()> {
        let have = dst.len();
        let mut view = dst.slice.try_slice_mut(0..host.len()).ok_or_else(|| {
            Error::shape(
                "write_prefix",
                "destination length",
                format!(">= {}", host.len()),
                have,
            )
        })?;
        self.stream.memcpy_htod(host, &mut view)?;
        Ok(())
    }

    /// Writes `host` into `dst[offset..offset + host.len()]`.
    pub fn write_range<T: DeviceRepr>(
        &self,
        dst: &mut DeviceBuffer<T>,
        offset: usize,
        host: &[T],
    ) -> Result<()> {
        let have = dst.len();
        let end = offset.checked_add(host.len()).filter(|&e| e <= have);
        let Some(end) = end else {
            return Err(Error::shape(
                "write_range",
                "destination range",
                format!("{offset}+{} within {have}", host.len()),
                have,
            ));
        };
        let mut view = dst.slice.try_slice_mut(offset..end).ok_or_else(|| {
            Error::shape(
                "write_range",
                "destination range",
                format!("{offset}..{end}"),
                have,
            )
        })?;
        self.stream.memcpy_htod(host, &mut view)?;
        Ok(())
    }

    /// Copies `len` elements inside one buffer, from offset `src` to offset `dst` (ranges must
    /// not overlap), on the stream.
    pub fn copy_within<T: DeviceRepr>(
        &self,
        buf: &mut DeviceBuffer<T>,
        src: usize,
        dst: usize,
        len: usize,
    ) -> Result<()> {
        let end = |o: usize| o.checked_add(len).filter(|&e| e <= buf.len());
        if end(src).is_none() || end(dst).is_none() {
            return Err(Error::shape(
                "copy_within",
                "range",
                format!("within {}", buf.len()),
                format!("{src}/{dst}+{len}"),
            ));
        }
        if src < dst + len && dst < src + len && len > 0 {
            return Err(Error::invalid(
                "copy_within",
                "range",
                "source and destination overlap",
            ));
        }
        self.bind()?;
        let size = std::mem::size_of::<T>();
        let base = buf.addr();
        // SAFETY: both ranges are inside `buf` (checked above), do not overlap, and the copy is
        // ordered on this GPU's stream with every other use of `buf`.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(
                base + (dst * size) as u64,
                base + (src * size) as u64,
                len * size,
                self.stream.cu_stream(),
            )
        }?;
        Ok(())
    }

    /// Copies all of `src` into `dst` starting at element `dst_offset`.
    pub fn copy_into<T: DeviceRepr>(
        &self,
        src: &DeviceBuffer<T>,
        dst: &mut DeviceBuffer<T>,
        dst_offset: usize,
    ) -> Result<()> {
        let end = dst_offset
            .checked_add(src.len())
            .filter(|&e| e <= dst.len());
        if end.is_none() {
            return Err(Error::shape(
                "copy_into",
                "destination range",
                format!("{}+{} within {}", dst_offset, src.len(), dst.len()),
                dst.len(),
            ));
        }
        self.bind()?;
        let size = std::mem::size_of::<T>();
        // SAFETY: the destination range lies inside `dst` (checked), `src` is a whole buffer of
        // another allocation (two live DeviceBuffers never alias), ordered on this stream.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(
                dst.addr() + (dst_offset * size) as u64,
                src.addr(),
                src.len() * size,
                self.stream.cu_stream(),
            )
        }?;
        Ok(())
    }

    /// Copies a device buffer back to the host (synchronises the stream).
    pub fn download<T: DeviceRepr + Default + Clone>(
        &self,
        buf: &DeviceBuffer<T>,
    ) -> Result<Vec<T>> {
        Ok(self.stream.clone_dtoh(&buf.slice)?)
    }

    /// Copies the first `n` elements of a device buffer back to the host (synchronises the
    /// stream).
    pub fn download_prefix<T: DeviceRepr + Default + Clone>(
        &self,
        buf: &DeviceBuffer<T>,
        n: usize,
    ) -> Result<Vec<T>> {
        let view = buf.slice.try_slice(0..n).ok_or_else(|| {
            Error::shape(
                "download_prefix",
                "source length",
                format!(">= {n}"),
                buf.len(),
            )
        })?;
        Ok(self.stream.clone_dtoh(&view)?)
    }

    /// Waits for all work queued on the stream.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize()?;
        Ok(())
    }

    pub(crate) fn check_buffer<T>(&self, op: &'static str, b: &DeviceBuffer<T>) -> Result<()> {
        if b.ctx_id != self.ctx_id() {
            return Err(Error::WrongContext { op });
        }
        Ok(())
    }
}
