//! Build check, not a library to use: ferrinfer compiles in one program with candle-core's CUDA
//! backend. candle-core (0.11.1, `cuda` feature) depends on cudarc 0.19 with `dynamic-linking`
//! (and `cuda-version-from-build-system`, cuBLAS, cuBLASLt, cuRAND, NVRTC, f16, f8); ferrinfer asks
//! for `fallback-dynamic-loading`, which cudarc drops when another crate in the build asks for a
//! linking mode, so the two resolve to one cudarc. `scripts/check-candle-link.sh` (run by
//! `scripts/test.sh`) checks this crate with `--features candle-cuda`, the feature set candle
//! turns on; candle-core itself is not built here, since its kernels crate needs `nvcc`.
//!
//! The function below is the integration a candle user writes: ferrinfer's kernels loaded into
//! the CUDA context candle already holds (`CudaDevice::cuda_stream().context()` in candle).

use std::sync::Arc;

/// ferrinfer on the context of another cudarc user (e.g. candle's `CudaDevice`).
pub fn ferrinfer_on(ctx: Arc<cudarc::driver::CudaContext>) -> ferrinfer::Result<ferrinfer::Gpu> {
    ferrinfer::Gpu::with_context(ctx)
}
