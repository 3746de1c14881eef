//! The persistent form of the Hopper prefill (`prefill_hopper.rs`): one CTA per SM runs a list of
//! work units — (query tile, KV chunk, KV head) — that the host's scheduler (`plan::units`)
//! assigned to it, longest first, instead of one CTA per unit. The producer warpgroup runs one
//! unit ahead: the next unit's first K/V tile and its Q tile load while the consumers finish
//! the current one, so a unit's start-up (Q and the first tile's latency) and its epilogue
//! overlap other work. The K/V stage ring, its barriers and the pingpong turns run on across
//! units; Q has its own pair of barriers (`q_full` when a unit's Q landed, `q_empty` when the
//! consumers' score products of the unit are done).
//!
//! Each consumer step is the merged kernel's (`attn::hopper::step`); what differs is around it: the
//! unit loop, a ring position carried across units (kept warp-uniform, see [`Ring`]), and a
//! branch-free epilogue. Per step it is a few per cent slower than the merged kernel (measured,
//! docs/perf-notes.md), so the host picks it only where start-up dominates: short items
//! (`ops::batch_prefill::persistent_auto`). More registers go to the producer than in the
//! merged kernel (56 / 224 per thread: its unit state spilled at 40).
use crate::abi::{PrefillParams, PrefillRequest};
use crate::arch::opaque::opaque_u32;
use crate::arch::{global, mbarrier, pipeline, shared, thread, warp, wgmma};
use crate::attn::hopper::load::{copy_q, load_kv};
use crate::attn::hopper::ring::{stage_v, Barriers, MapsAddr, Ring};
use crate::attn::hopper::step::{kv_loop, Acc, TileCtx};
use crate::attn::hopper::{hopper_entries, WgmmaElem, CONSUMER_WARPS, PINGPONG_BAR, ROWS, TILE};
use crate::attn::kv::{KvRows, Paged, Ragged};
use crate::attn::logits::Logits;
use crate::attn::mask::{Mask, QueryTile};
use crate::attn::work::{cta_kv_head, cta_work, load_item};
use crate::config::prefill_hopper as cfg;
use crate::dtype::{Bf16, F16};
use crate::math::fast::{log2, rcp};
use crate::math::wgmma_layout::ROW_BYTES;

/// A CTA's work units: with persistent units (`PrefillParams::units`) the CTA's slice of the
/// planner's list, run in order; otherwise the one unit of the grid `(num_kv_heads, items)`.
#[derive(Clone, Copy)]
struct Units {
    begin: u32,
    end: u32,
}

impl Units {
    /// # Safety
    /// As the kernel's contract (`units` holds `grid.x + 1` offsets when set).
    #[inline(always)]
    unsafe fn of_cta(p: &PrefillParams) -> Self {
        if p.units == 0 {
            return Self { begin: 0, end: 1 };
        }
        let at = p.units + 4 * thread::block_idx_x() as u64;
        // SAFETY: offsets c and c + 1 exist (host contract).
        unsafe {
            Self {
                begin: global::ld_u32(at),
                end: global::ld_u32(at + 4),
            }
        }
    }

    /// Unit `k` of the CTA as (KV head, work index).
    ///
    /// # Safety
    /// `begin ≤ k < end`.
    #[inline(always)]
    unsafe fn get(p: &PrefillParams, k: u32) -> (u32, u32) {
        if p.units == 0 {
            return (cta_kv_head(), cta_work());
        }
        // `(work, kv_head)` pairs after the offsets (no division here: a run-time `div` in
        // the kernel made ptxas serialise every `wgmma`, docs/perf-notes.md).
        let at = p.units + 4 * (thread::grid_dim_x() + 1) as u64 + 8 * k as u64;
        // SAFETY: unit k is listed (host contract).
        unsafe { (global::ld_u32(at + 4), global::ld_u32(at)) }
    }
}

