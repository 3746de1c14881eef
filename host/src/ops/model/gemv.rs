//! Few-row matrix products (`gemv_*`): the projections of a decode step, `out[m, n] = x[m, k] ·
//! w[n, k]ᵀ` with 16-bit `x` and `w`, f32 products and sums, f32 `out` — what a GEMM library
//! computes for these shapes, without its per-call set-up (the tests' reference is an f64
//! oracle: the semantics are the plain dot product). [`ModelKernels::gemv_silu`] takes a
//! SwiGLU block's f32 gate|up rows instead of `x` and forms `x` as [`ModelKernels::silu_and_mul`]
//! does, in registers.
use ferrinfer_kernels::abi::{GemvParams, GEMV_GROUP_ROWS, GEMV_THREADS};
use ferrinfer_kernels::kernel_key::ModelKernel;

use super::{mul, positive, small, ModelKernels, MAX_GRID_X};
use crate::dtype::Float16;
use crate::error::{Error, Result};
use crate::runtime::{DeviceBuffer, LaunchDims};

const OP: &str = "gemv";

/// Rows one CTA of [`ModelKernels::gemv`] multiplies per weight load; more rows run as more
/// groups (each reading the weights again, from L2), with the same per-row arithmetic.
pub const GROUP_ROWS: usize = GEMV_GROUP_ROWS;

/// Most row groups of one launch (the grid's y extent).
const MAX_GROUPS: usize = 65_535;

impl ModelKernels {
    /// `out[r, c] = Σ_j x[r, j] · w[c, j]` for `r < m`, `c < n`: `x` `[m, k]` and `w` `[n, k]`
    /// row-major of `T`, `out` `[m, n]` f32 (products and sums in f32), `k` a multiple of 8
    /// (16-byte rows). Each row's result is the same bits for any `m` (rows run in groups of
    /// [`GROUP_ROWS`], each group the same code); meant for decode steps' few rows, where it
    /// streams the weights once per group. `m = 0` launches nothing.
    ///
    /// With programmatic dependent launch on ([`crate::Gpu::set_dependent_launch`]) the kernel
    /// loads its first weight vectors before waiting for the kernel before it on the stream
    /// (`x` is read after the wait): `w` must not be written by the kernels launched just
    /// before it — true of model weights, written once at load.
    pub fn gemv<T: Float16>(
        &self,
        x: &DeviceBuffer<T>,
        m: usize,
        w: &DeviceBuffer<T>,
        k: usize,
        n: usize,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        self.check_gemv(m, w, k, n, out)?;
        self.buffer(OP, "x elements", x, mul(OP, "m × k", m, k)?)?;
        let kernel = ModelKernel::Gemv(T::DTYPE.key());
        // SAFETY: x holds m rows of k elements of T (checked above), the rest by `check_gemv`.
        unsafe { self.launch_gemv(kernel, x.addr(), m, w, k, n, out) }
    }

    /// [`ModelKernels::gemv`] of the SwiGLU activation: `gate_up` is f32 `[m, 2k]` (each row
    /// `[gate | up]`, the gate|up product's output) and the input element `j` of row `r` is
    /// `silu(gate[r, j]) · up[r, j]` rounded to `T` — bit for bit [`ModelKernels::silu_and_mul`]
    /// into `T` followed by [`ModelKernels::gemv`], in one launch. The same condition on `w`
    /// under dependent launch as [`ModelKernels::gemv`].
    pub fn gemv_silu<T: Float16>(
        &self,
        gate_up: &DeviceBuffer<f32>,
        m: usize,
        w: &DeviceBuffer<T>,
        k: usize,
        n: usize,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        self.check_gemv(m, w, k, n, out)?;
        let row = mul(OP, "2k", k, 2)?;
        self.buffer(OP, "gate_up elements", gate_up, mul(OP, "m × 2k", m, row)?)?;
        let kernel = ModelKernel::GemvSilu(T::DTYPE.key());
        // SAFETY: gate_up holds m rows of 2k f32 (checked above), the rest by `check_gemv`.
        unsafe { self.launch_gemv(kernel, gate_up.addr(), m, w, k, n, out) }
    }

    /// The checks both forms share: rows, `k` and `n`, `w` and `out` extents, `w`'s alignment.
    fn check_gemv<T: Float16>(
        &self,
        m: usize,
        w: &DeviceBuffer<T>,
        k: usize,
        n: usize,
        out: &DeviceBuffer<f32>,
    ) -> Result<()> {
        if m.div_ceil(GROUP_ROWS) > MAX_GROUPS {
            return Err(Error::unsupported(
                OP,
                "rows",
                format!("{m} (at most {} rows)", MAX_GROUPS * GROUP_ROWS),
            ));
        }
        positive(OP, "k", k)?;
        positive(OP, "n", n)?;
        if !k.is_multiple_of(8) {
            return Err(Error::invalid(OP, "k", format!("{k} (a multiple of 8)")));
        }
        self.buffer(OP, "w elements", w, mul(OP, "n × k", n, k)?)?;
        self.buffer(OP, "out elements", out, mul(OP, "m × n", m, n)?)?;
        small(OP, "2k", k.saturating_mul(2), usize::MAX)?;
        small(OP, "n", n, usize::MAX)?;
        Ok(())
    }

    /// Launches `kernel` over input rows at `x` (16-byte aligned: refused otherwise).
    ///
    /// # Safety
    /// `x` holds the `m` input rows `kernel` reads; `check_gemv` passed for the other arguments.
    #[allow(clippy::too_many_arguments)]
    unsafe fn launch_gemv<T: Float16>(
        &self,
        kernel: ModelKernel,
        x: u64,
        m: usize,
        w: &DeviceBuffer<T>,
        k: usize,
        n: usize,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        for (what, addr) in [("x", x), ("w", w.addr())] {
            if !addr.is_multiple_of(16) {
                return Err(Error::invalid(
                    OP,
                    what,
                    format!("address {addr:#x} is not 16-byte aligned"),
                ));
            }
        }
        if m == 0 {
            return Ok(());
        }
        let warps = (GEMV_THREADS / 32) as usize;
        let p = GemvParams {
            x,
            w: w.addr(),
            out: out.addr(),
            m: m as u32,
            n: n as u32,
            k: k as u32,
            reserved: 0,
        };
        let dims = LaunchDims {
            grid: (
                small(OP, "n / warps", n.div_ceil(warps), MAX_GRID_X)?,
                m.div_ceil(GROUP_ROWS) as u32,
                1,
            ),
            block: (GEMV_THREADS, 1, 1),
            smem_bytes: 0,
        };
        // SAFETY: grid y = ceil(m / GROUP_ROWS) (≤ MAX_GROUPS); k a multiple of 8 with 2k and n in u32; x (caller)
        // and w hold their rows, both 16-byte aligned; out holds m·n f32 and is an exclusive
        // borrow, distinct from the shared inputs; the grid covers n warps.
        unsafe { self.launch(kernel, dims, p) }
    }
}
