//! Few-row matrix products (`gemv_*`): the projections of a decode step, `out[m, n] = x[m, k] ·
//! w[n, k]ᵀ` with 16-bit `x` and `w`, f32 products and sums, f32 `out` — what a GEMM library
//! computes for these shapes, without its per-call set-up (CPU twin: the f64 oracle of the
//! tests; the semantics are the plain dot product).
use ferrinfer_kernels::abi::{GemvParams, GEMV_MAX_ROWS, GEMV_THREADS};
use ferrinfer_kernels::kernel_key::ModelKernel;

use super::{mul, positive, small, ModelKernels, MAX_GRID_X};
use crate::dtype::Float16;
use crate::error::{Error, Result};
use crate::runtime::{DeviceBuffer, LaunchDims};

const OP: &str = "gemv";

/// Most rows one [`ModelKernels::gemv`] takes (decode steps of up to this many tokens).
pub const MAX_ROWS: usize = GEMV_MAX_ROWS;

impl ModelKernels {
    /// `out[r, c] = Σ_j x[r, j] · w[c, j]` for `r < m`, `c < n`: `x` `[m, k]` and `w` `[n, k]`
    /// row-major of `T`, `out` `[m, n]` f32 (products and sums in f32). For `m ≤` [`MAX_ROWS`]
    /// and `k` a multiple of 8 (16-byte rows); larger `m` is [`Error::Unsupported`] (a GEMM's
    /// shape). `m = 0` launches nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn gemv<T: Float16>(
        &self,
        x: &DeviceBuffer<T>,
        m: usize,
        w: &DeviceBuffer<T>,
        k: usize,
        n: usize,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        if m > MAX_ROWS {
            return Err(Error::unsupported(
                OP,
                "rows",
                format!("{m} (at most {MAX_ROWS}; larger products belong to a GEMM)"),
            ));
        }
        positive(OP, "k", k)?;
        positive(OP, "n", n)?;
        if !k.is_multiple_of(8) {
            return Err(Error::invalid(OP, "k", format!("{k} (a multiple of 8)")));
        }
        self.buffer(OP, "x elements", x, mul(OP, "m × k", m, k)?)?;
        self.buffer(OP, "w elements", w, mul(OP, "n × k", n, k)?)?;
        self.buffer(OP, "out elements", out, mul(OP, "m × n", m, n)?)?;
        for (what, addr) in [("x", x.addr()), ("w", w.addr())] {
            if !addr.is_multiple_of(16) {
                return Err(Error::invalid(
                    OP,
                    what,
                    format!("address {addr:#x} is not 16-byte aligned"),
                ));
            }
        }
        let warps = (GEMV_THREADS / 32) as usize;
        let p = GemvParams {
            x: x.addr(),
            w: w.addr(),
            out: out.addr(),
            m: m as u32,
            n: small(OP, "n", n, usize::MAX)?,
            k: small(OP, "k", k, usize::MAX)?,
            reserved: 0,
        };
        let dims = LaunchDims {
            grid: (small(OP, "n / warps", n.div_ceil(warps), MAX_GRID_X)?, 1, 1),
            block: (GEMV_THREADS, 1, 1),
            smem_bytes: 0,
        };
        if m == 0 {
            return Ok(());
        }
        let kernel = ModelKernel::Gemv(T::DTYPE.key());
        // SAFETY: 1 ≤ m ≤ GEMV_MAX_ROWS; k a multiple of 8; x holds m·k and w n·k elements of
        // T (the kernel's type), both 16-byte aligned; out holds m·n f32 and is an exclusive
        // borrow, distinct from the shared inputs; the grid covers n warps.
        unsafe { self.launch(kernel, dims, p) }
    }
}