/// One unit's query tile and key range (both roles derive it from the same tables).
#[derive(Clone, Copy)]
struct Unit {
    /// Query tile: first token (relative to the request), packed rows.
    t0: u32,
    rows_total: u32,
    /// Positions of the tile's first and last query tokens.
    pos_first: u32,
    pos_last: u32,
    /// Keys the tile reads, `[kv_begin, kv_end)` (natural range ∩ the item's chunk), in
    /// `tiles` K/V tiles.
    kv_begin: u32,
    kv_end: u32,
    tiles: u32,
}

impl Unit {
    /// # Safety
    /// As [`load_item`].
    #[inline(always)]
    unsafe fn load<Mk: Mask>(p: &PrefillParams, work: u32) -> Option<(PrefillRequest, Self)> {
        // SAFETY: forwarded contract.
        let (req, item) = unsafe { load_item(p, work) }?;
        let qt = QueryTile::<Mk>::new(p, &req, &item);
        // At least one tile: an empty range (never planned, but possible in principle) runs one
        // fully masked tile, so every unit has the same shape of pipeline (see `consume_unit`).
        let tiles = if qt.kv_end > qt.kv_begin {
            (qt.kv_end - qt.kv_begin).div_ceil(TILE)
        } else {
            1
        };
        Some((
            req,
            Self {
                t0: qt.t0,
                rows_total: qt.tokens * p.group.d,
                pos_first: qt.pos_first,
                pos_last: qt.pos_last,
                kv_begin: qt.kv_begin,
                kv_end: qt.kv_end,
                tiles,
            },
        ))
    }
}

/// The producer warpgroup: for each of the CTA's units, in order, copies the unit's first K/V
/// tile, then its Q tile (once the consumers have released the previous unit's Q), then the
/// remaining K/V tiles, into the stage ring; it waits on a stage's "empty" barrier before
/// refilling it, and each stage's "full" barrier (Q's: `q_full`) gets the producers' 128
/// arrivals when their copies have landed (TMA forms: thread 0's `expect_tx` arrival and the
/// tile's bytes, [`load_kv`]). The ring runs on across units, so the next unit's
/// first tiles and Q load while the consumers finish the current one (persistent CTAs).
/// Producer thread `i` copies 16-byte chunk `i % (D/8)` of rows `i / (D/8) + k · 128/(D/8)`:
/// rows 8 or 16 apart share `row % 8`, so one swizzled offset serves all of them.
///
/// # Safety
/// As the kernel's contract; called by the third warpgroup only, after the barriers were
/// initialised.
#[inline(always)]
unsafe fn produce<R: KvRows, Mk: Mask, M: MapsAddr, const D: u32>(
    p: &PrefillParams,
    pid: u32,
    q_smem: u32,
    bars: Barriers,
    maps: M,
) {
    let kv_smem = q_smem + ROWS * D * 2;
    if pid == 0 {
        maps.prefetch();
    }
    let mut n = 0; // K/V tiles issued by this CTA so far (the ring position)
                   // SAFETY: as the kernel's contract.
    let mut k = unsafe { Units::of_cta(p) }.begin;
    loop {
        // Reloaded per unit (cached), so that no register holds them across the unit.
        // SAFETY: as the kernel's contract.
        let units = unsafe { Units::of_cta(p) };
        if k >= units.end {
            break;
        }
        // SAFETY: k is one of the CTA's units.
        let (kvh, work) = unsafe { Units::get(p, k) };
        // SAFETY: as the kernel's contract (the consumers stop at the same unit).
        let Some((req, u)) = (unsafe { Unit::load::<Mk>(p, work) }) else {
            break;
        };
        // The unit's first K/V tile goes ahead of its Q (it only needs a free stage; Q waits
        // for the consumers to finish the previous unit's score products).
        if u.tiles > 0 {
            // SAFETY: as the kernel's contract.
            unsafe {
                load_kv::<R, M, D>(
                    p,
                    maps,
                    req.kv_begin,
                    kvh,
                    opaque_u32(u.kv_begin),
                    u.kv_end,
                    n,
                    pid,
                    kv_smem,
                    bars,
                )
            };
            n += 1;
        }
        let it = k - units.begin; // units started before this one (the Q barriers' phase)
        if it > 0 {
            // SAFETY: initialised barrier; the consumers' release of the previous unit's Q.
            unsafe { mbarrier::wait(bars.q_empty(), (it - 1) % 2) };
        }
        // SAFETY: as the kernel's contract.
        unsafe { copy_q::<D>(p, req.qo_begin + u.t0, u.rows_total, kvh, pid, q_smem) };
        // SAFETY: initialised barrier.
        unsafe { mbarrier::cp_async_arrive(bars.q_full()) };
        let mut t = 1;
        while t < u.tiles {
            // SAFETY: as the kernel's contract.
            unsafe {
                load_kv::<R, M, D>(
                    p,
                    maps,
                    req.kv_begin,
                    kvh,
                    opaque_u32(u.kv_begin + t * TILE),
                    u.kv_end,
                    n,
                    pid,
                    kv_smem,
                    bars,
                )
            };
            n += 1;
            t += 1;
        }
        k += 1;
    }
    pipeline::wait_all();
}

