//! Fragment maps of fp8 K/V tiles read straight into 16-bit mma operands (the tensor-core
//! decode's fp8 path): which head dim each register half holds when fp8 rows are read with the
//! 16-bit `ldmatrix` and converted in registers, with no 16-bit copy of the tile in shared memory.
//!
//! An fp8 row chunk of 16 bytes is 16 dims. `ldmatrix` sees it as 8 16-bit columns:
//!
//! - **K (B operand of S = Q·Kᵀ, no `.trans`).** Lane `(g, t)` receives the 4 codes of dims
//!   `4t..4t+4` of key `g`. Converted, they are the B registers of one k-step over the chunk's 16
//!   dims with the dims permuted: logical `k` ↦ dim [`qk_dim`]`(k)`, i.e. register 0 (k = 2t,
//!   2t+1) holds dims 4t, 4t+1 and register 1 (k = 2t+8, 2t+9) dims 4t+2, 4t+3. A dot product
//!   does not care about the order of its terms, so Q's A fragment is loaded with the same
//!   permutation ([`qk_dim`] on its columns) and S is exact.
//! - **V (B operand of O = P·V, `.trans`).** Lane `(g, t)` receives the 16-bit pairs `(dims 2g,
//!   2g+1)` of keys 2t and 2t+1. One byte permute (`prmt`) regroups the 4 codes into
//!   `(key 2t, key 2t+1)` of dim 2g and of dim 2g+1, and each pair converts to one B register
//!   (k = the two keys, n = g). So a 16-dim chunk `c` feeds two n-tiles: `2c` holds the even dims,
//!   `2c + 1` the odd ones ([`pv_dim`]); only the output's column order changes.
//!
//! The host model at the bottom ([`qk_emulate`], [`pv_emulate`]) runs these maps through the
//! CPU models of `ldmatrix` and `mma` (`math::frag`), and the unit tests check them against
//! naive products.

/// Head dim (within a 16-dim k-step) of logical column `k` (0..16) of the fp8 K fragment and of
/// the Q A fragment that meets it.
#[inline(always)]
pub const fn qk_dim(k: u32) -> u32 {
    let (hi, kk) = (k / 8, k % 8);
    4 * (kk / 2) + 2 * hi + kk % 2
}

/// Head dim of column `n` (0..8) of output n-tile `nt` of the fp8 P·V product: n-tile `2c + p`
/// holds dims `16c + 2n + p`.
#[inline(always)]
pub const fn pv_dim(nt: u32, n: u32) -> u32 {
    16 * (nt / 2) + 2 * n + nt % 2
}

/// `prmt` selector regrouping a `.trans` V word (bytes: key 2t dim 2g, key 2t dim 2g+1, key
/// 2t+1 dim 2g, key 2t+1 dim 2g+1) into (low half) the two keys of dim 2g and (high half) those
/// of dim 2g+1.
pub const V_PRMT: u32 = 0x3120;

/// `prmt(w, 0, sel)` on the host: byte `i` of the result is byte `sel[4i..4i+3]` of `w` for
/// selector nibbles 0–3 and of the zero second operand for 4–7 (no sign replication).
#[inline(always)]
pub const fn prmt_host(w: u32, sel: u32) -> u32 {
    let mut r = 0;
    let mut i = 0;
    while i < 4 {
        let src = (sel >> (4 * i)) & 7;
        if src < 4 {
            r |= ((w >> (8 * src)) & 0xff) << (8 * i);
        }
        i += 1;
    }
    r
}

#[cfg(not(target_arch = "nvptx64"))]
mod model {
    use super::*;
    use crate::math::frag::{
        ldmatrix_b_x4_trans_src, ldmatrix_bt_x4_src, ldmatrix_emulate, mma_a, mma_m16n8k16_emulate,
        unpack_c,
    };

