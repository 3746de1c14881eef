//! The GPU runner's matrix products: `out[m, n] = x[m, k] · w[n, k]ᵀ`, all row-major, with `x`
//! and `w` of one element type (f32, bf16 or f16), f32 accumulation and an f32 `out`. On
//! cuBLAS (libcublas, loaded at run time) one `cublasGemmEx` serves every precision, so the
//! f32 path and the 16-bit ones share their (column-major) geometry: with 16-bit inputs cuBLAS
//! runs tensor-core kernels; with f32 and `CUBLAS_COMPUTE_32F` it is SGEMM (no TF32). On request
//! (`GpuRunner::set_small_products`, off by default) steps of at most a chosen number of tokens
//! with 16-bit inputs run ferrinfer's few-row kernels instead ([`Products`]).
use cudarc::cublas::result::gemm_ex;
use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t,
};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, ValidAsZeroBits};
use ferrinfer::ops::ModelKernels;
use ferrinfer::DeviceBuffer;
use half::{bf16, f16};

use crate::error::{EngineError, Result};

/// An element type of a product's inputs.
pub(crate) trait GemmElem: DeviceRepr + ValidAsZeroBits + Copy + 'static {
    /// cuBLAS's tag of the type.
    const CUDA: cudaDataType_t;
    /// `v` rounded to this type (round to nearest even).
    fn from_f32(v: f32) -> Self;
    /// The few-row product on ferrinfer's kernel (`ModelKernels::gemv`) for this type, `None`
    /// where it has none (f32).
    #[allow(clippy::too_many_arguments)]
    fn gemv(
        _mk: &ModelKernels,
        _x: &DeviceBuffer<Self>,
        _m: usize,
        _w: &DeviceBuffer<Self>,
        _k: usize,
        _n: usize,
        _out: &mut DeviceBuffer<f32>,
    ) -> Option<ferrinfer::Result<()>> {
        None
    }
    /// `ModelKernels::gemv_silu` for this type, `None` where it has none (f32).
    #[allow(clippy::too_many_arguments)]
    fn gemv_silu(
        _mk: &ModelKernels,
        _gate_up: &DeviceBuffer<f32>,
        _m: usize,
        _w: &DeviceBuffer<Self>,
        _k: usize,
        _n: usize,
        _out: &mut DeviceBuffer<f32>,
    ) -> Option<ferrinfer::Result<()>> {
        None
    }
}

impl GemmElem for f32 {
    const CUDA: cudaDataType_t = cudaDataType_t::CUDA_R_32F;
    fn from_f32(v: f32) -> Self {
        v
    }
}

/// The 16-bit types: [`GemmElem`] with the few-row kernel.
macro_rules! half_gemm_elem {
    ($($t:ty => $cuda:ident;)*) => {$(
        impl GemmElem for $t {
            const CUDA: cudaDataType_t = cudaDataType_t::$cuda;
            fn from_f32(v: f32) -> Self {
                <$t>::from_f32(v)
            }
            fn gemv(
                mk: &ModelKernels,
                x: &DeviceBuffer<Self>,
                m: usize,
                w: &DeviceBuffer<Self>,
                k: usize,
                n: usize,
                out: &mut DeviceBuffer<f32>,
            ) -> Option<ferrinfer::Result<()>> {
                Some(mk.gemv(x, m, w, k, n, out))
            }
            fn gemv_silu(
                mk: &ModelKernels,
                gate_up: &DeviceBuffer<f32>,
                m: usize,
                w: &DeviceBuffer<Self>,
                k: usize,
                n: usize,
                out: &mut DeviceBuffer<f32>,
            ) -> Option<ferrinfer::Result<()>> {
                Some(mk.gemv_silu(gate_up, m, w, k, n, out))
            }
        }
    )*};
}

half_gemm_elem! {
    bf16 => CUDA_R_16BF;
    f16 => CUDA_R_16F;
}

/// Where a step's products run: cuBLAS, and with `small = Some((kernels, rows))` ferrinfer's
/// few-row kernel for 16-bit products of `1..=rows` rows and `k` a multiple of 8.
pub(super) struct Products<'a> {
    pub blas: &'a CudaBlas,
    pub stream: &'a CudaStream,
    pub small: Option<(&'a ModelKernels, usize)>,
}

impl Products<'_> {
    /// `out[m, n] = x[m, k] · w[n, k]ᵀ` (as [`linear`]) on the kernel that serves the shape.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run<T: GemmElem>(
        &self,
        x: &DeviceBuffer<T>,
        m: usize,
        w: &DeviceBuffer<T>,
        k: usize,
        n: usize,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        if let Some(r) = self
            .small_for(m, k)
            .and_then(|mk| T::gemv(mk, x, m, w, k, n, out))
        {
            return Ok(r?);
        }
        linear(self.blas, self.stream, x, m, w, k, n, out)
    }

    /// Whether the few-row kernel serves an `m`-row product over `k`.
    fn small_for(&self, m: usize, k: usize) -> Option<&ModelKernels> {
        self.small
            .filter(|&(_, rows)| (1..=rows).contains(&m) && k.is_multiple_of(8))
            .map(|(mk, _)| mk)
    }

    /// SwiGLU's down product, `out = (silu(gate) · up) · wᵀ` over the f32 `[m, 2k]` rows of
    /// `gate_up`, in one launch where the few-row kernel serves the shape; `Ok(false)` where it
    /// does not (the caller then runs SiLU-and-mul and [`Products::run`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn silu_down<T: GemmElem>(
        &self,
        gate_up: &DeviceBuffer<f32>,
        m: usize,
        w: &DeviceBuffer<T>,
        k: usize,
        n: usize,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<bool> {
        match self
            .small_for(m, k)
            .and_then(|mk| T::gemv_silu(mk, gate_up, m, w, k, n, out))
        {
            Some(r) => r.map(|()| true).map_err(Into::into),
            None => Ok(false),
        }
    }
}

