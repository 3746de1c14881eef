//! K/V rows by layout ([`KvRows`]: packed ragged tensors, [`Ragged`], or the paged pool,
//! [`Paged`]) and the `cp.async` tile copies of the prefill ring ([`copy_tile`]). The
//! tensor-core decode's ring is `attn::tc_kv`; the Hopper copy paths (`cp.async` by a producer
//! warpgroup, TMA) are in `attn::hopper::load`.
use crate::abi::PrefillParams;
use crate::arch::opaque::opaque_u32;
use crate::arch::{global, pipeline, warp};
use crate::attn::swizzle::{swz, swz_codes};
use crate::config::prefill::{stage_bytes, TILE};

/// Where a request's K/V rows live: packed ragged tensors or the paged pool.
pub(crate) trait KvRows {
    /// Whether a row's address takes a dependent load (the page table). Tile copies then look
    /// each row up once, in one lane, and hand it to the lanes that copy it by shuffles, instead
    /// of a load per row and copying thread (see `attn::hopper::load::copy_kv`).
    const LOOKUP: bool;

    /// Byte addresses of K and V of key `t` of the request whose KV starts at `kv_begin`
    /// (ragged: token offset; paged: page-list offset), head `kvh`, element 0, in tensors of
    /// `bytes`-byte elements (2, or 1 for fp8 codes).
    ///
    /// # Safety
    /// `t` must be a key of the request; the host validated the tables.
    unsafe fn row(p: &PrefillParams, kv_begin: u32, t: u32, kvh: u32, bytes: u64) -> (u64, u64);

    /// Bytes between the K rows and between the V rows of consecutive keys of 16-bit K/V
    /// (ragged; the `LOOKUP` layouts have no fixed step). Used by the Hopper producer only
    /// (sm_90a images).
    #[cfg_attr(not(target_feature = "sm_90a"), allow(dead_code))]
    fn key_step(p: &PrefillParams) -> (u64, u64);

    /// Byte offset of key `t`'s K row from `p.k` (elements of `bytes` bytes); for the `LOOKUP`
    /// layouts also that of its V row from `p.v` (one geometry for both pools).
    ///
    /// # Safety
    /// As [`KvRows::row`].
    unsafe fn offset(p: &PrefillParams, kv_begin: u32, t: u32, kvh: u32, bytes: u64) -> u64;
}

/// Packed (ragged) K/V: token `kv_begin + t` of `k`/`v` with their strides.
pub(crate) struct Ragged;

impl KvRows for Ragged {
    const LOOKUP: bool = false;

    #[inline(always)]
    unsafe fn row(p: &PrefillParams, kv_begin: u32, t: u32, kvh: u32, bytes: u64) -> (u64, u64) {
        let n = (kv_begin + t) as u64;
        (
            p.k + (n * p.k_stride_n as u64 + (kvh * p.k_stride_h) as u64) * bytes,
            p.v + (n * p.v_stride_n as u64 + (kvh * p.v_stride_h) as u64) * bytes,
        )
    }

    #[inline(always)]
    fn key_step(p: &PrefillParams) -> (u64, u64) {
        (p.k_stride_n as u64 * 2, p.v_stride_n as u64 * 2)
    }

    #[inline(always)]
    unsafe fn offset(p: &PrefillParams, kv_begin: u32, t: u32, kvh: u32, bytes: u64) -> u64 {
        ((kv_begin + t) as u64 * p.k_stride_n as u64 + (kvh * p.k_stride_h) as u64) * bytes
    }
}

/// Paged K/V: entry `t % page_size` of page `kv_indices[kv_begin + t / page_size]`.
pub(crate) struct Paged;

impl KvRows for Paged {
    const LOOKUP: bool = true;

    #[inline(always)]
    unsafe fn row(p: &PrefillParams, kv_begin: u32, t: u32, kvh: u32, bytes: u64) -> (u64, u64) {
        // SAFETY: forwarded contract.
        let off = unsafe { Self::offset(p, kv_begin, t, kvh, bytes) };
        (p.k + off, p.v + off)
    }

    #[inline(always)]
    fn key_step(_: &PrefillParams) -> (u64, u64) {
        (0, 0)
    }

    #[inline(always)]
    unsafe fn offset(p: &PrefillParams, kv_begin: u32, t: u32, kvh: u32, bytes: u64) -> u64 {
        let (slot, entry) = p.page_size.divmod(t);
        // SAFETY: slot < the request's page count (host-validated tables).
        let page = unsafe { global::ld_u32(p.kv_indices + ((kv_begin + slot) as u64) * 4) } as u64;
        // The K and V pools of a cache share one geometry (`KvPool`), so one element offset
        // serves both (the host passes equal K and V strides; fewer live registers per row).
        (page * p.k_stride_page + (entry * p.k_stride_n + kvh * p.k_stride_h) as u64) * bytes
    }
}