    /// The 16-bit `ldmatrix.x4` rows that lanes address in a `[16 keys][32 codes]` fp8 tile,
    /// given the (row, 16-bit column) each lane supplies.
    fn rows_of(tile: &[[u8; 32]; 16], src: impl Fn(u32) -> (u32, u32)) -> [[u16; 8]; 32] {
        core::array::from_fn(|lane| {
            let (r, col16) = src(lane as u32);
            core::array::from_fn(|j| {
                let b = 2 * (col16 as usize + j);
                u16::from_le_bytes([tile[r as usize][b], tile[r as usize][b + 1]])
            })
        })
    }

    /// S = Q·Kᵀ for 16 queries × 16 keys over 32 dims (two k-steps) as the fp8 decode computes
    /// it: `ldmatrix.x4` of the codes, `decode` (two codes in a 16-bit word → two 16-bit
    /// elements in a register), Q's A fragments loaded with [`qk_dim`], two mma per n-tile.
    /// Returns S row-major `[query][key]`.
    pub fn qk_emulate(
        q: &[[u16; 32]; 16],
        k: &[[u8; 32]; 16],
        decode: impl Fn(u16) -> u32,
        to_f32: impl Fn(u16) -> f32 + Copy,
    ) -> [[f32; 16]; 16] {
        let regs = ldmatrix_emulate::<4>(&rows_of(k, ldmatrix_bt_x4_src), false);
        let mut s = [[[0f32; 4]; 32]; 2];
        for step in 0..2u32 {
            let qa: [[u32; 4]; 32] = core::array::from_fn(|lane| {
                core::array::from_fn(|reg| {
                    let (row, col) = mma_a(lane as u32, reg as u32, 0);
                    let d = (16 * step + qk_dim(col)) as usize;
                    u32::from(q[row as usize][d]) | (u32::from(q[row as usize][d + 1]) << 16)
                })
            });
            for (nt, sn) in s.iter_mut().enumerate() {
                // Registers 2nt + step: n-tile nt, chunk `step` (see ldmatrix_bt_x4_src).
                let b: [[u32; 2]; 32] = core::array::from_fn(|lane| {
                    let w = regs[lane][2 * nt + step as usize];
                    [decode(w as u16), decode((w >> 16) as u16)]
                });
                *sn = mma_m16n8k16_emulate(&qa, &b, sn, to_f32);
            }
        }
        let (s0, s1) = (unpack_c(&s[0]), unpack_c(&s[1]));
        core::array::from_fn(|r| {
            core::array::from_fn(|c| if c < 8 { s0[r][c] } else { s1[r][c - 8] })
        })
    }

    /// O = P·V for 16 queries × 16 keys × 32 dims as the fp8 decode computes it:
    /// `ldmatrix.x4.trans` of the codes, [`V_PRMT`], `decode`, four n-tiles laid out by
    /// [`pv_dim`]. `p` holds 16-bit P (row-major `[query][key]`). Returns O `[query][dim]`.
    pub fn pv_emulate(
        p: &[[u16; 16]; 16],
        v: &[[u8; 32]; 16],
        decode: impl Fn(u16) -> u32,
        to_f32: impl Fn(u16) -> f32 + Copy,
    ) -> [[f32; 32]; 16] {
        let regs = ldmatrix_emulate::<4>(&rows_of(v, ldmatrix_b_x4_trans_src), true);
        let pa: [[u32; 4]; 32] = core::array::from_fn(|lane| {
            core::array::from_fn(|reg| {
                let (row, col) = mma_a(lane as u32, reg as u32, 0);
                u32::from(p[row as usize][col as usize])
                    | (u32::from(p[row as usize][col as usize + 1]) << 16)
            })
        });
        let mut o = [[0f32; 32]; 16];
        for c in 0..2usize {
            // Registers 2c (keys 0..8) and 2c + 1 (keys 8..16) of chunk c.
            let words: [[u32; 2]; 32] = core::array::from_fn(|lane| {
                let (a, b) = (regs[lane][2 * c], regs[lane][2 * c + 1]);
                [prmt_host(a, V_PRMT), prmt_host(b, V_PRMT)]
            });
            for par in 0..2usize {
                let b: [[u32; 2]; 32] = core::array::from_fn(|lane| {
                    let w = words[lane];
                    [
                        decode((w[0] >> (16 * par)) as u16),
                        decode((w[1] >> (16 * par)) as u16),
                    ]
                });
                let d = unpack_c(&mma_m16n8k16_emulate(&pa, &b, &[[0.0; 4]; 32], to_f32));
                let nt = (2 * c + par) as u32;
                for (r, row) in d.iter().enumerate() {
                    for (n, &x) in row.iter().enumerate() {
                        o[r][pv_dim(nt, n as u32) as usize] = x;
                    }
                }
            }
        }
        o
    }
}

