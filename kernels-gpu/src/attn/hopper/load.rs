//! The Hopper prefill's copy paths into the stage ring: the Q tile ([`copy_q`], `cp.async`) and
//! the K/V tiles ([`load_kv`]: by `cp.async` from all producer threads, [`copy_kv`], ragged or
//! paged; or by TMA box copies that one producer thread issues, [`tma_kv`], ragged only).
use crate::abi::PrefillParams;
use crate::arch::opaque::opaque_u32;
use crate::arch::{mbarrier, pipeline, tma, warp};
use crate::attn::hopper::ring::{stage_k, stage_v, Barriers, MapsAddr};
use crate::attn::hopper::{PRODUCER_THREADS, ROWS, TILE};
use crate::attn::kv::KvRows;
use crate::config::prefill_hopper as cfg;
use crate::math::wgmma_layout::{chunk_offset, ROW_BYTES};

/// Copies a query tile's Q rows into the Q tile: packed row `r` = (token `r / g`, head `r % g`
/// of the KV head's group) from q token `q_row0 + r / g`, zeros past `rows_total`. Producer
/// thread `pid` copies 16-byte chunk `pid % (D/8)` of rows `pid / (D/8) + k · 128/(D/8)`: rows
/// 8 or 16 apart share `row % 8`, so one swizzled offset serves all of them.
///
/// # Safety
/// As the kernel's contract; the consumers do not read the Q tile.
#[inline(always)]
pub(crate) unsafe fn copy_q<const D: u32>(
    p: &PrefillParams,
    q_row0: u32,
    rows_total: u32,
    kvh: u32,
    pid: u32,
    q_smem: u32,
) {
    let chunks = D / 8;
    let rows_per_pass = PRODUCER_THREADS / chunks;
    let (r0, c) = (pid / chunks, pid % chunks);
    for i in 0..ROWS / rows_per_pass {
        let r = r0 + i * rows_per_pass;
        let live = r < rows_total;
        let src = if live {
            let (t, h) = p.group.divmod(r);
            p.q + (((q_row0 + t) as u64) * (p.q_stride_n as u64)
                + ((kvh * p.group.d + h) * p.q_stride_h + c * 8) as u64)
                * 2
        } else {
            p.q
        };
        // SAFETY: destination inside the Q tile; source a q row or a zero-byte copy.
        unsafe {
            pipeline::cp_async_cg_16(
                q_smem + chunk_offset(ROWS, r, c),
                src,
                if live { 16 } else { 0 },
            )
        };
    }
}

/// Loads the CTA's `n`-th K/V tile, keys `[base, base + TILE)` of the request whose keys start
/// at `req_kv_begin`: with tensor maps producer thread 0 issues it ([`tma_kv`]), otherwise
/// all producer threads copy it ([`copy_kv`]).
///
/// # Safety
/// As the kernel's contract; the barriers are initialised.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) unsafe fn load_kv<R: KvRows, M: MapsAddr, const D: u32>(
    p: &PrefillParams,
    maps: M,
    req_kv_begin: u32,
    kvh: u32,
    base: u32,
    kv_end: u32,
    n: u32,
    pid: u32,
    kv_smem: u32,
    bars: Barriers,
) {
    if M::ON {
        if pid == 0 {
            let maps = maps.addr();
            // SAFETY: forwarded contract.
            unsafe { tma_kv::<D>(maps, req_kv_begin + base, kvh, n, kv_smem, bars) };
        }
    } else {
        // SAFETY: forwarded contract.
        unsafe { copy_kv::<R, D>(p, req_kv_begin, kvh, base, kv_end, n, pid, kv_smem, bars) };
    }
}

/// Loads the CTA's `n`-th K/V tile, ragged rows `[row, row + TILE)` of KV head `kvh`, into its
/// stage with TMA once the stage's previous tile was released: an `expect_tx` arrival for
/// the tile's bytes on the stage's "full" barrier, then one box copy per 64-column block of
/// K and of V (the maps' 128-byte swizzle is `math::wgmma_layout`'s). Rows past the request's
/// keys are read as they are (another request's keys, or zeros past the tensor): the
/// consumers mask them, and finite inputs give `P = 0` there. One thread calls it.
///
/// # Safety
/// As the kernel's contract; `maps` the address of the launch's [`crate::abi::KvTensorMaps`];
/// the stage's "full" barrier initialised with a count of 1.
#[inline(always)]
pub(crate) unsafe fn tma_kv<const D: u32>(
    maps: u64,
    row: u32,
    kvh: u32,
    n: u32,
    kv_smem: u32,
    bars: Barriers,
) {
    let stage = n % cfg::STAGES;
    if n >= cfg::STAGES {
        // SAFETY: initialised barrier; the phase of tile n − STAGES's release.
        unsafe { mbarrier::wait(bars.empty(stage), (n / cfg::STAGES - 1) % 2) };
    }
    let full = bars.full(stage);
    // SAFETY: initialised barrier.
    unsafe { mbarrier::arrive_expect_tx(full, 2 * TILE * D * 2) };
    let (k, v) = (stage_k(kv_smem, stage, D), stage_v(kv_smem, stage, D));
    for b in 0..D / 64 {
        let off = b * TILE * ROW_BYTES;
        // SAFETY: boxes of TILE rows × 128 bytes inside the stage (1024-byte aligned); the
        // barrier's phase expects their bytes (above).
        unsafe {
            tma::load_3d(k + off, maps, b * 64, kvh, row, full);
            tma::load_3d(v + off, maps + 128, b * 64, kvh, row, full);
        }
    }
}

