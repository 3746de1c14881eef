//! The KV append over caller memory (FlashInfer's `append_paged_kv_cache` on a caller's cache):
//! the cache as [`PagedKvSpans`], the new rows and the metadata as spans, validated exactly as
//! the pool path validates ([`AppendMeta::validate`], row strides and extents), launched on the
//! handle's stream with no allocation and no synchronisation.
use ferrinfer_kernels::abi::AppendParams;
use ferrinfer_kernels::math::layout::PageStrides;

use super::CopyKernels;
use crate::dtype::Float16;
use crate::error::{Error, Result};
use crate::kv::{AppendMeta, RowStrides};
use crate::ops::PagedKvSpans;
use crate::runtime::{DeviceSpan, Gpu};

const OP: &str = "append_paged_kv_cache";

/// New K and V rows `[nnz, num_kv_heads, head_dim]` at element strides `ks`/`vs` (head rows
/// contiguous).
#[derive(Clone, Copy, Debug)]
pub struct RowSpans<T> {
    /// K rows.
    pub k: DeviceSpan<T>,
    /// K strides (row, head).
    pub ks: RowStrides,
    /// V rows.
    pub v: DeviceSpan<T>,
    /// V strides (row, head).
    pub vs: RowStrides,
}

/// The append metadata on the device: the same values as the host [`AppendMeta`] the call is
/// validated with (batch index and position per row, the CSR page tables).
#[derive(Clone, Copy, Debug)]
pub struct AppendMetaSpans {
    /// Batch entry of each row.
    pub batch_indices: DeviceSpan<i32>,
    /// Position of each row.
    pub positions: DeviceSpan<i32>,
    /// CSR offsets into `kv_indices`.
    pub kv_indptr: DeviceSpan<i32>,
    /// Page ids.
    pub kv_indices: DeviceSpan<i32>,
}

fn check_rows<T>(
    gpu: &Gpu,
    what: &'static str,
    rows: DeviceSpan<T>,
    s: RowStrides,
    nnz: usize,
    (heads, d): (usize, usize),
) -> Result<()> {
    gpu.check_span(OP, &rows)?;
    if !s.stride_n.is_multiple_of(8)
        || !s.stride_h.is_multiple_of(8)
        || !rows.addr().is_multiple_of(16)
    {
        return Err(Error::invalid(
            OP,
            what,
            format!(
                "address {:#x} and strides ({}, {}) must be 16-byte multiples",
                rows.addr(),
                s.stride_n,
                s.stride_h
            ),
        ));
    }
    // The kernel forms `head · stride_h` in 32 bits.
    let head_span = (heads - 1).checked_mul(s.stride_h);
    if u32::try_from(s.stride_n).is_err() || head_span.is_none_or(|x| x > u32::MAX as usize) {
        return Err(Error::Overflow {
            op: OP,
            what: "row strides",
        });
    }
    if nnz == 0 {
        return Ok(());
    }
    let extent = (nnz - 1)
        .checked_mul(s.stride_n)
        .and_then(|x| x.checked_add(head_span? + d))
        .ok_or(Error::Overflow {
            op: OP,
            what: "row extent",
        })?;
    if extent > rows.len() {
        return Err(Error::shape(
            OP,
            what,
            format!(">= {extent} elements"),
            rows.len(),
        ));
    }
    Ok(())
}

/// Writes `rows` into `cache` at the positions `meta` names (see the module docs). `meta_dev`
/// must hold the same values as `meta`, which is what is validated.
///
/// # Safety
/// Every span must name live device memory of `gpu`'s context until the launch has run;
/// `meta_dev` must equal `meta` element for element (the kernel reads the device copy); the
/// rows must not overlap the cache.
pub unsafe fn append_spans<T: Float16>(
    gpu: &Gpu,
    cache: &PagedKvSpans<T>,
    meta: &AppendMeta<'_>,
    meta_dev: &AppendMetaSpans,
    rows: &RowSpans<T>,
) -> Result<()> {
    let cfg = cache.geometry();
    cfg.validate()?;
    let src = cache.source(OP, gpu)?;
    if cache.k_strides != cache.v_strides {
        return Err(Error::unsupported(
            OP,
            "cache strides",
            format!(
                "K {:?} and V {:?} differ (the append kernel takes one set)",
                cache.k_strides, cache.v_strides
            ),
        ));
    }
    let stride_page = u32::try_from(src.k_stride_page).map_err(|_| Error::Overflow {
        op: OP,
        what: "cache page stride (32-bit in the append kernel)",
    })?;
    meta.validate(OP, cfg.page_size, cfg.num_pages)?;
    let nnz = meta.batch_indices.len();
    let host = [
        (
            "batch_indices",
            meta.batch_indices.len(),
            meta_dev.batch_indices,
        ),
        ("positions", meta.positions.len(), meta_dev.positions),
        ("kv_indptr", meta.pages.kv_indptr.len(), meta_dev.kv_indptr),
        (
            "kv_indices",
            meta.pages.kv_indices.len(),
            meta_dev.kv_indices,
        ),
    ];
    for (what, n, span) in host {
        gpu.check_span(OP, &span)?;
        if span.len() < n {
            return Err(Error::shape(OP, what, format!(">= {n}"), span.len()));
        }
    }
    let hd = (cfg.num_kv_heads, cfg.head_dim);
    check_rows(gpu, "k rows", rows.k, rows.ks, nnz, hd)?;
    check_rows(gpu, "v rows", rows.v, rows.vs, nnz, hd)?;
    if nnz == 0 {
        return Ok(());
    }
    let kernels = CopyKernels::resolve_b16(gpu)?;
    let dims = kernels.dims(gpu, &cfg, nnz, 0)?;
    let p = AppendParams {
        k_rows: rows.k.addr(),
        v_rows: rows.v.addr(),
        k_pool: src.k,
        v_pool: src.v,
        batch_indices: meta_dev.batch_indices.addr(),
        positions: meta_dev.positions.addr(),
        kv_indptr: meta_dev.kv_indptr.addr(),
        kv_indices: meta_dev.kv_indices.addr(),
        nnz: nnz as u32,
        num_heads: cfg.num_kv_heads as u32,
        k_rows_stride_n: rows.ks.stride_n as u32,
        k_rows_stride_h: rows.ks.stride_h as u32,
        v_rows_stride_n: rows.vs.stride_n as u32,
        v_rows_stride_h: rows.vs.stride_h as u32,
        pool: PageStrides {
            stride_page,
            stride_n: src.k_stride_n,
            stride_h: src.k_stride_h,
            page_size: cfg.page_size as u32,
        },
        seq: 0,
        reserved: 0,
    };
    // SAFETY: metadata validated on the host (batch indices, positions inside each entry's
    // reserved pages, page ids below the cache's pages) and equal on the device (caller's
    // contract); cache and rows extents, strides and alignment checked above.
    unsafe { gpu.launch_kernel(&kernels.append, dims, p) }
}
