//! Prefill attention on Hopper's warpgroup tensor cores (`wgmma`, sm_90a only), one CTA per
//! work item: the same work items, masks and outputs as `prefill.rs`, with both matrix
//! products issued per warpgroup. The pieces it shares with the persistent form (the stage
//! ring, the copy paths, the consumer step, the entry macro) are `attn::hopper`.
//!
//! CTA = (128 packed query rows, KV head), 384 threads: warpgroup 2 produces ([`produce`]: Q,
//! then every K/V tile of the CTA's range into the 3-stage ring; by `cp.async` from all 128
//! producer threads, or in the ragged entries' TMA forms (`_ht`) by TMA box copies from one
//! thread), with 40 registers after `setmaxnreg`; warpgroups 0 and 1 consume with 232. Each
//! consumer step overlaps the softmax of tile j with P·V of tile j−1 (`attn::hopper::step`),
//! and the consumer warpgroups take turns issuing their products (pingpong), so one's softmax
//! runs under the other's products.
use crate::abi::{PrefillParams, PrefillRequest};
use crate::arch::opaque::opaque_u32;
use crate::arch::{mbarrier, pipeline, shared, thread, wgmma};
use crate::attn::epilogue::TileOut;
use crate::attn::hopper::load::{copy_q, load_kv};
use crate::attn::hopper::ring::{stage_v, Barriers, MapsAddr};
use crate::attn::hopper::step::{kv_loop, Acc, FromIndex, TileCtx};
use crate::attn::hopper::{hopper_entries, WgmmaElem, CONSUMER_WARPS, PINGPONG_BAR, ROWS, TILE};
use crate::attn::kv::{KvRows, Paged, Ragged};
use crate::attn::logits::Logits;
use crate::attn::mask::{Mask, QueryTile};
use crate::attn::work::{cta_kv_head, load_work};
use crate::config::prefill_hopper as cfg;
use crate::dtype::{Bf16, F16};
use crate::math::wgmma_layout::ROW_BYTES;

/// The producer warpgroup: copies the Q tile (completing on `q_full`) and then every K/V tile
/// of the CTA's range into the stage ring, waiting on a stage's "empty" barrier before
/// refilling it (`load_kv`: each stage's "full" barrier gets the producers' 128 `cp.async`
/// arrivals, or with TMA thread 0's `expect_tx` arrival and the tile's bytes; Q: `copy_q`).
///
/// # Safety
/// As the kernel's contract; called by the third warpgroup only, after the barriers were
/// initialised.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn produce<R: KvRows, M: MapsAddr, const D: u32>(
    p: &PrefillParams,
    req: &PrefillRequest,
    t0: u32,
    rows_total: u32,
    kvh: u32,
    kv_begin: u32,
    kv_end: u32,
    tiles: u32,
    pid: u32,
    q_smem: u32,
    kv_smem: u32,
    bars: Barriers,
    maps: M,
) {
    // SAFETY: as the kernel's contract; nothing read the Q tile yet.
    unsafe { copy_q::<D>(p, req.qo_begin + t0, rows_total, kvh, pid, q_smem) };
    // SAFETY: initialised barrier (count: the producer threads).
    unsafe { mbarrier::cp_async_arrive(bars.q_full()) };
    if pid == 0 {
        maps.prefetch();
    }
    // With TMA one thread issues the K/V tiles' box copies.
    let my_tiles = if M::ON && pid != 0 { 0 } else { tiles };
    let mut n = 0;
    while n < my_tiles {
        let base = opaque_u32(kv_begin + n * TILE);
        // SAFETY: as the kernel's contract; the barriers are initialised.
        unsafe {
            load_kv::<R, M, D>(
                p,
                maps,
                req.kv_begin,
                kvh,
                base,
                kv_end,
                n,
                pid,
                kv_smem,
                bars,
            )
        };
        n += 1;
    }
    pipeline::wait_all();
}

/// The kernel body (`ON = D/2` output accumulators per thread, `KS = D/16` k-steps of the score
/// product, both from `attn::traits`; `FOLD`: plain softmax with a positive scale, see
/// `attn::hopper::step`).
///
/// # Safety
/// Grid `(num_kv_heads, items)` (single mode: `(num_kv_heads, ceil(qo_len / tile_tokens))`),
/// block 384, dynamic smem `config::prefill_hopper::smem_bytes(D)`; every table and extent the
/// parameters address validated by the host (`qo_len ≤ kv_len` per request).
#[inline(always)]
unsafe fn prefill<
    R: KvRows,
    E: WgmmaElem,
    Mk: Mask,
    L: Logits,
    const D: u32,
    const ON: usize,
    const KS: usize,
    const FOLD: bool,
    M: MapsAddr,