/// Copies the CTA's `n`-th K/V tile, keys `[base, base + TILE)` (zero past `kv_end`), into its
/// stage once the stage's previous tile was released, then arrives on the stage's "full"
/// barrier. Producer warp `w` copies rows `32w .. 32w + 32`, `32 / (D/8)` rows per pass (lane
/// `l`: chunk `l % (D/8)` of row `l / (D/8)` of the pass). With `R::LOOKUP` (paged) lane `l`
/// first resolves row `32w + l` (one page-table load per lane and tile, issued before the
/// wait for the stage), and each pass takes its rows' offsets from their lanes by shuffles:
/// a load per copied row made the copies wait on a chain of page-table loads, ~19 % slower
/// than ragged on long paged prefills (docs/perf-notes.md).
///
/// # Safety
/// As the kernel's contract; the barriers are initialised.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) unsafe fn copy_kv<R: KvRows, const D: u32>(
    p: &PrefillParams,
    req_kv_begin: u32,
    kvh: u32,
    base: u32,
    kv_end: u32,
    n: u32,
    pid: u32,
    kv_smem: u32,
    bars: Barriers,
) {
    let chunks = D / 8;
    let rows_per_pass = 32 / chunks;
    let (w, lane) = (pid / 32, pid % 32);
    let (h, c) = (lane / chunks, lane % chunks);
    let row_w = 32 * w;
    let mut own = 0u64;
    if R::LOOKUP && base + row_w + lane < kv_end {
        // SAFETY: a key of the request (< kv_end ≤ kv_len).
        own = unsafe { R::offset(p, req_kv_begin, base + row_w + lane, kvh, 2) };
    }
    let stage = n % cfg::STAGES;
    if n >= cfg::STAGES {
        // SAFETY: initialised barrier; the phase of tile n − STAGES's release.
        unsafe { mbarrier::wait(bars.empty(stage), (n / cfg::STAGES - 1) % 2) };
    }
    // Row `row_w + i·rows_per_pass + h` has `row % 8 = (i·rows_per_pass) % 8 | h` (row_w is a
    // multiple of 8, h < rows_per_pass, a power of two), so its swizzled chunk is
    // `(c % 8) ^ h ^ (i·rows_per_pass % 8)`: one lane constant and one compile-time one.
    let dst0 = stage_k(kv_smem, stage, D) + (c / 8) * TILE * ROW_BYTES + (row_w + h) * ROW_BYTES;
    // Opaque inside the tile loop: otherwise LLVM hoists the 16 source lanes `r + h` and the
    // swizzled offsets out of it, up to 32 of the producer's 40 registers.
    let cx = opaque_u32((c % 8) ^ h);
    let h_lane = opaque_u32(h);
    // Ragged: the lane's first row, then a fixed step per pass (a multiply-add chain per row
    // cost ~30 instructions, a third of the SM's issue slots next to the consumers').
    let (mut ka, mut va) = (p.k, p.v);
    let (dk, dv) = R::key_step(p);
    if !R::LOOKUP {
        // SAFETY: not `LOOKUP`, so address arithmetic only (rows past kv_end are not read:
        // zero-fill below).
        let (k, v) = unsafe { R::row(p, req_kv_begin, base + row_w + h, kvh, 2) };
        (ka, va) = (k + (c * 16) as u64, v + (c * 16) as u64);
    }
    for i in 0..chunks {
        let r = i * rows_per_pass; // the row's index in the warp's 32, less h
        let valid = base + row_w + r + h < kv_end;
        let (src_k, src_v) = if R::LOOKUP {
            let off = warp::shfl_idx_u64(own, r + h_lane) + (c * 16) as u64;
            (p.k + off, p.v + off)
        } else {
            (ka, va)
        };
        let dst = dst0 + r * ROW_BYTES + (cx ^ (r % 8)) * 16;
        // SAFETY: destinations inside the stage; sources valid rows, or not read (zero-fill).
        unsafe {
            pipeline::cp_async_cg_16_or_zero(dst, src_k, !valid);
            pipeline::cp_async_cg_16_or_zero(dst + TILE * D * 2, src_v, !valid);
        }
        ka += rows_per_pass as u64 * dk;
        va += rows_per_pass as u64 * dv;
    }
    // SAFETY: initialised barrier.
    unsafe { mbarrier::cp_async_arrive(bars.full(stage)) };
}
