//! Embedding gather, SiLU-and-mul, 16-bit → f32 and greedy argmax.
use ferrinfer_kernels::abi::{
    ArgmaxParams, ConvertParams, GatherParams, SiluMulParams, ARGMAX_THREADS, MODEL_THREADS,
};
use ferrinfer_kernels::kernel_key::ModelKernel;

use super::{mul, positive, small, ModelKernels, ModelOut, MAX_GRID_X};
use crate::dtype::Float16;
use crate::error::Result;
use crate::runtime::{DeviceBuffer, LaunchDims};

/// One-CTA-per-row launch geometry.
fn per_row(rows: u32, threads: u32, smem_bytes: u32) -> LaunchDims {
    LaunchDims {
        grid: (rows, 1, 1),
        block: (threads, 1, 1),
        smem_bytes,
    }
}

/// One thread per item, [`MODEL_THREADS`] per CTA (`items ≤ u32::MAX`, so the grid fits).
fn per_item(items: u32) -> LaunchDims {
    per_row(items.div_ceil(MODEL_THREADS), MODEL_THREADS, 0)
}

impl ModelKernels {
    /// Row gather (embedding lookup, logits rows): `out[i, :] = table[ids[i], :]` for `i < n`;
    /// `table` is `[rows, dim]` of `T` (f32 or 16-bit: a bit copy), `ids` u32, `out` `[n,
    /// dim]`.
    ///
    /// The ids live on the device and are not checked on the host: **an id `≥ rows` writes a
    /// row of NaN** (never reads out of bounds), which the next op propagates visibly.
    #[allow(clippy::too_many_arguments)]
    pub fn gather_rows<T: ModelOut>(
        &self,
        table: &DeviceBuffer<T>,
        rows: usize,
        dim: usize,
        ids: &DeviceBuffer<u32>,
        n: usize,
        out: &mut DeviceBuffer<T>,
    ) -> Result<()> {
        const OP: &str = "gather_rows";
        positive(OP, "rows", rows)?;
        positive(OP, "dim", dim)?;
        self.buffer(
            OP,
            "table elements",
            table,
            mul(OP, "rows × dim", rows, dim)?,
        )?;
        self.buffer(OP, "ids", ids, n)?;
        self.buffer(OP, "out elements", out, mul(OP, "n × dim", n, dim)?)?;
        let p = GatherParams {
            table: table.addr(),
            ids: ids.addr(),
            out: out.addr(),
            table_rows: small(OP, "rows", rows, usize::MAX)?,
            dim: small(OP, "dim", dim, usize::MAX)?,
            n: small(OP, "n", n, MAX_GRID_X)?,
            reserved: 0,
        };
        let kernel = T::HALF.map_or(ModelKernel::GatherRows, ModelKernel::GatherRows16);
        // SAFETY: table holds rows·dim elements of T, the kernel's type (a shared borrow), ids
        // n u32, out n·dim of T; the kernel reads the table only for ids < rows.
        unsafe { self.launch(kernel, per_row(p.n, MODEL_THREADS, 0), p) }
    }

    /// SwiGLU's gate: `out[r, c] = silu(x[r, c]) · x[r, f + c]` for `r < rows`, `c < f`, where
    /// `x` rows are `[gate | up]` (`2f` f32) and `silu(g) = g / (1 + e^{−g})`; `out` is f32 or
    /// a 16-bit type ([`ModelOut`]: the f32 result rounded once).
    pub fn silu_and_mul<O: ModelOut>(
        &self,
        x: &DeviceBuffer<f32>,
        rows: usize,
        f: usize,
        out: &mut DeviceBuffer<O>,
    ) -> Result<()> {
        const OP: &str = "silu_and_mul";
        positive(OP, "f", f)?;
        let n = mul(OP, "rows × f", rows, f)?;
        self.buffer(OP, "x elements", x, mul(OP, "rows × 2f", n, 2)?)?;
        self.buffer(OP, "out elements", out, n)?;
        let items = small(OP, "rows × f", n, usize::MAX)?;
        let p = SiluMulParams {
            x: x.addr(),
            out: out.addr(),
            rows: rows as u32, // rows·f fits in u32 and f ≥ 1
            dim: f as u32,
        };
        let kernel = O::HALF.map_or(ModelKernel::SiluAndMul, ModelKernel::SiluAndMul16);
        // SAFETY: x holds rows·2f f32, out rows·f elements of O, the kernel's output type;
        // rows·f fits in u32 (so rows and f do).
        unsafe { self.launch(kernel, per_item(items), p) }
    }

    /// `out[i] = x[i] as f32` for `i < n` (exact).
    pub fn to_f32<T: Float16>(
        &self,
        x: &DeviceBuffer<T>,
        n: usize,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        const OP: &str = "to_f32";
        self.buffer(OP, "x elements", x, n)?;
        self.buffer(OP, "out elements", out, n)?;
        let p = ConvertParams {
            x: x.addr(),
            out: out.addr(),
            n: small(OP, "n", n, usize::MAX)?,
            reserved: 0,
        };
        let kernel = ModelKernel::ToF32(T::DTYPE.key());
        // SAFETY: x holds n elements from the start of its allocation (4-byte aligned), out n
        // f32.
        unsafe { self.launch(kernel, per_item(p.n.div_ceil(2)), p) }
    }

    /// Greedy sampling: `out[r]` = the index of the largest value of row `r` of `logits`
    /// (`[rows, vocab]` f32), the first on ties; **a row holding a NaN gives `u32::MAX`** (the
    /// CPU twin [`crate::cpu::sampling::argmax`] returns an error there). One CTA per row.
    pub fn argmax(
        &self,
        logits: &DeviceBuffer<f32>,
        rows: usize,
        vocab: usize,
        out: &mut DeviceBuffer<u32>,
    ) -> Result<()> {
        const OP: &str = "argmax";
        positive(OP, "vocab", vocab)?;
        self.buffer(
            OP,
            "logits elements",
            logits,
            mul(OP, "rows × vocab", rows, vocab)?,
        )?;
        self.buffer(OP, "out elements", out, rows)?;
        let p = ArgmaxParams {
            logits: logits.addr(),
            out: out.addr(),
            rows: small(OP, "rows", rows, MAX_GRID_X)?,
            // u32::MAX is the NaN marker, so it is never an index.
            vocab: small(OP, "vocab", vocab, u32::MAX as usize - 1)?,
        };
        let dims = per_row(p.rows, ARGMAX_THREADS, 12 * ARGMAX_THREADS / 32);
        // SAFETY: logits holds rows·vocab f32 (a shared borrow), out rows u32.
        unsafe { self.launch(ModelKernel::Argmax, dims, p) }
    }
}
