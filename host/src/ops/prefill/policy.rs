//! Which prefill kernel a step runs: the CTA tile ([`PrefillTile`], fixed or chosen from the
//! batch's shape by [`PrefillTile::auto`]) and, for the Hopper tile, whether its CTAs are
//! persistent ([`persistent_auto`]). Pure functions of the batch and the device's arch, tested
//! against the measured crossovers (docs/perf-notes.md).
use ferrinfer_kernels::abi::PrefillItem;
use ferrinfer_kernels::config::prefill as cfg;
use ferrinfer_kernels::config::prefill_hopper as hopper_cfg;
use ferrinfer_kernels::kernel_key::PrefillForm;

use crate::error::{Error, Result};
use crate::kernels::Arch;
use crate::options::AttentionOptions;
use crate::plan::units::item_tiles;

/// Shortest KV chunk the planner splits to (keys): shorter chunks cost more in prologue and
/// partial-state traffic than the parallelism gains.
pub const MIN_CHUNK: usize = 2 * cfg::TILE as usize;

/// The CTA tile of the prefill kernels: packed query rows per CTA and how the warps share them.
/// Every variant reads each K/V tile once per CTA; they trade L2 traffic (rows per CTA),
/// shared-memory traffic (rows per warp) and registers. The default is chosen by measurement
/// (docs/perf-notes.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PrefillTile {
    /// 64 rows: 4 warps × 16 rows, Q fragments in registers (the `prefill_*` entries).
    #[default]
    Rows64,
    /// 128 rows: 8 warps × 16 rows, Q fragments in registers (`prefill_*_w8`).
    Rows128,
    /// 128 rows: 4 warps × 32 rows (two m-tiles per warp share every K/V fragment), Q re-read
    /// from shared memory (`prefill_*_m2`).
    Rows128Wide,
    /// 128 rows on Hopper's warpgroup tensor cores: 2 consumer warpgroups × 64 rows and a
    /// producer warpgroup copying K/V, `wgmma` with Q, K and V read from shared memory through
    /// descriptors, 128-key tiles (`prefill_*_h`,
    /// `kernels-gpu/src/prefill_hopper.rs`). Built only into the sm_90a image: compute
    /// capability 9.0, head dims 64 and 128.
    Rows128Wgmma,
}

impl PrefillTile {
    /// Every tile, in `index` order.
    pub const ALL: [PrefillTile; 4] = [
        Self::Rows64,
        Self::Rows128,
        Self::Rows128Wide,
        Self::Rows128Wgmma,
    ];

    pub(crate) fn index(self) -> usize {
        match self {
            Self::Rows64 => 0,
            Self::Rows128 => 1,
            Self::Rows128Wide => 2,
            Self::Rows128Wgmma => 3,
        }
    }

    /// The tile chosen when the op has none fixed, from the batch's shape: `qo_tokens` query
    /// tokens over `batch` requests, each query attending `keys_per_query` keys on average
    /// ([`mean_keys_per_query`]). Below 128 packed query rows per request on average
    /// (`qo_tokens × group < 128 × batch`: short appends) [`PrefillTile::Rows64`], which
    /// leaves fewer rows of a tile empty. Otherwise, on a `wgmma` image at head dims 64 and
    /// 128 with at least [`WGMMA_MIN_KEYS`] keys per query, [`PrefillTile::Rows128Wgmma`]
    /// (its per-CTA start-up costs more, so it needs long KV ranges to win); else at head dim
    /// 128 [`PrefillTile::Rows128Wide`], else [`PrefillTile::Rows64`]. Measured on the H200
    /// (docs/perf-notes.md, session 6): bf16 D 128, group 4: wgmma ahead at 1×4096, 1×16384,
    /// 8×2048, 16×1024 (512 keys per query) and the 8×512/4096 append; D 64 (SmolLM2, group
    /// 3): wgmma ahead at 1×4096, the 64-row tile at 8×512 (256 keys per query).
    pub fn auto(
        qo_tokens: usize,
        batch: usize,
        keys_per_query: usize,
        group: usize,
        head_dim: usize,
        arch: Arch,
    ) -> Self {
        // Saturating: the arguments are the caller's and only compared.
        let long = qo_tokens.saturating_mul(group) >= batch.max(1).saturating_mul(128);
        if long && arch.has_wgmma() && head_dim <= 128 && keys_per_query >= WGMMA_MIN_KEYS {
            Self::Rows128Wgmma
        } else if long && head_dim == 128 {
            Self::Rows128Wide
        } else {
            Self::Rows64
        }
    }

