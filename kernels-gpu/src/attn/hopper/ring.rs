//! The Hopper prefill's K/V stage ring in shared memory: where stage `s`'s K and V tiles are,
//! the consumers' position in it ([`Ring`]), the `mbarrier`s that hand stages between producer
//! and consumers ([`Barriers`]), and whether the K/V copies use TMA ([`MapsAddr`]).
use crate::arch::{mbarrier, tma};
use crate::attn::hopper::{CONSUMER_WARPS, PRODUCER_THREADS, TILE};
use crate::config::prefill_hopper as cfg;

/// Shared address of the K tile of stage `s`.
#[inline(always)]
pub(crate) fn stage_k(kv_smem: u32, s: u32, d: u32) -> u32 {
    kv_smem + s * 2 * TILE * d * 2
}

/// Shared address of the V tile of stage `s`.
#[inline(always)]
pub(crate) fn stage_v(kv_smem: u32, s: u32, d: u32) -> u32 {
    stage_k(kv_smem, s, d) + TILE * d * 2
}

/// The consumers' ring position as a wrapping counter: the stage of the next tile and the
/// parity of its "full" phase, advanced by one per tile. Never derived from the tile counts
/// the units load: a stage index computed from loaded data (`(n + j) % 3`, n the sum of the
/// earlier units' tiles) is not warp-uniform to ptxas, which then builds every K/V `wgmma`
/// descriptor in ordinary registers and moves it with `R2UR` before each product (~10 % per
/// step, docs/perf-notes.md); a counter that only ever starts at 0 and steps by one stays on
/// the uniform datapath (the KV loop's other stage walk is `step::FromIndex`).
#[derive(Clone, Copy)]
pub(crate) struct Ring {
    pub(crate) stage: u32,
    pub(crate) phase: u32,
}

impl Ring {
    /// The stage before `s` in ring order.
    #[inline(always)]
    pub(crate) fn before(s: u32) -> u32 {
        if s == 0 {
            cfg::STAGES - 1
        } else {
            s - 1
        }
    }

    /// Moves to the next tile (a select, not a `%`: LLVM cannot fold it back into a function
    /// of the loop count).
    #[inline(always)]
    pub(crate) fn advance(&mut self) {
        if self.stage == cfg::STAGES - 1 {
            self.stage = 0;
            self.phase ^= 1;
        } else {
            self.stage += 1;
        }
    }
}

/// The CTA's `mbarrier`s: `full(s)` completes a phase when the producers' copies of the tile in
/// stage `s` have landed (the CTA's n-th tile: phase n / STAGES); `empty(s)` when all 8
/// consumer warps have finished the last `wgmma` reading it (the P·V of its tile), so it may be
/// refilled; `q_full` when a unit's Q tile has landed, `q_empty` when the consumers' score
/// products of the unit are done (one phase per unit each).
#[derive(Clone, Copy)]
pub(crate) struct Barriers {
    pub(crate) base: u32,
}

impl Barriers {
    /// The barriers' place: right after the K/V ring that starts at `kv_smem` (head dim `d`).
    #[inline(always)]
    pub(crate) fn after_ring(kv_smem: u32, d: u32) -> Self {
        Self {
            base: kv_smem + cfg::STAGES * 2 * TILE * d * 2,
        }
    }

    /// Initialises every barrier (one thread, then a CTA barrier before any use): "full" counts
    /// the producers' 128 `cp.async` arrivals, or with TMA (`tma`) the one `expect_tx`
    /// arrival (the bytes do the rest); `q_full` the producers' Q arrivals; "empty" and
    /// `q_empty` one arrival per consumer warp (`q_empty` is the persistent kernel's only).
    ///
    /// # Safety
    /// `self.base` inside the dynamic shared memory, 8-byte aligned; no thread uses the
    /// barriers before the caller's CTA barrier.
    #[inline(always)]
    pub(crate) unsafe fn init(self, tma: bool) {
        let full = if tma { 1 } else { PRODUCER_THREADS };
        for st in 0..cfg::STAGES {
            // SAFETY: per the contract.
            unsafe {
                mbarrier::init(self.full(st), full);
                mbarrier::init(self.empty(st), CONSUMER_WARPS);
            }
        }
        // SAFETY: per the contract.
        unsafe {
            mbarrier::init(self.q_full(), PRODUCER_THREADS);
            mbarrier::init(self.q_empty(), CONSUMER_WARPS);
        }
        mbarrier::fence_init();
    }

    #[inline(always)]
    pub(crate) fn full(self, s: u32) -> u32 {
        self.base + 8 * s
    }

    #[inline(always)]
    pub(crate) fn empty(self, s: u32) -> u32 {
        self.base + 8 * (cfg::STAGES + s)
    }

    #[inline(always)]
    pub(crate) fn q_full(self) -> u32 {
        self.base + 16 * cfg::STAGES
    }

    #[inline(always)]
    pub(crate) fn q_empty(self) -> u32 {
        self.base + 16 * cfg::STAGES + 8
    }
}

/// Whether a kernel body loads K/V with TMA, and where the launch's tensor maps
/// (`abi::KvTensorMaps`) are. A compile-time choice: the entry point picks the body per launch
/// (a run-time flag inside one body kept both producers' state alive, and the 40-register
/// producer spilled).
pub(crate) trait MapsAddr: Copy {
    /// TMA loads (the maps are set).
    const ON: bool;
    /// Generic address of the K map (the V map follows 128 bytes later); only with `ON`.
    fn addr(self) -> u64;

    /// Brings both maps into the descriptor cache ahead of the first copy (nothing without
    /// `ON`).
    #[inline(always)]
    fn prefetch(self) {
        if Self::ON {
            let maps = self.addr();
            // SAFETY: the launch's tensor maps (host contract of the TMA entries).
            unsafe {
                tma::prefetch_map(maps);
                tma::prefetch_map(maps + 128);
            }
        }
    }
}

/// No tensor maps: the producers copy with `cp.async`.
#[derive(Clone, Copy)]
pub(crate) struct NoMaps;

impl MapsAddr for NoMaps {
    const ON: bool = false;
    #[inline(always)]
    fn addr(self) -> u64 {
        0
    }
}

/// The entry point's tensor-map parameter: `F` is its `cvta.param` (see `arch::tma`),
/// evaluated where a copy is issued, not carried in a register from the entry.
#[derive(Clone, Copy)]
pub(crate) struct ParamMaps<F>(pub(crate) F);

impl<F: Fn() -> u64 + Copy> MapsAddr for ParamMaps<F> {
    const ON: bool = true;
    #[inline(always)]
    fn addr(self) -> u64 {
        (self.0)()
    }
}
