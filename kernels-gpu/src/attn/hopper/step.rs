//! The consumers' side of the Hopper prefill, shared by the per-item and the persistent
//! kernels: the warpgroup's accumulators ([`Acc`]), where a step reads ([`Step`]), the per-tile
//! mask and softmax constants ([`TileCtx`]), one step ([`step`]: S = Q·Kᵀ by `wgmma`, logits
//! transform, mask and online softmax on the accumulator registers, the `mma.m16n8k16` C layout
//! of a [`RegTile`], and O += P·V of the previous tile), the KV loop of one query tile
//! ([`kv_loop`]) and the P·V of its last tile ([`Acc::last_pv`]).
use crate::abi::PrefillParams;
use crate::arch::{mbarrier, thread, warp, wgmma};
use crate::attn::hopper::ring::{stage_k, stage_v, Barriers, Ring};
use crate::attn::hopper::{as_flat, issue_pv, issue_scores, WgmmaElem, PINGPONG_BAR, TILE};
use crate::attn::logits::Logits;
use crate::attn::mask::{self, Mask};
use crate::attn::state::RowState;
use crate::attn::tile::RegTile;
use crate::config::prefill_hopper as cfg;
use crate::math::fastdiv::FastDiv;

/// Constants of one query tile's masks and softmax, and the lane's place in it.
pub(crate) struct TileCtx<M: Mask, L: Logits> {
    pub(crate) kv_end: u32,
    pub(crate) pos_first: u32,
    pub(crate) rows_total: u32,
    pub(crate) row0: u32,
    pub(crate) gq: u32,
    pub(crate) tq: u32,
    pub(crate) mask: M,
    pub(crate) logits: L,
    pub(crate) group: FastDiv,
}

impl<M: Mask, L: Logits> TileCtx<M, L> {
    /// The tile of `rows_total` packed rows whose first query is at position `pos_first`, its
    /// keys ending at `kv_end`, as consumer thread `tid` (warp `w` owns rows `16w ..`) sees it.
    #[inline(always)]
    pub(crate) fn new(
        p: &PrefillParams,
        mask: M,
        kv_end: u32,
        pos_first: u32,
        rows_total: u32,
        tid: u32,
    ) -> Self {
        let lane = tid % 32;
        Self {
            kv_end,
            pos_first,
            rows_total,
            row0: (tid / 32) * 16,
            gq: lane / 4,
            tq: lane % 4,
            mask,
            logits: L::new(p.logit),
            group: p.group,
        }
    }
}

/// Running state of a warpgroup's rows across the KV loop.
pub(crate) struct Acc<const ON: usize> {
    /// Output accumulators (the `wgmma` D layout).
    pub(crate) o: [f32; ON],
    /// Running max (base-2 logits) and sum of the lane's two rows.
    pub(crate) st: RowState,
    /// The last tile's probabilities (f32, the score layout) and the factor the output rows
    /// must be rescaled by before its P·V is added.
    pub(crate) s: RegTile<f32, 16>,
    pub(crate) r: [f32; 2],
    /// Probabilities packed as the A operand of P·V.
    pub(crate) pa: [[u32; 4]; 8],
}

impl<const ON: usize> Acc<ON> {
    /// Nothing accumulated yet.
    #[inline(always)]
    pub(crate) fn new() -> Self {
        Self {
            o: [0.0f32; ON],
            st: RowState {
                m: [f32::NEG_INFINITY; 2],
                d: [0.0f32; 2],
            },
            s: RegTile::splat(0.0),
            r: [1.0f32; 2],
            pa: [[0u32; 4]; 8],
        }
    }

    /// Waits for the P·V in flight, rescales O to the last tile's max and packs its
    /// probabilities as the next P·V's A operand.
    #[inline(always)]
    pub(crate) fn settle<E: WgmmaElem>(&mut self) {
        wgmma::wait_group::<0>();
        wgmma::fence_operands(&mut self.o);
        // Once the running max settles (most tiles of a long row) the factor is exactly 1
        // (exp2(0)); the warp skips the 64 multiplies when it is on all its rows.
        if !warp::all(self.r[0] == 1.0 && self.r[1] == 1.0) {
            for (i, x) in self.o.iter_mut().enumerate() {
                *x *= self.r[(i % 4) / 2];
            }
        }
        self.pa = self.s.pack_a::<E, 8>();
    }

    /// After the KV loop: O += P·V of the last tile (V at `v` in shared memory), after the
    /// rescale and packing of its probabilities ([`Acc::settle`]), waited for.
    ///
    /// # Safety
    /// Warpgroup-convergent, nothing in flight; the last tile's V stays at `v` until this
    /// returns.
    #[inline(always)]
    pub(crate) unsafe fn last_pv<E: WgmmaElem>(&mut self, v: u32) {
        self.settle::<E>();
        wgmma::fence();
        // SAFETY: per the contract.
        unsafe { issue_pv::<E, ON>(&mut self.o, &self.pa, v) };
        wgmma::commit_group();
        wgmma::wait_group::<0>();
        wgmma::fence_operands(&mut self.o);
    }
}