    /// The tiles built for head dim `head_dim` in the image of `arch`: the three `mma.sync`
    /// tiles at 64 and 128 (plus [`PrefillTile::Rows128Wgmma`] on sm_90a), the 64-row tile at
    /// 256 (Q in shared memory, 160 KB of it per CTA).
    pub fn available(head_dim: usize, arch: Arch) -> &'static [PrefillTile] {
        match head_dim {
            256 => &[Self::Rows64],
            _ if arch.has_wgmma() => &Self::ALL,
            _ => &[Self::Rows64, Self::Rows128, Self::Rows128Wide],
        }
    }

    /// `Err(Unsupported)` unless `tile` (when fixed) is built for `head_dim` on `arch`.
    pub(crate) fn check(
        op: &'static str,
        tile: Option<Self>,
        head_dim: usize,
        arch: Arch,
    ) -> Result<()> {
        match tile {
            Some(t) if !Self::available(head_dim, arch).contains(&t) => Err(Error::unsupported(
                op,
                "prefill tile",
                format!("{t:?} at head_dim {head_dim} on {}", arch.name()),
            )),
            _ => Ok(()),
        }
    }

    /// Warps per CTA (the `wgmma` tile: two consumer warpgroups and a producer warpgroup).
    pub fn warps(self) -> u32 {
        match self {
            Self::Rows64 | Self::Rows128Wide => 4,
            Self::Rows128 => 8,
            Self::Rows128Wgmma => hopper_cfg::THREADS / 32,
        }
    }

    /// m-tiles (16 rows each) per warp of the `mma.sync` tiles (the `_m2` entries have two).
    fn m_tiles(self) -> u32 {
        match self {
            Self::Rows128Wide => 2,
            _ => 1,
        }
    }

    /// Packed query rows per CTA.
    pub fn rows(self) -> u32 {
        match self {
            Self::Rows64 => 64,
            Self::Rows128 | Self::Rows128Wide | Self::Rows128Wgmma => 128,
        }
    }

    /// The kernel form of this tile; `persistent` and `tma` select the Hopper tile's
    /// persistent and TMA forms (other tiles have none).
    pub(crate) fn form(self, persistent: bool, tma: bool) -> PrefillForm {
        match self {
            Self::Rows64 => PrefillForm::Rows64,
            Self::Rows128 => PrefillForm::Rows128,
            Self::Rows128Wide => PrefillForm::Rows128Wide,
            Self::Rows128Wgmma => PrefillForm::Hopper { persistent, tma },
        }
    }

    /// Dynamic shared memory of the kernel for head dim `head_dim`; `u32::MAX` (more than
    /// any GPU has) for head dims beyond 256, which no prefill kernel is built for (the
    /// formulas would overflow 32 bits).
    pub fn smem_bytes(self, head_dim: usize) -> u32 {
        if head_dim > 256 {
            return u32::MAX;
        }
        let d = head_dim as u32;
        // The `mma.sync` tiles stage Q in shared memory with two m-tiles per warp and at
        // D = 256 (mirrors `q_in_smem` in kernels-gpu/src/prefill.rs).
        let kv = cfg::smem_bytes(cfg::stages(self.warps(), self.m_tiles(), d), d, 2);
        match self {
            Self::Rows128Wgmma => hopper_cfg::smem_bytes(d),
            Self::Rows128Wide => kv + cfg::q_smem_bytes(self.rows(), d),
            _ if d > 128 => kv + cfg::q_smem_bytes(self.rows(), d),
            _ => kv,
        }
    }

    /// Dynamic shared memory of the tile's fp8 form (the 64-row tile only, head dims 64 and
    /// 128): its K/V ring of 1-byte codes (Q stays in registers).
    pub fn fp8_smem_bytes(self, head_dim: usize) -> u32 {
        let d = head_dim as u32;
        cfg::smem_bytes(cfg::stages(self.warps(), self.m_tiles(), d), d, 1)
    }

    /// Dynamic shared memory of the tile's RoPE form (the 64-row tile only): its K/V ring plus
    /// the Q tile, which the RoPE kernels always stage (mirrors `q_smem_on` in
    /// kernels-gpu/src/prefill.rs).
    pub fn rope_smem_bytes(self, head_dim: usize) -> u32 {
        let d = head_dim as u32;
        let kv = cfg::smem_bytes(cfg::stages(self.warps(), self.m_tiles(), d), d, 2);
        kv + cfg::q_smem_bytes(self.rows(), d)
    }

    /// Query tokens per tile for query group `group`; 0 (no token fits, which the planner
    /// refuses) for group 0 or a group larger than the tile's rows.
    pub fn tokens(self, group: usize) -> usize {
        match u32::try_from(group) {
            Ok(g) if g > 0 => cfg::tile_tokens(self.rows(), g) as usize,
            _ => 0,
        }
    }
}