#[cfg(not(target_arch = "nvptx64"))]
pub use model::{pv_emulate, qk_emulate};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::fp8::{E4m3, E5m2, Fp8Format};
    use half::{bf16, f16};

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    /// Each k-step's permutation is a bijection of 0..16 that keeps register pairs adjacent.
    #[test]
    fn qk_dim_is_a_pairwise_permutation() {
        let mut seen = [false; 16];
        for k in 0..16 {
            let d = qk_dim(k) as usize;
            assert!(!seen[d], "dim {d} twice");
            seen[d] = true;
            if k % 2 == 1 {
                assert_eq!(qk_dim(k), qk_dim(k - 1) + 1);
            }
        }
        // Registers 0 and 2 of an A fragment (cols 2t.. and 2t+8..) are 4 consecutive dims.
        for t in 0..4 {
            assert_eq!([qk_dim(2 * t), qk_dim(2 * t + 8)], [4 * t, 4 * t + 2]);
        }
    }

    #[test]
    fn pv_dim_covers_each_chunk_once() {
        let mut seen = [false; 32];
        for nt in 0..4 {
            for n in 0..8 {
                let d = pv_dim(nt, n) as usize;
                assert!(!seen[d]);
                seen[d] = true;
            }
        }
        // The lane's accumulators of n-tiles 2c, 2c+1 (cols 2tq, 2tq+1) are 4 consecutive dims.
        for tq in 0..4 {
            let dims = [
                pv_dim(0, 2 * tq),
                pv_dim(1, 2 * tq),
                pv_dim(0, 2 * tq + 1),
                pv_dim(1, 2 * tq + 1),
            ];
            assert_eq!(dims, [4 * tq, 4 * tq + 1, 4 * tq + 2, 4 * tq + 3]);
        }
    }

    /// The fp8 output pairs (`attn::tc_kv`, `Codes::o_pair`): pair `2c + h` of lane `tq` is
    /// dims `16c + 4tq + 2h` (n-tile `2c`'s element) and `+ 1` (n-tile `2c + 1`'s), as
    /// [`pv_dim`] places them; over the quad every dim of a chunk once.
    #[test]
    fn output_pairs_follow_pv_dim() {
        let mut seen = [false; 32];
        for tq in 0..4u32 {
            for i in 0..4u32 {
                let (c, h) = (i / 2, i % 2);
                let dim = 16 * c + 4 * tq + 2 * h;
                // Element 2hh + h of n-tile 2c is column 2tq + h.
                assert_eq!(pv_dim(2 * c, 2 * tq + h), dim);
                assert_eq!(pv_dim(2 * c + 1, 2 * tq + h), dim + 1);
                for d in [dim, dim + 1] {
                    assert!(!seen[d as usize]);
                    seen[d as usize] = true;
                }
            }
        }
    }

    /// Every e5m2 code, permuted into the high byte of a 16-bit lane, is the f16 of its value
    /// (NaN codes NaN, infinities infinite).
    #[test]
    fn e5m2_codes_are_f16_high_bytes() {
        use crate::math::fp8::E5M2_TO_F16_PRMT;
        for w in (0u32..256).map(|c| c * 0x0101_0101) {
            let c = w as u8;
            let want = E5m2::decode(c);
            for sel in E5M2_TO_F16_PRMT {
                let r = prmt_host(w, sel);
                for h in [r as u16, (r >> 16) as u16] {
                    let got = f16::from_bits(h).to_f32();
                    assert!(
                        got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                        "code {c:#04x}: {got} vs {want}"
                    );
                }
            }
        }
        // Byte placement: codes 0, 1 → lanes of the first register, 2, 3 → the second.
        let w = 0x4433_2211;
        assert_eq!(prmt_host(w, E5M2_TO_F16_PRMT[0]), 0x2200_1100);
        assert_eq!(prmt_host(w, E5M2_TO_F16_PRMT[1]), 0x4400_3300);
    }

    #[test]
    fn prmt_regroups_keys_per_dim() {
        // bytes: (k0,d0)=0xA0, (k0,d1)=0xA1, (k1,d0)=0xB0, (k1,d1)=0xB1
        let w = 0xB1B0_A1A0;
        assert_eq!(prmt_host(w, V_PRMT), 0xB1A1_B0A0);
    }

    /// Two codes (low byte first) decoded to a 16-bit pair by `to16` (exact for fp8 values).
    fn pair<F: Fp8Format>(w: u16, to16: impl Fn(f32) -> u16) -> u32 {
        let lo = to16(F::decode(w as u8)) as u32;
        let hi = to16(F::decode((w >> 8) as u8)) as u32;
        lo | (hi << 16)
    }

    /// Finite codes only (the maps are checked here, not NaN propagation).
    fn code<F: Fp8Format>(rng: &mut Rng) -> u8 {
        loop {
            let c = rng.next() as u8;
            if F::decode(c).is_finite() {
                return c;
            }
        }
    }

    fn check_qk<F: Fp8Format>(seed: u64) {
        let mut rng = Rng(seed);
        let q: [[u16; 32]; 16] = core::array::from_fn(|_| {
            core::array::from_fn(|_| {
                bf16::from_f32(((rng.next() % 2001) as f32 - 1000.0) / 256.0).to_bits()
            })
        });
        let k: [[u8; 32]; 16] =
            core::array::from_fn(|_| core::array::from_fn(|_| code::<F>(&mut rng)));
        let s = qk_emulate(
            &q,
            &k,
            |w| pair::<F>(w, |x| bf16::from_f32(x).to_bits()),
            |b| bf16::from_bits(b).to_f32(),
        );
        for i in 0..16 {
            for j in 0..16 {
                let terms =
                    (0..32).map(|d| bf16::from_bits(q[i][d]).to_f64() * F::decode(k[j][d]) as f64);
                let (want, mag) = terms.fold((0.0, 0.0), |(s, m), x| (s + x, m + x.abs()));
                // The two k-steps meet in the f32 accumulator (one rounding between them): a
                // wrong dim would be off by a whole term, not by an f32 rounding of the sum.
                let tol = mag * 2f64.powi(-22);
                assert!(
                    (s[i][j] as f64 - want).abs() <= tol,
                    "S[{i}][{j}] {} vs {want}",
                    s[i][j]
                );
            }
        }
    }

    fn check_pv<F: Fp8Format>(seed: u64) {
        let mut rng = Rng(seed);
        let p: [[u16; 16]; 16] = core::array::from_fn(|_| {
            core::array::from_fn(|_| f16::from_f32((rng.next() % 1025) as f32 / 1024.0).to_bits())
        });
        let v: [[u8; 32]; 16] =
            core::array::from_fn(|_| core::array::from_fn(|_| code::<F>(&mut rng)));
        let o = pv_emulate(
            &p,
            &v,
            |w| pair::<F>(w, |x| f16::from_f32(x).to_bits()),
            |b| f16::from_bits(b).to_f32(),
        );
        for i in 0..16 {
            for d in 0..32 {
                let want: f64 = (0..16)
                    .map(|t| f16::from_bits(p[i][t]).to_f64() * F::decode(v[t][d]) as f64)
                    .sum();
                assert_eq!(o[i][d], want as f32, "O[{i}][{d}]");
            }
        }
    }

    #[test]
    fn fp8_k_fragments_give_q_dot_k() {
        for seed in 1..6 {
            check_qk::<E4m3>(seed);
            check_qk::<E5m2>(seed + 100);
        }
    }

    #[test]
    fn fp8_v_fragments_give_p_times_v() {
        for seed in 1..6 {
            check_pv::<E4m3>(seed);
            check_pv::<E5m2>(seed + 100);
        }
    }
}
