//! FlashInfer-style append metadata (`batch_indices`, `positions`, page tables), its host-side
//! validation, and the validated form uploaded once for repeated launches.
use super::pool_config::KvPoolConfig;
use super::BatchPages;
use crate::error::{Error, Result};
use crate::runtime::DeviceBuffer;

/// Append metadata validated and uploaded to the device once, for repeated launches (one per
/// layer in a serving step, or a benchmark loop). Only valid for the pool that made it.
pub struct DeviceAppendMeta {
    /// Device addresses of the batch indices, positions, kv_indptr and kv_indices.
    pub(super) addrs: [u64; 4],
    /// The buffer holding it when this value owns it (`upload_append_meta`); `None` when it
    /// lives in a buffer the caller keeps alive and unchanged while the value is in use (the
    /// KV cache's per-step buffer, guarded by its generation check).
    pub(super) _owned: Option<DeviceBuffer<i32>>,
    pub(super) nnz: usize,
    /// Geometry and context the metadata was validated against: any pool with both (every layer
    /// of a cache) may use it.
    pub(super) cfg: KvPoolConfig,
    pub(super) ctx_id: usize,
}

/// Ragged append metadata as FlashInfer's `append_paged_kv_cache` takes it.
#[derive(Clone, Copy, Debug)]
pub struct AppendMeta<'a> {
    /// Batch entry of each new row.
    pub batch_indices: &'a [i32],
    /// Absolute position of each new row (must lie inside its sequence's reserved length).
    pub positions: &'a [i32],
    /// Page tables of the batch.
    pub pages: &'a BatchPages,
}

impl AppendMeta<'_> {
    /// Validates the metadata against a pool of `num_pages` pages of `page_size` rows (for op
    /// `op`): page tables, one position per row, batch indices in range, and every position
    /// inside its entry's reserved length. [`KvPool::validate_meta`] is this for its own
    /// geometry; callers that own the page memory themselves (the Python bindings) call it
    /// directly.
    pub fn validate(&self, op: &'static str, page_size: usize, num_pages: usize) -> Result<()> {
        self.pages.validate(op, page_size, Some(num_pages))?;
        let nnz = self.batch_indices.len();
        if self.positions.len() != nnz {
            return Err(Error::shape(
                op,
                "positions length",
                nnz,
                self.positions.len(),
            ));
        }
        if nnz > i32::MAX as usize {
            return Err(Error::Overflow { op, what: "rows" });
        }
        let b = self.pages.batch_size();
        for (&bi, &pos) in self.batch_indices.iter().zip(self.positions) {
            if bi < 0 || bi as usize >= b {
                return Err(Error::invalid(
                    op,
                    "batch_indices",
                    format!("{bi} not in [0, {b})"),
                ));
            }
            let len = self.pages.kv_len(bi as usize, page_size)?;
            if pos < 0 || pos as usize >= len {
                return Err(Error::invalid(
                    op,
                    "positions",
                    format!("{pos} outside the reserved length {len} of entry {bi}"),
                ));
            }
        }
        Ok(())
    }
}
