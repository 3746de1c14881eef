//! Launch-time checks shared by the planned ops (batch decode, batch prefill): the query,
//! element type, output and lse buffers against what the op and plan were made for. They take
//! spans, so owned buffers and caller memory go through the same checks.
use crate::dtype::{DType, Float16};
use crate::error::{Error, Result};
use crate::runtime::{DeviceSpan, Gpu};

/// What q/out/lse must hold for a planned launch.
pub(crate) struct PlannedIo<'a> {
    /// The op, for errors.
    pub op: &'static str,
    /// What the element count is, for errors (e.g. "plan batch × heads × head_dim").
    pub what: &'static str,
    /// q and out elements the plan covers.
    pub elems: usize,
    /// lse elements the plan covers.
    pub lse_elems: usize,
    /// q and out must hold exactly `elems` (outside CUDA-graph mode a plan reused for another
    /// batch is an error, not a silent partial result); otherwise at least.
    pub exact: bool,
    /// The device the op runs on.
    pub gpu: &'a Gpu,
    /// The element type the op was made for.
    pub dtype: DType,
}

impl PlannedIo<'_> {
    /// Checks the element type, context, lengths and (when given) the lse buffer.
    pub(crate) fn check<T: Float16>(
        &self,
        q: &DeviceSpan<T>,
        out: &DeviceSpan<T>,
        lse: Option<&DeviceSpan<f32>>,
    ) -> Result<()> {
        let (op, n) = (self.op, self.elems);
        if T::DTYPE != self.dtype {
            return Err(Error::shape(op, "element type", self.dtype, T::DTYPE));
        }
        self.gpu.check_span(op, q)?;
        self.gpu.check_span(op, out)?;
        // Caller memory may start anywhere; the kernels load and store 16-byte vectors.
        if !q.addr().is_multiple_of(16) || !out.addr().is_multiple_of(16) {
            return Err(Error::invalid(
                op,
                "q/out",
                "addresses must be 16-byte aligned",
            ));
        }
        if self.exact && (q.len() != n || out.len() != n) {
            return Err(Error::shape(
                op,
                self.what,
                n,
                format!("{}/{}", q.len(), out.len()),
            ));
        }
        if q.len() < n || out.len() < n {
            return Err(Error::shape(
                op,
                self.what,
                format!(">= {n}"),
                format!("{}/{}", q.len(), out.len()),
            ));
        }
        if let Some(l) = lse {
            self.gpu.check_span(op, l)?;
            if l.len() < self.lse_elems {
                return Err(Error::shape(
                    op,
                    "lse elements",
                    format!(">= {}", self.lse_elems),
                    l.len(),
                ));
            }
        }
        Ok(())
    }
}
