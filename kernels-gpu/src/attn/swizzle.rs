//! The swizzled shared-memory layout of the `cp.async` + `ldmatrix` kernels (decode on tensor
//! cores, prefill): a `[rows][D]` tile of 16-bit values with 16-byte chunk `c` of row `r`
//! stored at chunk `c ^ (r % 8)`, so the 8 rows of every `ldmatrix` phase hit distinct banks.
//! The Hopper kernels use `math::wgmma_layout` instead. fp8 code tiles (1-byte elements, the
//! tensor-core decode's fp8 ring) use [`swz_codes`].
use crate::math::frag::{ldmatrix_a_x4_src, ldmatrix_b_x4_trans_src, ldmatrix_bt_x4_src};

/// Byte offset of 16-byte chunk `c` of row `r` in a swizzled `[rows][D]` tile.
#[inline(always)]
pub(crate) const fn swz<const D: u32>(r: u32, c: u32) -> u32 {
    r * D * 2 + ((c ^ (r % 8)) * 16)
}

/// Byte offset of 16-byte chunk `c` of row `r` in a swizzled `[rows][D]` tile of 1-byte fp8
/// codes. The tile is cut into 128-byte lines (the bank width), chunk `i` of a line stored at
/// `i ^ (line % 8)`: at `D = 128` a line is a row (the 16-bit layout at 64 elements); at
/// `D = 64` a line holds two rows, and an `ldmatrix` phase's 8 consecutive rows (4 lines, the
/// same chunk) still hit 8 distinct bank groups. Used at D ≤ 128 (larger rows would need the
/// row-based form).
#[inline(always)]
pub(crate) const fn swz_codes<const D: u32>(r: u32, c: u32) -> u32 {
    let l = r * (D / 16) + c;
    let line = l / 8;
    line * 128 + ((l % 8) ^ (line % 8)) * 16
}

/// Per-lane shared-memory offsets of the fragments a warp reads, at k-step (or V n-pair) 0 of
/// 16-row block 0. In the swizzled layout chunk `c` of a row with `row % 8 = y` sits at
/// `16·(c ^ y)`; the fragment of step `i` reads chunks `2i + x` (`x` ∈ {0, 1}), so its offset is
/// `(off ^ 32·(i % 4)) + 128·(i / 4)` and block `b` adds `16·b·D·2`: three registers per lane
/// instead of one per unrolled `ldmatrix` ([`frag_at`]).
#[derive(Clone, Copy)]
pub(crate) struct FragOffsets {
    /// K (`ldmatrix.x4`, Kᵀ as the B operand): row `bn`, chunk `bk/8`.
    pub(crate) k: u32,
    /// V (`ldmatrix.x4.trans`): row `vk`, chunk `vn/8`.
    pub(crate) v: u32,
    /// Q (`ldmatrix.x4`, the A operand) of the warp's first m-tile: row `q_row0 + ar`, chunk
    /// `ac/8`.
    pub(crate) q: u32,
}

impl FragOffsets {
    /// The offsets of lane `lane` of a warp whose first Q row is `q_row0`.
    #[inline(always)]
    pub(crate) fn new<const D: u32>(lane: u32, q_row0: u32) -> Self {
        let (bn, bk) = ldmatrix_bt_x4_src(lane);
        let (vk, vn) = ldmatrix_b_x4_trans_src(lane);
        let (ar, ac) = ldmatrix_a_x4_src(lane);
        Self {
            k: swz::<D>(bn, bk / 8),
            v: swz::<D>(vk, vn / 8),
            q: swz::<D>(q_row0 + ar, ac / 8),
        }
    }
}

/// Address of step `i`'s fragment from `base + off` (`base` a multiple of 256, so the XOR only
/// touches the in-row bits of `off`).
#[inline(always)]
pub(crate) fn frag_at(base_off: u32, i: u32) -> u32 {
    (base_off ^ (32 * (i % 4))) + 128 * (i / 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 16-byte bank group (0..8) of each of an `ldmatrix` phase's 8 rows `r0..r0+8` at
    /// chunk `c` is distinct, and the layout is a bijection on the tile.
    fn conflict_free(at: impl Fn(u32, u32) -> u32, chunks: u32) {
        for r0 in (0..64).step_by(8) {
            for c in 0..chunks {
                let mut seen = [false; 8];
                for r in r0..r0 + 8 {
                    let bank = ((at(r, c) / 16) % 8) as usize;
                    assert!(
                        !seen[bank],
                        "rows {r0}.., chunk {c}: bank group {bank} twice"
                    );
                    seen[bank] = true;
                }
            }
        }
        let mut used = std::collections::HashSet::new();
        for r in 0..64 {
            for c in 0..chunks {
                let a = at(r, c);
                assert!(a < 64 * chunks * 16 && a.is_multiple_of(16));
                assert!(used.insert(a));
            }
        }
    }

    #[test]
    fn layouts_are_conflict_free_bijections() {
        conflict_free(swz::<64>, 8);
        conflict_free(swz::<128>, 16);
        conflict_free(swz_codes::<64>, 4);
        conflict_free(swz_codes::<128>, 8);
        // fp8 rows of 128 codes are the 16-bit layout of 64 elements.
        for r in 0..64 {
            for c in 0..8 {
                assert_eq!(swz_codes::<128>(r, c), swz::<64>(r, c));
            }
        }
    }
}