/// The kernel body (`ON = D/2` output accumulators per thread, `KS = D/16` k-steps of the score
/// product, both from `attn::traits`; `FOLD`: plain softmax with a positive scale, see
/// `attn::hopper::step`).
///
/// # Safety
/// Block 384, dynamic smem `config::prefill_hopper::smem_bytes(D)`; grid `(num_kv_heads,
/// items)` (single mode: `(num_kv_heads, ceil(qo_len / tile_tokens))`) or, with persistent
/// units, `(ctas)` with `ctas + 1` offsets in `units`; every table and extent the parameters
/// address validated by the host (`qo_len ≤ kv_len` per request).
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
    let q_smem = shared::dyn_smem_base();
    let kv_smem = q_smem + ROWS * D * 2;
    let bars = Barriers::after_ring(kv_smem, D);
    if tid == 0 {
        // SAFETY: nobody uses the barriers before the CTA barrier below.
        unsafe { bars.init(M::ON) };
    }
    thread::sync_threads();
    // Warp-specialised roles, one branch each (what `setmaxnreg` needs): the third warpgroup
    // produces with few registers, the first two consume with the rest.
    if w >= CONSUMER_WARPS {
        wgmma::setmaxnreg_dec::<{ cfg::PERSISTENT_PRODUCER_REGS }>();
        // SAFETY: as the kernel's contract; the barriers are initialised (above).
        unsafe { produce::<R, Mk, M, D>(p, tid - 32 * CONSUMER_WARPS, q_smem, bars, maps) };
        return;
    }
    wgmma::setmaxnreg_inc::<{ cfg::PERSISTENT_CONSUMER_REGS }>();
    // The warpgroup's 64 Q rows: rows 64·wg .. of every column block.
    let q_wg = q_smem + wg * 64 * ROW_BYTES;
    // Turn order: warpgroup 0 issues first (warpgroup 1 gives it the first turn); every step
    // of each ends by handing the turn to the other, across units: both warpgroups run the same
    // steps, so the hand-overs pair up in order.
    if wg == 1 {
        // SAFETY: consumed by warpgroup 0's first turn (or its final wait below).
        unsafe { thread::named_barrier_arrive(PINGPONG_BAR, 256) };
    }
    let mut ring = Ring { stage: 0, phase: 0 }; // position of the next unit's first tile
                                                // SAFETY: as the kernel's contract.
    let units = unsafe { Units::of_cta(p) };
    let mut k = units.begin;
    while k < units.end {
        // SAFETY: k is one of the CTA's units.
        let (kvh, work) = unsafe { Units::get(p, k) };
        // SAFETY: as the kernel's contract.
        let Some((_, u)) = (unsafe { Unit::load::<Mk>(p, work) }) else {
            break;
        };
        // SAFETY: initialised barrier; the producers' Q copies of this unit.
        unsafe { mbarrier::wait(bars.q_full(), (k - units.begin) % 2) };
        // SAFETY: as the kernel's contract; n is the producer's ring position at this unit.
        unsafe {
            consume_unit::<E, Mk, L, D, ON, KS, FOLD>(p, &u, kvh, work, &mut ring, tid, q_wg, bars)
        };
        k += 1;
    }
    if wg == 0 {
        // Takes warpgroup 1's last hand-over (or its first, when there were no tiles): the
        // named barriers end balanced.
        // SAFETY: warpgroup 1 arrives once more than warpgroup 0 waited.
        unsafe { thread::named_barrier_sync(PINGPONG_BAR, 256) };
    }
}

