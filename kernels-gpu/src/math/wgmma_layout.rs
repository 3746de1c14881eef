//! The shared-memory tile layout the Hopper (`wgmma`) prefill kernel stores Q, K and V in, and
//! its matrix descriptors read: the 128-byte swizzle.
//!
//! A `rows × cols` tile of 16-bit values is split into `cols / 64` column blocks; a block holds
//! `rows` rows of 128 bytes (64 values), and 16-byte chunk `c` of row `r` sits at
//! `16 · (c ^ r % 8)` inside its row, so the 8 rows of a 1024-byte group spread any one column
//! chunk over all 8 bank groups. `wgmma` applies the same XOR to the address bits of what it
//! reads (bits 4–6 with bits 7–9), which is why every block must be 1024-byte aligned.

/// Bytes of one column block's row (64 16-bit values).
pub const ROW_BYTES: u32 = 128;
/// Bytes of one 8-row swizzle group.
pub const GROUP_BYTES: u32 = 8 * ROW_BYTES;

/// Byte offset of 16-byte chunk `c` (values `8c .. 8c + 8`) of row `r` in a tile of `rows` rows.
#[inline(always)]
pub const fn chunk_offset(rows: u32, r: u32, c: u32) -> u32 {
    (c / 8) * rows * ROW_BYTES + r * ROW_BYTES + ((c % 8) ^ (r % 8)) * 16
}

/// Bytes of a `rows × cols` tile.
pub const fn tile_bytes(rows: u32, cols: u32) -> u32 {
    rows * cols * 2
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every chunk of a tile lands on its own 16-byte slot inside the tile, rows of a column
    /// block stay inside their 128-byte row, and the swizzle only permutes chunks within a row.
    #[test]
    fn chunk_offsets_are_a_permutation_within_rows() {
        for (rows, cols) in [(64, 64), (128, 64), (128, 128), (64, 256)] {
            let chunks = cols / 8;
            let mut seen = vec![false; (tile_bytes(rows, cols) / 16) as usize];
            for r in 0..rows {
                for c in 0..chunks {
                    let off = chunk_offset(rows, r, c);
                    assert_eq!(off % 16, 0);
                    let row_start = (c / 8) * rows * ROW_BYTES + r * ROW_BYTES;
                    assert!(off >= row_start && off < row_start + ROW_BYTES);
                    let slot = (off / 16) as usize;
                    assert!(!seen[slot], "rows {rows} cols {cols}: ({r}, {c}) collides");
                    seen[slot] = true;
                }
            }
            assert!(seen.iter().all(|&s| s));
        }
    }

    /// One column chunk read down 8 consecutive rows touches 8 different 16-byte bank groups
    /// (conflict-free `cp.async` stores and what the hardware swizzle expects).
    #[test]
    fn a_column_spreads_over_all_bank_groups() {
        for c in 0..16 {
            let mut groups: Vec<u32> = (0..8).map(|r| (chunk_offset(128, r, c) / 16) % 8).collect();
            groups.sort_unstable();
            assert_eq!(groups, (0..8).collect::<Vec<_>>());
        }
    }

    /// The hardware's view: the swizzled address is the unswizzled one with address bits 4–6
    /// XORed by bits 7–9, given 1024-byte aligned blocks.
    #[test]
    fn matches_the_address_bit_swizzle() {
        for r in 0..128 {
            for c in 0..16 {
                let plain = (c / 8) * 128 * ROW_BYTES + r * ROW_BYTES + (c % 8) * 16;
                let hw = plain ^ (((plain >> 7) & 7) << 4);
                assert_eq!(chunk_offset(128, r, c), hw);
            }
        }
    }
}
