//! The device metadata of a batch-prefill plan: the capacities of its tables ([`Caps`]: the
//! plan's own sizes, or in CUDA-graph mode sizes fixed from [`PrefillGraphLimits`]) and where
//! each table lives in the one uploaded `i32` buffer ([`MetaOffsets`]).
use crate::heads::HeadConfig;
use crate::ops::workspace::MetaLayout;

use super::policy::PrefillTile;

/// Sizes fixed at construction in CUDA-graph mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefillGraphLimits {
    /// Largest batch any plan may have.
    pub max_batch: usize,
    /// Largest total number of query tokens (Σ qo_len).
    pub max_qo_tokens: usize,
    /// Largest page list (Σ pages; paged plans).
    pub max_pages: usize,
    /// Largest custom mask, in packed bytes (`PackedMask::indptr`'s last entry; FlashInfer's
    /// `custom_mask_buf` size); 0: masked plans are refused.
    pub max_mask_bytes: usize,
}

/// Capacities of a plan's buffers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Caps {
    pub items: usize,
    pub batch: usize,
    pub rows: usize,
    pub pages: usize,
    pub slots: usize,
    /// Persistent CTAs (the Hopper tile's unit schedule; 0: none) and their units.
    pub ctas: usize,
    pub units: usize,
    /// Words of packed custom-mask bits (0: no mask region; the mask's `batch + 1` byte
    /// offsets take `batch + 1` more entries before them).
    pub mask_words: usize,
}

/// Offsets (in `i32`s) of a plan's device tables: `[num_items, num_merge_rows, 0, 0 | items
/// 8·ci | requests 4·cb | merge rows 3·cr | page ids cp | persistent CTAs' unit offsets
/// (ctas + 1) and units 2·cu | mask byte offsets cb+1 and bits cm]` (the persistent part only
/// for persistent plans, see [`crate::plan::units`]; the mask part only for masked plans, see
/// [`super::mask`]).
#[derive(Clone, Copy, Debug)]
pub(super) struct MetaOffsets {
    /// Item and merge-row counts (2 used, 4 reserved).
    pub counts: usize,
    pub items: usize,
    pub requests: usize,
    pub rows: usize,
    pub pages: usize,
    pub rope: usize,
    pub units: usize,
    pub mask_indptr: usize,
    pub mask_bits: usize,
    pub len: usize,
}

impl Caps {
    /// Where each table lives.
    pub(super) fn offsets(&self) -> MetaOffsets {
        let mut m = MetaLayout::default();
        let counts = m.region(4);
        let items = m.region(8 * self.items);
        let requests = m.region(4 * self.batch);
        let rows = m.region(3 * self.rows);
        let pages = m.region(self.pages);
        let rope = m.region(self.batch);
        let units = m.region(if self.ctas > 0 {
            self.ctas + 1 + 2 * self.units
        } else {
            0
        });
        // At fixed offsets from the capacities, so a captured launch's mask addresses hold
        // for every later plan.
        let masked = self.mask_words > 0;
        let mask_indptr = m.region(if masked { self.batch + 1 } else { 0 });
        let mask_bits = m.region(self.mask_words);
        MetaOffsets {
            counts,
            items,
            requests,
            rows,
            pages,
            rope,
            units,
            mask_indptr,
            mask_bits,
            len: m.len(),
        }
    }

    /// Capacities in graph mode: enough for any tile (the smallest tile has the most items,
    /// the largest the most partial slots per item). `max_ctas` is the most CTAs any tile
    /// runs at once, `persistent_ctas` the Hopper tile's persistent grid (0: none).
    pub(super) fn graph(
        l: &PrefillGraphLimits,
        heads: &HeadConfig,
        max_ctas: usize,
        persistent_ctas: usize,
    ) -> Caps {
        let g = heads.group();
        let tokens = PrefillTile::ALL.iter().map(|t| t.tokens(g));
        let min_tile = tokens.clone().min().unwrap_or(1);
        let tile = tokens.max().unwrap_or(1);
        let budget = (max_ctas / heads.num_kv_heads).max(1);
        let items = l.max_qo_tokens.div_ceil(min_tile.max(1)) + l.max_batch + budget;
        Caps {
            items,
            batch: l.max_batch,
            rows: l.max_qo_tokens,
            pages: l.max_pages,
            slots: 2 * budget * tile,
            ctas: persistent_ctas,
            units: if persistent_ctas > 0 {
                items * heads.num_kv_heads
            } else {
                0
            },
            mask_words: super::mask::bits_words(l.max_mask_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_regions_follow_the_tables_and_come_from_the_limits() {
        let heads = HeadConfig::new(8, 2, 64).unwrap();
        let limits = |max_mask_bytes| PrefillGraphLimits {
            max_batch: 4,
            max_qo_tokens: 96,
            max_pages: 64,
            max_mask_bytes,
        };
        let plain = Caps::graph(&limits(0), &heads, 264, 0).offsets();
        assert_eq!(plain.mask_indptr, plain.len);
        assert_eq!(plain.mask_bits, plain.len);
        let masked = Caps::graph(&limits(10), &heads, 264, 0).offsets();
        // The other tables keep their places; then 4 + 1 offsets and ⌈10 / 4⌉ words.
        assert_eq!(masked.units, plain.units);
        assert_eq!(masked.mask_indptr, plain.len);
        assert_eq!(masked.mask_bits, plain.len + 5);
        assert_eq!(masked.len, plain.len + 5 + 3);
    }
}