/// One unit on the consumer warpgroups: the KV loop, the release of the Q tile and of the
/// unit's last stages, and the output rows (or split partial states).
///
/// # Safety
/// As the kernel's contract; called by all 256 consumer threads with the same unit, its Q
/// copies landed (`q_full`), `ring` the position of its first tile (advanced past its last).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn consume_unit<
    E: WgmmaElem,
    Mk: Mask,
    L: Logits,
    const D: u32,
    const ON: usize,
    const KS: usize,
    const FOLD: bool,
>(
    p: &PrefillParams,
    u: &Unit,
    kvh: u32,
    work: u32,
    ring: &mut Ring,
    tid: u32,
    q_wg: u32,
    bars: Barriers,
) {
    let lane = tid % 32;
    let mask = Mk::new(p);
    let all_from = mask.all_from(u.pos_last);
    let kv_smem = bars.base - cfg::STAGES * 2 * TILE * D * 2;
    // Warp-uniform to ptxas (see `Ring`): the KV loop's exit then is, and the ring position
    // carried out of it stays in uniform registers.
    let tiles = warp::uniform_u32(u.tiles);
    let kv_begin = u.kv_begin;
    let t = TileCtx::<Mk, L>::new(p, mask, u.kv_end, u.pos_first, u.rows_total, tid);
    let masked =
        |j: u32| mask.tile_masked(kv_begin + j * TILE, TILE, u.kv_end, u.pos_first, all_from);
    let mut acc = Acc::<ON>::new();
    // SAFETY: as the kernel's contract.
    unsafe {
        kv_loop::<E, Mk, L, D, ON, KS, FOLD>(
            &t, kv_begin, tiles, masked, ring, &mut acc, tid, q_wg, kv_smem,
        )
    };
    let last = Ring::before(ring.stage);
    // Unconditional: on every path out of the loop nothing may stay in flight (ptxas cannot
    // tell that `tiles > 0` below holds whenever the loop ran, and otherwise serialises every
    // `wgmma` of the kernel).
    wgmma::wait_group::<0>();
    if lane == 0 {
        // Every score product of the unit is done: the producers may load the next Q; and
        // P·V of the second-to-last tile: its stage may be refilled.
        // SAFETY: initialised barriers; each tile's stage is released exactly once.
        unsafe {
            mbarrier::arrive(bars.q_empty());
            if tiles >= 2 {
                mbarrier::arrive(bars.empty(Ring::before(last)));
            }
        }
    }
    // `Acc::last_pv` written out: called here, ptxas spilled this kernel (272-288 bytes of
    // stack at D = 128, docs/decisions.md).
    // SAFETY: warpgroup-convergent; V of the last tile is in its stage (every unit has one).
    {
        acc.settle::<E>();
        wgmma::fence();
        // SAFETY: warpgroup-convergent; V of the last tile is in its stage.
        unsafe {
            crate::attn::hopper::issue_pv::<E, ON>(&mut acc.o, &acc.pa, stage_v(kv_smem, last, D))
        };
        wgmma::commit_group();
        wgmma::wait_group::<0>();
        wgmma::fence_operands(&mut acc.o);
        if lane == 0 {
            // SAFETY: as above.
            unsafe { mbarrier::arrive(bars.empty(last)) };
        }
    }
    let g = p.group.d;
    let Acc { mut o, mut st, .. } = acc;
    // SAFETY: as above (the same unit as at the start; reloaded instead of kept live).
    let Some((req, item)) = (unsafe { load_item(p, work) }) else {
        return;
    };
    let t0 = item.t0;
    let rows_total = u.rows_total;
    // The output addresses derive from the lane through an opaque move: otherwise LLVM hoists
    // their lane-only parts out of the unit loop, dozens of registers live across it.
    let lane = crate::arch::opaque::opaque_u32(tid % 32);
    let (gq, tq, row0) = (lane / 4, lane % 4, (tid / 32) * 16);
    st.reduce_quad();
    // Straight-line from here (rows past the tile are predicated stores, not branches): with
    // branches around the stores the unit loop kept O and the addresses live across them, and
    // ptxas spilled and serialised the `wgmma`s.
    let mut inv = [0.0f32; 2];
    let mut lse = [f32::NEG_INFINITY; 2];
    for hh in 0..2 {
        let (m, d) = (st.m[hh], st.d[hh]);
        if d > 0.0 {
            inv[hh] = rcp(d);
            lse[hh] = m + log2(d);
        }
    }
    // Normalised in place; a unit that saw no key writes zeros (d = 0, inv = 0).
    for (i, x) in o.iter_mut().enumerate() {
        *x *= inv[(i % 4) / 2];
    }
    for hh in 0..2 {
        let r = row0 + gq + 8 * hh as u32;
        let live = r < rows_total;
        let (t, h) = p.group.divmod(r);
        let hq = kvh * g + h;
        let pair = |nt: usize| (o[4 * nt + 2 * hh], o[4 * nt + 2 * hh + 1]);
        if item.part != u32::MAX {
            // Split-KV: normalised partial state of this chunk, merged by `merge_f32_*`.
            let slot = item.part + t * item.nchunks + item.chunk;
            let obase = ((slot * p.num_qo_heads + hq) as u64) * D as u64;
            for nt in 0..ON / 4 {
                let col = (nt as u32 * 8 + 2 * tq) as u64;
                let (x, y) = pair(nt);
                // SAFETY: slot < the plan's slot count for live rows (host contract).
                unsafe {
                    global::st_f32_if(p.part_o + (obase + col) * 4, x, live);
                    global::st_f32_if(p.part_o + (obase + col + 1) * 4, y, live);
                }
            }
            // SAFETY: as above.
            unsafe {
                global::st_f32_if(
                    p.part_lse + ((slot * p.num_qo_heads + hq) as u64) * 4,
                    lse[hh],
                    live & (tq == 0),
                )
            };
        } else {
            let tok = (req.qo_begin + t0 + t) as u64;
            let obase = tok * (p.o_stride_n as u64) + (hq * p.o_stride_h) as u64;
            for nt in 0..ON / 4 {
                let col = nt as u32 * 8 + 2 * tq;
                let (x, y) = pair(nt);
                // SAFETY: host-validated o extent for live rows; 4-byte aligned (col even).
                unsafe { global::st_u32_if(p.o + (obase + col as u64) * 2, E::pack2(x, y), live) };
            }
            // SAFETY: lse [tokens, Hq].
            unsafe {
                global::st_f32_if(
                    p.lse + (tok * p.num_qo_heads as u64 + hq as u64) * 4,
                    lse[hh],
                    live & (tq == 0) & (p.lse != 0),
                )
            };
        }
    }
}

hopper_entries! {
    prefill, "persistent Hopper";
    prefill_ragged_f16_d64_hp => Ragged, F16, 64, cp_async;
    prefill_ragged_f16_d128_hp => Ragged, F16, 128, cp_async;
    prefill_ragged_bf16_d64_hp => Ragged, Bf16, 64, cp_async;
    prefill_ragged_bf16_d128_hp => Ragged, Bf16, 128, cp_async;
    prefill_ragged_f16_d64_hpt => Ragged, F16, 64, tma;
    prefill_ragged_f16_d128_hpt => Ragged, F16, 128, tma;
    prefill_ragged_bf16_d64_hpt => Ragged, Bf16, 64, tma;
    prefill_ragged_bf16_d128_hpt => Ragged, Bf16, 128, tma;
    prefill_paged_f16_d64_hp => Paged, F16, 64, cp_async;
    prefill_paged_f16_d128_hp => Paged, F16, 128, cp_async;
    prefill_paged_bf16_d64_hp => Paged, Bf16, 64, cp_async;
    prefill_paged_bf16_d128_hp => Paged, Bf16, 128, cp_async;
}