/// Whether cuBLAS can be opened under a name cudarc tries (it panics on first use otherwise).
pub(super) fn cublas_present() -> bool {
    use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
    [
        format!("{DLL_PREFIX}cublas{DLL_SUFFIX}"),
        format!("{DLL_PREFIX}cublas{DLL_SUFFIX}.12"),
    ]
    .iter()
    // SAFETY: only probes whether the library can be dlopen'ed; the handle is closed at once.
    .any(|name| unsafe { libloading::Library::new(name) }.is_ok())
}

/// Bytes of cuBLAS's workspace: NVIDIA's recommendation for Hopper (32 MiB; 4 MiB suffices
/// elsewhere).
pub(super) const WORKSPACE_BYTES: usize = 32 << 20;

/// Gives `blas` the fixed workspace `ws` (on `stream`, cuBLAS's stream). Without one, cuBLAS
/// draws from a pool it may grow on first use of an algorithm, an allocation that would break
/// (or be baked into) a CUDA graph capture; cuBLAS's guide asks for a user workspace when
/// capturing. Must follow every `cublasSetStream` (which resets it).
pub(super) fn set_workspace(
    blas: &CudaBlas,
    stream: &CudaStream,
    ws: &DeviceBuffer<u8>,
) -> Result<()> {
    let (ptr, _sync) = ws.as_cuda_slice().device_ptr(stream);
    // SAFETY: the workspace is a live allocation of `ws.len()` bytes on cuBLAS's stream, kept
    // alive by the runner for as long as the handle.
    unsafe { cudarc::cublas::sys::cublasSetWorkspace_v2(*blas.handle(), ptr as *mut _, ws.len()) }
        .result()
        .map_err(blas_err)
}

pub(super) fn blas_err(e: impl std::fmt::Debug) -> EngineError {
    EngineError::Model(format!("cuBLAS: {e:?}"))
}

/// `out[m, n] = x[m, k] · w[n, k]ᵀ`, all row-major. cuBLAS is column-major: a row-major
/// `[r, c]` matrix is its column-major `[c, r]` transpose, so this is `outᵀ = w · xᵀ` with
/// `A` = w's column-major `[k, n]` view transposed (op(A) = Aᵀ, lda = k), `B` = x's
/// column-major `[k, m]` view as it is (ldb = k) and `C` = out's column-major `[n, m]` view
/// (ldc = n).
///
/// `blas` must be bound to `stream`, the stream of every buffer (the runner's GPU stream).
#[allow(clippy::too_many_arguments)]
pub(super) fn linear<T: GemmElem>(
    blas: &CudaBlas,
    stream: &CudaStream,
    x: &DeviceBuffer<T>,
    m: usize,
    w: &DeviceBuffer<T>,
    k: usize,
    n: usize,
    out: &mut DeviceBuffer<f32>,
) -> Result<()> {
    if m == 0 {
        return Ok(());
    }
    let fits = |v: usize| i32::try_from(v).is_ok();
    if x.len() < m * k || w.len() != n * k || out.len() < m * n || !(fits(m) && fits(n) && fits(k))
    {
        return Err(EngineError::Model(format!(
            "linear: x {} w {} out {} for m {m} k {k} n {n}",
            x.len(),
            w.len(),
            out.len()
        )));
    }
    let (alpha, beta) = (1.0f32, 0.0f32);
    let (a, _a_sync) = w.as_cuda_slice().device_ptr(stream);
    let (b, _b_sync) = x.as_cuda_slice().device_ptr(stream);
    let (c, _c_sync) = out.as_cuda_slice_mut().device_ptr_mut(stream);
    // SAFETY: the lengths were checked above against the dimensions and leading dimensions
    // passed (A holds n·k, B at least m·k, C at least m·n elements of the declared types); all
    // three live on the stream cuBLAS is bound to; alpha and beta are f32, the scale type of
    // CUBLAS_COMPUTE_32F, and outlive the (asynchronous) call, which reads them at enqueue
    // time (host pointer mode, cuBLAS's default).
    unsafe {
        gemm_ex(
            *blas.handle(),
            cublasOperation_t::CUBLAS_OP_T,
            cublasOperation_t::CUBLAS_OP_N,
            n as i32,
            m as i32,
            k as i32,
            (&alpha) as *const f32 as *const _,
            a as *const _,
            T::CUDA,
            k as i32,
            b as *const _,
            T::CUDA,
            k as i32,
            (&beta) as *const f32 as *const _,
            c as *mut _,
            cudaDataType_t::CUDA_R_32F,
            n as i32,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(blas_err)
}
