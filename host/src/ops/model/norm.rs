//! RMSNorm and residual-add + RMSNorm (CPU twins: [`crate::cpu::norm`]).
use ferrinfer_kernels::abi::{NormParams, MODEL_THREADS};
use ferrinfer_kernels::kernel_key::ModelKernel;

use super::{mul, small, ModelKernels, ModelOut, MAX_GRID_X};
use crate::error::{Error, Result};
use crate::runtime::{DeviceBuffer, LaunchDims};

impl ModelKernels {
    /// `out = rmsnorm(x) · w` over `rows` rows of `dim = w.len()` f32 values:
    /// `out[r, c] = x[r, c] / sqrt(mean_c(x[r, c]²) + eps) · w[c]`, the mean square reduced in
    /// f32 by one CTA per row. `x` and `out` need `rows · dim` elements; `out` is f32 or a
    /// 16-bit type ([`ModelOut`]: the f32 result rounded once).
    pub fn rms_norm<O: ModelOut>(
        &self,
        x: &DeviceBuffer<f32>,
        w: &DeviceBuffer<f32>,
        rows: usize,
        eps: f32,
        out: &mut DeviceBuffer<O>,
    ) -> Result<()> {
        const OP: &str = "rms_norm";
        let mut p = self.norm_params(OP, w, rows, eps)?;
        let n = rows * w.len();
        self.buffer(OP, "x elements", x, n)?;
        self.buffer(OP, "out elements", out, n)?;
        p.x = x.addr();
        p.out = out.addr();
        let kernel = O::HALF.map_or(ModelKernel::RmsNorm, ModelKernel::RmsNorm16);
        // SAFETY: x holds rows·dim f32, out rows·dim elements of the kernel's output type O,
        // w dim f32; x and w are shared borrows, so not written during the launch.
        unsafe { self.launch(kernel, norm_dims(rows), p) }
    }

    /// `residual += x; out = rmsnorm(residual) · w` (FlashInfer's `fused_add_rmsnorm`): the
    /// residual stream is updated in place (f32), then normalised as [`ModelKernels::rms_norm`]
    /// into `out` (f32 or 16-bit).
    pub fn add_rms_norm<O: ModelOut>(
        &self,
        residual: &mut DeviceBuffer<f32>,
        x: &DeviceBuffer<f32>,
        w: &DeviceBuffer<f32>,
        rows: usize,
        eps: f32,
        out: &mut DeviceBuffer<O>,
    ) -> Result<()> {
        const OP: &str = "add_rms_norm";
        let mut p = self.norm_params(OP, w, rows, eps)?;
        let n = rows * w.len();
        self.buffer(OP, "residual elements", residual, n)?;
        self.buffer(OP, "x elements", x, n)?;
        self.buffer(OP, "out elements", out, n)?;
        p.x = x.addr();
        p.residual = residual.addr();
        p.out = out.addr();
        let kernel = O::HALF.map_or(ModelKernel::AddRmsNorm, ModelKernel::AddRmsNorm16);
        // SAFETY: residual and x hold rows·dim f32, out rows·dim elements of the kernel's
        // output type O, w dim f32; the borrows make residual and out distinct from each other
        // and from x and w.
        unsafe { self.launch(kernel, norm_dims(rows), p) }
    }

    /// Validates the shared arguments; the returned block has `weight`, `rows`, `dim`, `eps`.
    fn norm_params(
        &self,
        op: &'static str,
        w: &DeviceBuffer<f32>,
        rows: usize,
        eps: f32,
    ) -> Result<NormParams> {
        self.gpu.check_buffer(op, w)?;
        let dim = w.len();
        if dim == 0 {
            return Err(Error::shape(op, "weight elements", ">= 1", 0));
        }
        if !(eps.is_finite() && eps > 0.0) {
            return Err(Error::invalid(
                op,
                "eps",
                format!("{eps} (must be finite, > 0)"),
            ));
        }
        mul(op, "rows × dim", rows, dim)?;
        Ok(NormParams {
            weight: w.addr(),
            rows: small(op, "rows", rows, MAX_GRID_X)?,
            dim: small(op, "dim", dim, usize::MAX)?,
            eps,
            ..NormParams::default()
        })
    }
}

fn norm_dims(rows: usize) -> LaunchDims {
    LaunchDims {
        grid: (rows as u32, 1, 1),
        block: (MODEL_THREADS, 1, 1),
        smem_bytes: 4 * MODEL_THREADS / 32,
    }
}
