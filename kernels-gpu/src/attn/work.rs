//! Work-item loading: which request, query tile and key range a CTA (or a persistent CTA's
//! unit) works on, read from the plan arrays the host uploaded.
//!
//! Decode (`DecodeParams`): CTA `blockIdx.x` runs work item `i` of the plan — request `b`, its
//! key range `[begin, end)` and the request's items `[first, last)` (the split-KV merge
//! group). Prefill (`PrefillParams`): grid `(num_kv_heads, items)`, a work item is a query tile
//! of a request and a key chunk ([`crate::abi::PrefillItem`]); single-request launches derive
//! it from the launch instead.
use crate::abi::{DecodeParams, PrefillItem, PrefillParams, PrefillRequest};
use crate::arch::{global, thread};

/// Element `i` of a `u32` (`i32`) array in global memory.
///
/// # Safety
/// `i` indexes the array at `base`.
#[inline(always)]
pub(crate) unsafe fn ld_i32(base: u64, i: u32) -> u32 {
    // SAFETY: caller guarantees `i` indexes the array.
    unsafe { global::ld_u32(base + (i as u64) * 4) }
}

/// A CTA's decode work item: its index `item` in the plan, request `b`, its KV range
/// `[begin, end)`, its request's work items `[first, last)` (the split-KV merge group) and
/// page-list start.
pub(crate) struct DecodeWork {
    pub(crate) item: u32,
    pub(crate) b: u32,
    pub(crate) begin: u32,
    pub(crate) end: u32,
    pub(crate) first: u32,
    pub(crate) last: u32,
    pub(crate) page_base: u32,
}

/// Loads the decode work item of CTA `blockIdx.x`, or `None` for a padded CTA of a CUDA-graph
/// grid. The loads are a dependent chain the L2 rarely holds (one per launch), so it is kept to
/// two levels: {counts, work item} → {merge_indptr, kv_indptr}; the work item is read before
/// the bounds check (`i < work_stride` always holds).
///
/// # Safety
/// Grid x = `work_stride`; the plan's arrays as the host uploaded them.
#[inline(always)]
pub(crate) unsafe fn load_decode_work(p: &DecodeParams) -> Option<DecodeWork> {
    let i = thread::block_idx_x();
    let ws = p.work_stride;
    // SAFETY: counts has 2 entries; i < work_stride indexes the work arrays.
    let (num_items, b, begin, end) = unsafe {
        (
            ld_i32(p.counts, 0),
            ld_i32(p.work, i),
            ld_i32(p.work, ws + i),
            ld_i32(p.work, 2 * ws + i),
        )
    };
    if i >= num_items {
        return None;
    }
    // SAFETY: b < batch, so b + 1 indexes merge_indptr / kv_indptr.
    let (first, last, page_base) = unsafe {
        (
            ld_i32(p.merge_indptr, b),
            ld_i32(p.merge_indptr, b + 1),
            ld_i32(p.kv_indptr, b),
        )
    };
    Some(DecodeWork {
        item: i,
        b,
        begin,
        end,
        first,
        last,
        page_base,
    })
}

impl DecodeWork {
    /// Whether the request is split over several work items (partial states, then the merge).
    #[inline(always)]
    pub(crate) fn split(&self) -> bool {
        self.last - self.first > 1
    }
}

/// The prefill CTA's work index: grid `(num_kv_heads, items)`, so the KV heads of one work item
/// are neighbours in launch order and the items' longest-first order holds across the whole
/// grid (with the heads in `y`, the last head's long items would start last). Both indices are
/// special registers, which ptxas rematerialises instead of keeping them live.
#[inline(always)]
pub(crate) fn cta_work() -> u32 {
    thread::block_idx_y()
}

/// The prefill CTA's KV head (see [`cta_work`]).
#[inline(always)]
pub(crate) fn cta_kv_head() -> u32 {
    thread::block_idx_x()
}

/// This prefill CTA's request and work item (single-request mode: derived from the launch), or
/// `None` for a padded CTA of a CUDA-graph grid. Kernels call it again after the KV loop
/// instead of keeping the fields live in registers across it.
///
/// # Safety
/// As the kernel's contract.
#[inline(always)]
pub(crate) unsafe fn load_work(p: &PrefillParams) -> Option<(PrefillRequest, PrefillItem)> {
    // SAFETY: forwarded contract.
    unsafe { load_item(p, cta_work()) }
}

/// Prefill work item `i` and its request (single-request mode: query tile `i` counted from the
/// last), or `None` past the device-side item count (a padded CUDA-graph grid).
///
/// # Safety
/// As the kernel's contract; `i` an item index of the launch (`< grid.y` without persistent
/// units, a listed unit's item with them).
#[inline(always)]
pub(crate) unsafe fn load_item(p: &PrefillParams, i: u32) -> Option<(PrefillRequest, PrefillItem)> {
    Some(if p.items == 0 {
        (
            PrefillRequest {
                qo_begin: 0,
                qo_len: p.qo_len,
                kv_begin: 0,
                kv_len: p.kv_len,
            },
            PrefillItem {
                request: 0,
                // Last tiles first: under the causal mask they see the most keys.
                t0: (p.qo_len.wrapping_sub(1) / p.tile_tokens.max(1))
                    .wrapping_sub(i)
                    .wrapping_mul(p.tile_tokens),
                kv_begin: 0,
                kv_end: u32::MAX,
                part: u32::MAX,
                chunk: 0,
                nchunks: 1,
                pad: 0,
            },
        )
    } else {
        // SAFETY: host-provided count; CUDA-graph grids pad past it (CTA-uniform exit).
        if i >= unsafe { global::ld_u32(p.num_items) } {
            return None;
        }
        // SAFETY: item i and its request exist (host contract); 16-byte aligned arrays.
        let (a, b) = unsafe {
            (
                global::ld_u32x4(p.items + i as u64 * 32),
                global::ld_u32x4(p.items + i as u64 * 32 + 16),
            )
        };
        // SAFETY: as above.
        let r = unsafe { global::ld_u32x4(p.requests + a[0] as u64 * 16) };
        (
            PrefillRequest {
                qo_begin: r[0],
                qo_len: r[1],
                kv_begin: r[2],
                kv_len: r[3],
            },
            PrefillItem {
                request: a[0],
                t0: a[1],
                kv_begin: a[2],
                kv_end: a[3],
                part: b[0],
                chunk: b[1],
                nchunks: b[2],
                pad: 0,
            },
        )
    })
}