>(
    p: &PrefillParams,
    maps: M,
) {
    let tid = thread::thread_idx_x();
    let w = tid / 32;
    let wg = w / 4;
    let kvh = cta_kv_head();
    let g = p.group.d;
    // SAFETY: as the kernel's contract.
    let Some((req, item)) = (unsafe { load_work(p) }) else {
        return;
    };
    // The tile's query positions and the keys its rows may see, within the item's chunk.
    let qt = QueryTile::<Mk>::new(p, &req, &item);
    let (t0, mask) = (qt.t0, qt.mask);
    let rows_total = qt.tokens * g; // packed rows: token-major, the group's heads within
    let (kv_begin, kv_end) = (qt.kv_begin, qt.kv_end);
    let q_smem = shared::dyn_smem_base();
    let kv_smem = q_smem + ROWS * D * 2;
    let bars = Barriers::after_ring(kv_smem, D);
    if tid == 0 {
        // SAFETY: nobody uses the barriers before the CTA barrier below.
        unsafe { bars.init(M::ON) };
    }
    thread::sync_threads();
    let tiles = qt.tiles(TILE);
    // Warp-specialised roles, one branch each (what `setmaxnreg` needs): the third warpgroup
    // produces with few registers, the first two consume with the rest.
    if w >= CONSUMER_WARPS {
        wgmma::setmaxnreg_dec::<{ cfg::PRODUCER_REGS }>();
        // SAFETY: as the kernel's contract; the barriers are initialised (above).
        unsafe {
            produce::<R, M, D>(
                p,
                &req,
                t0,
                rows_total,
                kvh,
                kv_begin,
                kv_end,
                tiles,
                tid - 32 * CONSUMER_WARPS,
                q_smem,
                kv_smem,
                bars,
                maps,
            )
        };
        return;
    }
    wgmma::setmaxnreg_inc::<{ cfg::CONSUMER_REGS }>();
    let all_from = qt.all_from();
    // The warpgroup's 64 Q rows: rows 64·wg .. of every column block.
    let q_wg = q_smem + wg * 64 * ROW_BYTES;
    let t = TileCtx::<Mk, L>::new(p, mask, kv_end, qt.pos_first, rows_total, tid);
    let masked = |j: u32| qt.tile_masked(kv_begin + j * TILE, TILE, all_from);
    let mut acc = Acc::<ON>::new();
    // Turn order: warpgroup 0 issues first (warpgroup 1 gives it the first turn); every step
    // of each ends by handing the turn to the other.
    if wg == 1 {
        // SAFETY: consumed by warpgroup 0's first turn (or its final wait below).
        unsafe { thread::named_barrier_arrive(PINGPONG_BAR, 256) };
    }
    // SAFETY: initialised barrier; the producers' Q copies.
    unsafe { mbarrier::wait(bars.q_full(), 0) };
    // SAFETY: as the kernel's contract.
    unsafe {
        kv_loop::<E, Mk, L, D, ON, KS, FOLD>(
            &t,
            kv_begin,
            tiles,
            masked,
            &mut FromIndex,
            &mut acc,
            tid,
            q_wg,
            kv_smem,
        )
    };
    // Unconditional: on every path out of the loop nothing may stay in flight (ptxas cannot
    // tell that `tiles > 0` below holds whenever the loop ran, and otherwise serialises every
    // `wgmma` of the kernel).
    wgmma::wait_group::<0>();
    if wg == 0 {
        // Takes warpgroup 1's last hand-over (or its first, when there were no tiles): the
        // named barriers end balanced.
        // SAFETY: warpgroup 1 arrives once more than warpgroup 0 waited in the loop.
        unsafe { thread::named_barrier_sync(PINGPONG_BAR, 256) };
    }
    if tiles > 0 {
        // SAFETY: warpgroup-convergent; V of the last tile is in its stage.
        unsafe { acc.last_pv::<E>(stage_v(kv_smem, FromIndex::last(tiles), D)) };
    }
    let Acc { o, mut st, .. } = acc;
    pipeline::wait_all();
    // SAFETY: as above (the same work as at the start).
    let Some((req, item)) = (unsafe { load_work(p) }) else {
        return;
    };
    st.reduce_quad();
    let out = TileOut {
        p,
        req: &req,
        item: &item,
        t0,
        rows_total,
        g,
        kvh,
        row: t.row0 + t.gq,
        tq: t.tq,
    };
    // SAFETY: host-validated extents (the kernel's contract).
    unsafe { out.store::<E, D>(&st, ON / 4, |nt, e| o[4 * nt + e]) };
}

hopper_entries! {
    prefill, "Hopper";
    prefill_ragged_f16_d64_h => Ragged, F16, 64, cp_async;
    prefill_ragged_f16_d128_h => Ragged, F16, 128, cp_async;
    prefill_ragged_bf16_d64_h => Ragged, Bf16, 64, cp_async;
    prefill_ragged_bf16_d128_h => Ragged, Bf16, 128, cp_async;
    prefill_ragged_f16_d64_ht => Ragged, F16, 64, tma;
    prefill_ragged_f16_d128_ht => Ragged, F16, 128, tma;
    prefill_ragged_bf16_d64_ht => Ragged, Bf16, 64, tma;
    prefill_ragged_bf16_d128_ht => Ragged, Bf16, 128, tma;
    prefill_paged_f16_d64_h => Paged, F16, 64, cp_async;
    prefill_paged_f16_d128_h => Paged, F16, 128, cp_async;
    prefill_paged_bf16_d64_h => Paged, Bf16, 64, cp_async;
    prefill_paged_bf16_d128_h => Paged, Bf16, 128, cp_async;
}