/// Keys per query from which [`PrefillTile::auto`] picks the `wgmma` tile. Measured on the
/// H200 (session 6, after the producer's copy fixes): 512 keys per query (16 × 1024, D 128)
/// wins (ragged 453.1 vs 493.0 µs for the wide tile, paged 486.4 vs 495.0), 256 (SmolLM2's
/// 8 × 512, D 64) loses to the 64-row tile (28.0 vs 24.2 µs). Before those fixes (session 4,
/// H100) 512 lost.
pub const WGMMA_MIN_KEYS: usize = 512;

/// The mean number of keys a query of the batch attends: `kv_len` without a causal mask,
/// `kv_len − qo_len + i + 1` for query `i` with it, at most `window_left + 1` with a window.
pub fn mean_keys_per_query(qo_lens: &[usize], kv_lens: &[usize], opts: &AttentionOptions) -> usize {
    let mut pairs = 0u128;
    let mut queries = 0u128;
    for (&q, &k) in qo_lens.iter().zip(kv_lens) {
        let (q, k) = (q as u128, k as u128);
        pairs += if opts.causal {
            q * (k - q.min(k)) + q * (q + 1) / 2
        } else {
            q * k
        };
        queries += q;
    }
    let mean = (pairs / queries.max(1)) as usize;
    match opts.window_left {
        Some(w) => mean.min(w + 1),
        None => mean,
    }
}

/// Mean K/V tiles per work item up to which a Hopper-tile plan runs persistent CTAs (the
/// `_hp` kernels): short items are dominated by each CTA's start-up (Q and first tile loads,
/// epilogue), which a persistent CTA's producer hides under the previous unit; long items gain
/// nothing from it and lose to its slightly slower steps. Measured on the H200
/// (docs/perf-notes.md, session 6; persistent vs the merged kernel): ahead at 16 × 1024 (4–5
/// tiles per item: ragged 420.0 vs 453.1 µs, paged 444.2 vs 486.4) and 8 × 2048 (~8.5: 624.6
/// vs 646.5, 686.1 vs 704.3), behind from 1 × 4096 (~16: 268.7 vs 263.1, 291.0 vs 279.0) on.
pub const PERSISTENT_MAX_MEAN_TILES: usize = 12;

/// K/V tiles of the Hopper tile's size over all `items` (their mean length, times their count).
fn hopper_tiles(items: &[PrefillItem]) -> usize {
    let tile = hopper_cfg::TILE as usize;
    items.iter().map(|i| item_tiles(i, tile)).sum()
}

/// Whether a plan of `items` runs persistent CTAs by default ([`PERSISTENT_MAX_MEAN_TILES`]).
pub fn persistent_auto(items: &[PrefillItem]) -> bool {
    !items.is_empty() && hopper_tiles(items) <= PERSISTENT_MAX_MEAN_TILES * items.len()
}

/// Mean K/V tiles per work item above which a Hopper-tile plan over ragged K/V loads its tiles
/// with TMA by default; at or below it, with `cp.async` from the producer warpgroup. Short
/// items spend their time in start-up, where the tensor-map loads do not help and, on the
/// H100, cost: 16 × 1024 (~4.6 tiles per item) persistent `cp.async` 457.3 / 458.0 µs against
/// TMA 492.0 / 491.5 and merged 496.1 / 494.5 against 506.3 / 506.6 (H100, 2026-12-07), level
/// on the H200 (417.4 vs 416.7, session 7); from 8 × 2048 (~8.6) on, TMA is ahead on both
/// cards (H100 627.5 vs 636.3 persistent, 665.5 vs 675.6 merged; H200 −1.5–2 %), and on long
/// items by 3–4 % (docs/perf-notes.md).
pub const TMA_MIN_MEAN_TILES: usize = 6;

