//! fp8 pools: appends quantise each row with the tensor's scale.
use super::{AppendMeta, DeviceAppendMeta, KvPool, Rows, OP};
use crate::dtype::Float16;
use crate::error::Result;
use crate::fp8::{Fp8, Fp8Format, KvScales};
use crate::kv::RowStrides;
use crate::runtime::DeviceBuffer;

/// fp8 pools: appended f16/bf16 rows are quantised with the tensor's scale as they are written.
impl<T: Float16, F: Fp8Format> KvPool<T, Fp8<F>> {
    /// [`KvPool::append`] into fp8 pages: each K (V) element `x` is stored as the code of
    /// `x / scales.k` (`x / scales.v`), rounded to nearest even, saturated to the format's
    /// largest finite value, NaN kept. `scales` are validated first (finite, > 0).
    pub fn append_quantized(
        &mut self,
        meta: &AppendMeta<'_>,
        k: Rows<'_, T>,
        ks: RowStrides,
        v: Rows<'_, T>,
        vs: RowStrides,
        scales: KvScales,
    ) -> Result<()> {
        scales.validate(OP)?;
        self.append_scaled(meta, k, ks, v, vs, scales)
    }

    /// [`KvPool::append_uploaded`] into fp8 pages, quantising as [`KvPool::append_quantized`].
    pub fn append_uploaded_quantized(
        &mut self,
        meta: &DeviceAppendMeta,
        k: &DeviceBuffer<T>,
        ks: RowStrides,
        v: &DeviceBuffer<T>,
        vs: RowStrides,
        scales: KvScales,
    ) -> Result<()> {
        scales.validate(OP)?;
        self.append_uploaded_scaled(meta, k.span(), ks, v.span(), vs, scales)
    }
}
