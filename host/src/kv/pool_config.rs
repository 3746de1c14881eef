//! The geometry of a page pool: page layout, size, and the strides of the contiguous rows that
//! are appended to it or gathered from it.
use ferrinfer_kernels::math::layout::PageStrides;

use crate::checked::{self, I32_LIMIT};
use crate::error::{Error, Result};

const OP: &str = "kv_pool";

/// Page layout (FlashInfer's two): NHD `[page, P, heads, D]` or HND `[page, heads, P, D]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvLayout {
    /// `[page_size, num_kv_heads, head_dim]` per page.
    Nhd,
    /// `[num_kv_heads, page_size, head_dim]` per page.
    Hnd,
}

/// How large to make the pool.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PoolSize {
    /// Exactly this many pages.
    Pages(usize),
    /// As many pages as fit in this many bytes (K and V together).
    Bytes(usize),
    /// This fraction of the GPU's currently free memory (GPU pools only).
    FreeMemoryFraction(f64),
}

impl PoolSize {
    /// Pages of `page_bytes` bytes this size asks for (`free_bytes`: the GPU's free memory,
    /// `None` for host pools).
    pub(crate) fn pages(self, page_bytes: usize, free_bytes: Option<usize>) -> Result<usize> {
        // A geometry whose page size saturates is refused by `validate` right after.
        let page_bytes = page_bytes.max(1);
        match self {
            PoolSize::Pages(n) => Ok(n),
            PoolSize::Bytes(b) => Ok(b / page_bytes),
            PoolSize::FreeMemoryFraction(f) => {
                if !(f > 0.0 && f <= 1.0) {
                    return Err(Error::invalid(
                        OP,
                        "free memory fraction",
                        format!("{f} not in (0, 1]"),
                    ));
                }
                let free = free_bytes.ok_or_else(|| {
                    Error::invalid(OP, "pool size", "a free-memory fraction needs a GPU pool")
                })?;
                Ok((free as f64 * f) as usize / page_bytes)
            }
        }
    }
}

/// Geometry of a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvPoolConfig {
    /// Pages in the pool.
    pub num_pages: usize,
    /// Tokens per page.
    pub page_size: usize,
    /// KV heads.
    pub num_kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Page layout.
    pub layout: KvLayout,
}

impl KvPoolConfig {
    /// Elements per page (one of K or V). Saturates at `usize::MAX` for a geometry no pool
    /// accepts (every pool validates it, so a pool's config never saturates).
    pub fn page_elems(&self) -> usize {
        self.page_size
            .saturating_mul(self.num_kv_heads)
            .saturating_mul(self.head_dim)
    }

    /// Bytes of one page of K plus one of V (16-bit elements); saturates like
    /// [`KvPoolConfig::page_elems`].
    pub fn page_bytes(&self) -> usize {
        self.page_elems().saturating_mul(4)
    }

    /// Capacity in tokens (saturates like [`KvPoolConfig::page_elems`]).
    pub fn capacity_tokens(&self) -> usize {
        self.num_pages.saturating_mul(self.page_size)
    }

    /// Elements of one of the K/V pool allocations (`num_pages · page_elems`), checked.
    pub(crate) fn pool_elems(&self) -> Result<usize> {
        checked::product(
            OP,
            "pool size",
            &[
                self.num_pages,
                self.page_size,
                self.num_kv_heads,
                self.head_dim,
            ],
        )
    }

    /// Kernel-side strides (32-bit: [`KvPoolConfig`]s of pools are validated to fit).
    pub fn strides(&self) -> PageStrides {
        let (p, h, d) = (
            self.page_size as u32,
            self.num_kv_heads as u32,
            self.head_dim as u32,
        );
        match self.layout {
            KvLayout::Nhd => PageStrides::nhd(p, h, d),
            KvLayout::Hnd => PageStrides::hnd(p, h, d),
        }
    }

    /// Element offset of `(page, entry, head)`. In range for a pool's config and in-range
    /// arguments; saturates (never wraps) otherwise, so a bad offset fails the slice bounds
    /// check of its user.
    pub fn offset(&self, page: usize, entry: usize, head: usize) -> usize {
        let s = self.strides();
        page.saturating_mul(s.stride_page as usize)
            .saturating_add(entry.saturating_mul(s.stride_n as usize))
            .saturating_add(head.saturating_mul(s.stride_h as usize))
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.page_size == 0 || self.num_kv_heads == 0 || self.num_pages == 0 {
            return Err(Error::invalid(
                OP,
                "config",
                format!("{self:?}: sizes must be positive"),
            ));
        }
        if !matches!(self.head_dim, 64 | 128 | 256) {
            return Err(Error::unsupported(
                OP,
                "head_dim",
                format!("{} (supported: 64, 128, 256)", self.head_dim),
            ));
        }
        // Page ids and rows per page end up in i32 tables; strides are u32 kernel parameters.
        checked::at_most(OP, "num_pages", self.num_pages, I32_LIMIT)?;
        checked::at_most(OP, "page_size", self.page_size, I32_LIMIT)?;
        let page = checked::product(
            OP,
            "page size",
            &[self.page_size, self.num_kv_heads, self.head_dim],
        )?;
        checked::to_u32(OP, "elements per page", page)?;
        // Both pools, in bytes, must be addressable.
        checked::product(OP, "pool bytes", &[self.pool_elems()?, 2, size_of::<u16>()])?;
        Ok(())
    }
}

/// Element strides of contiguous-side K/V rows `[n, heads, head_dim]`: element `(n, h, d)` at
/// `n*stride_n + h*stride_h + d` (a fused QKV projection leaves wider strides).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowStrides {
    /// Between rows (tokens).
    pub stride_n: usize,
    /// Between heads.
    pub stride_h: usize,
}

impl RowStrides {
    /// Dense `[n, heads, head_dim]`.
    pub fn contiguous(num_kv_heads: usize, head_dim: usize) -> Self {
        Self {
            // Saturates for a geometry no pool accepts; such strides fail `check_rows`.
            stride_n: num_kv_heads.saturating_mul(head_dim),
            stride_h: head_dim,
        }
    }
}