/// Whether a Hopper plan of `items` over ragged K/V loads its tiles with TMA by default
/// ([`TMA_MIN_MEAN_TILES`]).
pub fn tma_auto(items: &[PrefillItem]) -> bool {
    hopper_tiles(items) > TMA_MIN_MEAN_TILES * items.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tma_follows_the_measured_crossover() {
        // 16 × 1024 (~4.6 tiles per item) on cp.async; 8 × 2048 (~8.6) and longer on TMA.
        assert!(!tma_auto(&causal_items(16, 1024)));
        assert!(tma_auto(&causal_items(8, 2048)));
        assert!(tma_auto(&causal_items(1, 4096)));
        assert!(!tma_auto(&[]));
    }

    #[test]
    fn keys_per_query_counts_the_visible_pairs() {
        let causal = AttentionOptions {
            causal: true,
            ..Default::default()
        };
        let full = AttentionOptions::default();
        // One square causal request: (1 + … + n) / n = (n + 1) / 2.
        assert_eq!(mean_keys_per_query(&[4096], &[4096], &causal), 2048);
        // An append of 512 over 4096: 3584 earlier keys plus (1 + … + 512) / 512.
        assert_eq!(mean_keys_per_query(&[512], &[4096], &causal), 3584 + 256);
        assert_eq!(mean_keys_per_query(&[512, 512], &[4096, 4096], &full), 4096);
        let win = AttentionOptions {
            window_left: Some(100),
            ..causal
        };
        assert_eq!(mean_keys_per_query(&[4096], &[4096], &win), 101);
        assert_eq!(mean_keys_per_query(&[], &[], &causal), 0);
    }

    /// Causal items of `batch` requests of `len` tokens in 32-token query tiles (the Hopper
    /// tile at group 4), one chunk each: item t ends at its last query's position.
    fn causal_items(batch: usize, len: u32) -> Vec<PrefillItem> {
        (0..batch as u32)
            .flat_map(|r| {
                (0..len / 32).map(move |t| PrefillItem {
                    request: r,
                    t0: 32 * t,
                    kv_begin: 0,
                    kv_end: 32 * t + 32,
                    part: u32::MAX,
                    chunk: 0,
                    nchunks: 1,
                    pad: 0,
                })
            })
            .collect()
    }

    #[test]
    fn persistence_follows_the_measured_crossover() {
        // 16 × 1024 (~4.6 tiles per item) and 8 × 2048 (~8.6) persistent, 1 × 4096 (~16.6)
        // and longer not.
        assert!(persistent_auto(&causal_items(16, 1024)));
        assert!(persistent_auto(&causal_items(8, 2048)));
        assert!(!persistent_auto(&causal_items(1, 4096)));
        assert!(!persistent_auto(&causal_items(1, 16384)));
        assert!(!persistent_auto(&[]));
    }

    #[test]
    fn auto_tile_follows_the_measured_crossovers() {
        let (h, a) = (Arch::Sm90a, Arch::Sm80);
        // bf16 D 128 group 4: 16×1024 (512 keys/query), 8×2048 (1024) and the 8×512/4096
        // append go to wgmma, fewer keys per query to the wide tile; short appends to 64 rows
        // everywhere.
        assert_eq!(
            PrefillTile::auto(16 * 1024, 16, 512, 4, 128, h),
            PrefillTile::Rows128Wgmma
        );
        assert_eq!(
            PrefillTile::auto(16 * 512, 16, 256, 4, 128, h),
            PrefillTile::Rows128Wide
        );
        assert_eq!(
            PrefillTile::auto(8 * 2048, 8, 1024, 4, 128, h),
            PrefillTile::Rows128Wgmma
        );
        assert_eq!(
            PrefillTile::auto(8 * 512, 8, 3840, 4, 128, h),
            PrefillTile::Rows128Wgmma
        );
        assert_eq!(
            PrefillTile::auto(64 * 16, 64, 2040, 4, 128, h),
            PrefillTile::Rows64
        );
        assert_eq!(
            PrefillTile::auto(8 * 2048, 8, 1024, 4, 128, a),
            PrefillTile::Rows128Wide
        );
        // D 64 group 3 (SmolLM2): wgmma for long prompts, 64 rows for 8×512; D 256: 64 rows.
        assert_eq!(
            PrefillTile::auto(4096, 1, 2048, 3, 64, h),
            PrefillTile::Rows128Wgmma
        );
        assert_eq!(
            PrefillTile::auto(8 * 512, 8, 256, 3, 64, h),
            PrefillTile::Rows64
        );
        assert_eq!(
            PrefillTile::auto(4096, 1, 2048, 4, 256, h),
            PrefillTile::Rows64
        );
        for head_dim in [64, 128, 256] {
            for arch in Arch::ALL {
                let t = PrefillTile::auto(4096, 1, 2048, 4, head_dim, arch);
                assert!(PrefillTile::available(head_dim, arch).contains(&t));
            }
        }
    }
}