/// Issues the `cp.async` copies (one commit group) of the prefill ring's K/V keys
/// `[base, base + TILE)` (zero-filled past `end`) into stage `s`, for K/V of `bytes`-byte
/// elements (2, or 1 for fp8 codes: rows of `D` bytes in the code layout, `swz_codes`).
/// Thread `tid` copies 16-byte chunk `tid % chunks` of rows `tid / chunks + i · threads /
/// chunks` (`chunks = D·bytes/16`); `dst` is its first chunk's swizzled offset ([`tile_dst`]:
/// the swizzle only depends on the row modulo a period that divides the row step), so each row
/// costs one add.
///
/// # Safety
/// As the kernel's contract.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) unsafe fn copy_tile<R: KvRows, const D: u32>(
    p: &PrefillParams,
    threads: u32,
    kv_off: u32,
    kvh: u32,
    base: u32,
    end: u32,
    s: u32,
    tid: u32,
    dst: u32,
    smem: u32,
    bytes: u32,
) {
    let chunks = D * bytes / 16;
    let step = threads / chunks;
    let k_base = smem + s * stage_bytes(D, bytes) + dst;
    let v_base = k_base + TILE * D * bytes;
    let (r0, c) = (tid / chunks, tid % chunks);
    // Opaque: otherwise LLVM turns every row's global address into its own 64-bit induction
    // variable across the KV loop (two per row: up to 32 registers held for the whole loop).
    let base = opaque_u32(base);
    // Paged (`R::LOOKUP`): the warp's rows are `r0 + i·step` for its lanes' `r0`, i.e. rows
    // `32w/chunks + h + i·step` (h = lane / chunks < per_pass); lane `i·per_pass + h` looks
    // row (h, i) up, one page-table load per lane and tile, and the copying lanes take the
    // offset by a shuffle (a load per row and thread stalled the copies on the loads).
    let per_pass = 32 / chunks;
    let (w, lane) = (tid / 32, tid % 32);
    let mut own = 0u64;
    if R::LOOKUP {
        let key = base + w * per_pass + lane % per_pass + step * (lane / per_pass);
        if lane < per_pass * (TILE / step) && key < end {
            // SAFETY: a key of the request (key < end ≤ kv_len).
            own = unsafe { R::offset(p, kv_off, key, kvh, bytes as u64) };
        }
    }
    // Opaque: the per-pass source lanes stay inside the KV loop (not 8–16 hoisted registers).
    let h = opaque_u32(lane / chunks);
    for i in 0..(TILE / step) {
        let t = base + r0 + i * step;
        let valid = t < end;
        let (mut ka, mut va) = (p.k, p.v);
        if R::LOOKUP {
            let off = warp::shfl_idx_u64(own, i * per_pass + h);
            if valid {
                ka = p.k + off + (c * 16) as u64;
                va = p.v + off + (c * 16) as u64;
            }
        } else if valid {
            // SAFETY: t is a key of the request (t < end ≤ kv_len).
            let (k, v) = unsafe { R::row(p, kv_off, t, kvh, bytes as u64) };
            ka = k + (c * 16) as u64;
            va = v + (c * 16) as u64;
        }
        // Rows `step` apart share their swizzle (one precomputed offset) when `step` is a
        // multiple of 8 rows (16-bit; fp8: 8 lines of 128 bytes, the same for D = 64 and 128
        // here); otherwise (16-bit D = 256: 4 rows per pass) each row is swizzled on its own.
        let row = if step % 8 == 0 {
            i * step * D * bytes
        } else {
            swz::<D>(r0 + i * step, c).wrapping_sub(dst)
        };
        // SAFETY: destinations inside the stage; sources valid rows, or not read (zero-fill).
        unsafe {
            pipeline::cp_async_cg_16_or_zero(k_base + row, ka, !valid);
            pipeline::cp_async_cg_16_or_zero(v_base + row, va, !valid);
        }
    }
    pipeline::commit_group();
}

/// This thread's first chunk offset in a stage of [`copy_tile`] (`dst`): row `tid / chunks`,
/// chunk `tid % chunks`, swizzled for `bytes`-byte elements.
#[inline(always)]
pub(crate) fn tile_dst<const D: u32>(tid: u32, bytes: u32) -> u32 {
    let chunks = D * bytes / 16;
    if bytes == 1 {
        swz_codes::<D>(tid / chunks, tid % chunks)
    } else {
        swz::<D>(tid / chunks, tid % chunks)
    }
}