/// Where one step of the KV loop reads and which stage it releases.
pub(crate) struct Step {
    /// First key of this step's tile.
    pub(crate) base: u32,
    /// Stage holding this tile and the parity of its "full" phase; stage of the previous tile
    /// (its V feeds this step's P·V).
    pub(crate) stage: u32,
    pub(crate) phase: u32,
    pub(crate) prev_stage: u32,
    /// Stage of the tile two steps back, whose P·V this step waits for (`u32::MAX`: none).
    pub(crate) release: u32,
}

/// Scores of the tile at `base` → probabilities (f32, in place), updating the running max and
/// sum; returns the factor the earlier output rows must be rescaled by. `FOLD` (plain softmax,
/// positive scale): the max of raw scores is the max of logits and the scale goes into the
/// exp2's FFMA; otherwise every score is first turned into its base-2 logit (branch-free, see
/// [`Logits::tile_branchless`]). `MASK`: the tile crosses the chunk end, the first row's causal
/// limit or the last row's window start ([`Mask::tile_masked`]).
#[inline(always)]
fn softmax<M: Mask, L: Logits, const FOLD: bool, const MASK: bool>(
    t: &TileCtx<M, L>,
    s: &mut RegTile<f32, 16>,
    base: u32,
    st: &mut RowState,
) -> [f32; 2] {
    if !FOLD {
        t.logits.tile_branchless(s);
    }
    if MASK {
        let pos = mask::row_positions(t.row0, t.gq, t.rows_total, t.pos_first, t.group);
        mask::apply(&t.mask, s, base, t.kv_end, pos, t.tq);
    }
    let scale = if FOLD { t.logits.scale() } else { 1.0 };
    st.update(s, scale)
}

/// [`step`] with its mask and first-step variants chosen by CTA-uniform branches: each variant
/// is straight-line code (a branch while a `wgmma` is in flight makes ptxas wait for it at the
/// join, which undid the overlap).
///
/// # Safety
/// As [`step`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) unsafe fn step_for<
    E: WgmmaElem,
    M: Mask,
    L: Logits,
    const D: u32,
    const ON: usize,
    const KS: usize,
    const FOLD: bool,
>(
    first: bool,
    masked: bool,
    t: &TileCtx<M, L>,
    st: &Step,
    acc: &mut Acc<ON>,
    tid: u32,
    q_wg: u32,
    kv_smem: u32,
) {
    // SAFETY: forwarded contract.
    unsafe {
        match (first, masked) {
            (true, true) => {
                step::<E, M, L, D, ON, KS, FOLD, true, true>(t, st, acc, tid, q_wg, kv_smem)
            }
            (true, false) => {
                step::<E, M, L, D, ON, KS, FOLD, false, true>(t, st, acc, tid, q_wg, kv_smem)
            }
            (false, true) => {
                step::<E, M, L, D, ON, KS, FOLD, true, false>(t, st, acc, tid, q_wg, kv_smem)
            }
            (false, false) => {
                step::<E, M, L, D, ON, KS, FOLD, false, false>(t, st, acc, tid, q_wg, kv_smem)
            }
        }
    }
}

/// One consumer step of the software pipeline (FA3's intra-warpgroup overlap) for tile j: wait
/// for P_{j−2}·V_{j−2}, rescale O and pack P_{j−1} ([`Acc::settle`]) and release tile j−2's
/// stage to the producer; wait for tile j's copies and make them visible to `wgmma`; issue S_j
/// and P_{j−1}·V_{j−1} back to back; wait for S_j only and run its softmax while P·V runs. The wait for that P·V
/// opens the next step, in the next basic block: within one block ptxas hoisted it above the
/// softmax (seen in the SASS), serialising the two again.
///
/// # Safety
/// As the kernel's contract; every thread of the CTA calls it with the same step.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) unsafe fn step<
    E: WgmmaElem,
    M: Mask,
    L: Logits,
    const D: u32,
    const ON: usize,
    const KS: usize,
    const FOLD: bool,
    const MASK: bool,
    const FIRST: bool,
