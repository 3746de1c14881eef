//! Pools of 16-bit elements: appends are plain copies, and rows can be gathered back out.
use super::{unreachable_storage, AppendMeta, DeviceAppendMeta, KvPool, Rows, RowsMut, OP};
use crate::dtype::Float16;
use crate::error::{Error, Result};
use crate::fp8::KvScales;
use crate::kv::storage::{host_rows_out, HostPages};
use crate::kv::BatchPages;
use crate::kv::RowStrides;
use crate::ops::kv_copy::{self, append_variant, RowsAddr};
use crate::runtime::DeviceBuffer;

/// Pools of 16-bit elements, appended rows of the same type (a copy).
impl<T: Float16> KvPool<T> {
    /// Tuning knob for the append kernel: rows each thread moves per iteration (1 — the
    /// default — 2, 4 or 8; more rows keep more loads in flight per thread but need more
    /// registers, so fewer threads are resident) and, for 1 row, streaming (`.cs`) stores.
    /// `benches/append.rs` compares them.
    pub fn set_append_variant(&mut self, rows: usize, streaming_stores: bool) -> Result<()> {
        let variant = append_variant(rows, streaming_stores)?;
        if let Some(d) = self.storage.device_mut() {
            d.kernels.set_append(&d.gpu, &self.cfg, variant)?;
        }
        Ok(())
    }

    /// Writes new K/V rows into their pages (FlashInfer's `append_paged_kv_cache`): row `n`
    /// goes to position `positions[n]` of batch entry `batch_indices[n]`. Validated first.
    pub fn append(
        &mut self,
        meta: &AppendMeta<'_>,
        k: Rows<'_, T>,
        ks: RowStrides,
        v: Rows<'_, T>,
        vs: RowStrides,
    ) -> Result<()> {
        self.append_scaled(meta, k, ks, v, vs, KvScales::ONE)
    }

    /// Appends with metadata uploaded by [`KvPool::upload_append_meta`]: one kernel launch, no
    /// host-to-device copy.
    pub fn append_uploaded(
        &mut self,
        meta: &DeviceAppendMeta,
        k: &DeviceBuffer<T>,
        ks: RowStrides,
        v: &DeviceBuffer<T>,
        vs: RowStrides,
    ) -> Result<()> {
        self.append_uploaded_scaled(meta, k.span(), ks, v.span(), vs, KvScales::ONE)
    }

    /// Copies entry `b` of `pages` out to contiguous rows `[len, heads, head_dim]` (strided).
    pub fn gather(
        &mut self,
        pages: &BatchPages,
        b: usize,
        k_out: RowsMut<'_, T>,
        ks: RowStrides,
        v_out: RowsMut<'_, T>,
        vs: RowStrides,
    ) -> Result<()> {
        self.validate_pages(pages)?;
        if b >= pages.batch_size() {
            return Err(Error::invalid(
                OP,
                "batch entry",
                format!("{b} not in [0, {})", pages.batch_size()),
            ));
        }
        let len = pages.kv_len(b, self.cfg.page_size)?;
        self.check_rows("k out", &k_out.as_rows(), ks, len)?;
        self.check_rows("v out", &v_out.as_rows(), vs, len)?;
        if len == 0 {
            return Ok(());
        }
        let cfg = self.cfg;
        match (k_out, v_out) {
            (RowsMut::Device(kb), RowsMut::Device(vb)) => {
                let [_, _, indptr, indices] =
                    self.upload_meta(&[&[], &[], &pages.kv_indptr, &pages.kv_indices])?;
                let Some(d) = self.storage.device() else {
                    return unreachable_storage();
                };
                let rows = RowsAddr {
                    k: kb.addr(),
                    ks,
                    v: vb.addr(),
                    vs,
                };
                // SAFETY: pages validated against the pool; outputs sized for `len` rows.
                unsafe { kv_copy::launch_gather(d, &cfg, indptr, indices, b, len, rows) }
            }
            (RowsMut::Host(kh), RowsMut::Host(vh)) => {
                let Some(HostPages { k: kp, v: vp }) = self.storage.host() else {
                    return unreachable_storage();
                };
                host_rows_out(&cfg, kp, vp, pages, b, len, kh, ks, vh, vs)
            }
            _ => Err(Error::invalid(
                OP,
                "rows",
                "k and v outputs must both be device or both host",
            )),
        }
    }
}