>(
    t: &TileCtx<M, L>,
    st: &Step,
    acc: &mut Acc<ON>,
    tid: u32,
    q_wg: u32,
    kv_smem: u32,
) {
    let bars = Barriers::after_ring(kv_smem, D);
    if !FIRST {
        acc.settle::<E>();
        if st.release != u32::MAX && tid % 32 == 0 {
            // This warp's P_{j−2}·V_{j−2} is done: the stage of tile j−2 may be refilled.
            // SAFETY: initialised barrier.
            unsafe { mbarrier::arrive(bars.empty(st.release)) };
        }
    }
    // SAFETY: initialised barrier; phase of tile j.
    unsafe { mbarrier::wait(bars.full(st.stage), st.phase) };
    // The copies were written through the generic proxy; `wgmma` reads through the async one.
    wgmma::fence_proxy_async();
    // Pingpong (FA3): the warpgroups take turns issuing their products, so that one's softmax
    // runs while the other's products hold the tensor cores (see `pingpong_*`).
    let wg = tid / 128;
    // SAFETY: both consumer warpgroups run the same steps (the turn protocol's counts match).
    unsafe { thread::named_barrier_sync(PINGPONG_BAR + wg, 256) };
    wgmma::fence();
    // SAFETY: warpgroup-convergent; the tile is in its stage (full barrier above).
    unsafe { issue_scores::<E, KS>(&mut acc.s, q_wg, stage_k(kv_smem, st.stage, D)) };
    wgmma::commit_group();
    if !FIRST {
        // SAFETY: as above; the previous tile's V stays in its stage until released.
        unsafe { issue_pv::<E, ON>(&mut acc.o, &acc.pa, stage_v(kv_smem, st.prev_stage, D)) };
        wgmma::commit_group();
    }
    // SAFETY: as above.
    unsafe { thread::named_barrier_arrive(PINGPONG_BAR + 1 - wg, 256) };
    if FIRST {
        wgmma::wait_group::<0>();
    } else {
        wgmma::wait_group::<1>();
    }
    wgmma::fence_operands(as_flat(&mut acc.s));
    acc.r = softmax::<M, L, FOLD, MASK>(t, &mut acc.s, st.base, &mut acc.st);
    // Pinned here: the exp2 and sums are pure to LLVM, which otherwise sinks them to their
    // first use after the wait (seen in the PTX).
    wgmma::fence_operands(as_flat(&mut acc.s));
    wgmma::fence_operands(&mut acc.st.d);
}

/// Where the KV loop's tiles sit in the stage ring. Two forms, each its kernel's measured best:
/// the per-item kernel (one query tile per CTA, first tile in stage 0) derives stage and phase
/// from the tile index ([`FromIndex`]); the persistent kernel carries a wrapping [`Ring`]
/// position across units (derived from loaded tile counts, the index form left ptxas's uniform
/// datapath). The per-item kernel on the `Ring` form ran 1.5–4 % slower on long ragged items
/// (H100, docs/perf-notes.md, 2026-12-07).
pub(crate) trait StageWalk {
    /// Where step `j` (first key `base`) reads and which stage it releases.
    fn step(&self, base: u32, j: u32) -> Step;
    /// Moves past one tile.
    fn advance(&mut self);
}

impl StageWalk for Ring {
    #[inline(always)]
    fn step(&self, base: u32, j: u32) -> Step {
        let prev_stage = Ring::before(self.stage);
        Step {
            base,
            stage: self.stage,
            phase: self.phase,
            prev_stage,
            release: if j >= 2 {
                Ring::before(prev_stage)
            } else {
                u32::MAX
            },
        }
    }

    #[inline(always)]
    fn advance(&mut self) {
        Ring::advance(self)
    }
}

/// Stage `j % STAGES`, phase `(j / STAGES) % 2`: tile j of a CTA whose first tile is in stage 0.
pub(crate) struct FromIndex;

impl FromIndex {
    /// The stage of the loop's last tile (`tiles ≥ 1`).
    #[inline(always)]
    pub(crate) fn last(tiles: u32) -> u32 {
        (tiles - 1) % cfg::STAGES
    }
}

impl StageWalk for FromIndex {
    #[inline(always)]
    fn step(&self, base: u32, j: u32) -> Step {
        Step {
            base,
            stage: j % cfg::STAGES,
            phase: (j / cfg::STAGES) % 2,
            prev_stage: (j + cfg::STAGES - 1) % cfg::STAGES,
            release: if j >= 2 {
                (j - 2) % cfg::STAGES
            } else {
                u32::MAX
            },
        }
    }

    #[inline(always)]
    fn advance(&mut self) {}
}

/// The consumers' KV loop of one query tile: `tiles` tiles from key `kv_begin`, one [`step`]
/// each (`masked(j)`: tile j needs the mask), at the stages `walk` gives (advanced past the
/// last tile). Each step is straight-line code (its mask and softmax mode are compile-time): a
/// branch while `wgmma` is in flight makes ptxas wait for it at the join, which undid the
/// overlap.
///
/// # Safety
/// As [`step`]; the producer fills the stages in the same order.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) unsafe fn kv_loop<
    E: WgmmaElem,
    M: Mask,
    L: Logits,
    const D: u32,
    const ON: usize,
    const KS: usize,
    const FOLD: bool,
>(
    t: &TileCtx<M, L>,
    kv_begin: u32,
    tiles: u32,
    masked: impl Fn(u32) -> bool,
    walk: &mut impl StageWalk,
    acc: &mut Acc<ON>,
    tid: u32,
    q_wg: u32,
    kv_smem: u32,
) {
    let mut j = 0;
    while j < tiles {
        let st = walk.step(kv_begin + j * TILE, j);
        // SAFETY: forwarded contract.
        unsafe {
            step_for::<E, M, L, D, ON, KS, FOLD>(j == 0, masked(j), t, &st, acc, tid, q_wg, kv_smem)
        };
        walk.advance();
        j += 1;
    }
}
