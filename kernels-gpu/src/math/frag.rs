//! Fragment layouts of the warp-level matrix instructions as pure index maps: which lane,
//! register and 16-bit half holds which matrix element.
//!
//! The maps are the PTX ISA's documented layouts ("Matrix Fragments for mma.m16n8k16 with
//! floating point type" and "Warp-level matrix load instruction: ldmatrix"). They are `const fn`
//! of `u32`s with constant divisors only, so device code may call them (no panic paths) to
//! compute fragment addresses, and the host uses them to build expected results. The host-only
//! half of the module (`pack_*`, `*_emulate`) is a CPU model of `ldmatrix` and `mma` built from
//! the maps; the unit tests below check the maps against the ISA's own formulas and against a
//! naive matmul, and `tests/intrinsics.rs` checks the GPU against the model.
//!
//! Conventions: lane `l` has group id `g = l / 4` and thread-in-group `t = l % 4`
//! ([`lane_group`]). Registers are `.b32` holding two 16-bit elements; half 0 is the low 16
//! bits, which is also the lower memory address when the register is loaded from memory.
//!
//! | operand                         | element held by (lane, reg, half)                     |
//! |---------------------------------|-------------------------------------------------------|
//! | mma A, 16×16 `.row`             | `(g + 8·(reg & 1), 2t + half + 8·(reg >> 1))`         |
//! | mma B, 16×8 `.col` as `(k, n)`  | `(2t + half + 8·reg, g)`                              |
//! | mma C/D, 16×8 f32, element `i`  | `(g + 8·(i >> 1), 2t + (i & 1))`                      |
//! | ldmatrix m8n8, matrix `reg`     | `(g, 2t + half)`; `.trans`: `(2t + half, g)`          |
//!
//! For `ldmatrix` `.x1/.x2/.x4`, lane `8m + r` supplies the shared address of row `r` (16
//! bytes, 8 elements) of matrix `m`; matrix `m` lands in register `m` of every lane. Without
//! `.trans` "row" and "col" above are those of the matrix as stored (row = the 16 bytes one lane
//! addresses); with `.trans` each lane gets the element of the transposed matrix, i.e. the
//! stored element `(2t + half, g)`.

/// Rows of the mma A, C and D tiles.
pub const MMA_M: u32 = 16;
/// Columns of the mma B, C and D tiles.
pub const MMA_N: u32 = 8;
/// Reduction depth of one `mma.m16n8k16`.
pub const MMA_K: u32 = 16;

/// `(groupID, threadID_in_group) = (lane / 4, lane % 4)` of a lane, as the ISA names them.
#[inline(always)]
pub const fn lane_group(lane: u32) -> (u32, u32) {
    (lane / 4, lane % 4)
}

/// mma A operand (16×16, `.row`): the element `(row, col)` that `lane` (0..32) holds in register
/// `reg` (0..4), half `half` (0 = low 16 bits). Half 1 is always the element right of half 0,
/// so each register is a pair of consecutive elements of a row-major A.
#[inline(always)]
pub const fn mma_a(lane: u32, reg: u32, half: u32) -> (u32, u32) {
    let (g, t) = lane_group(lane);
    (g + 8 * (reg & 1), 2 * t + half + 8 * (reg >> 1))
}

/// Inverse of [`mma_a`]: `(lane, reg, half)` holding A element `(row, col)` (row, col < 16).
#[inline(always)]
pub const fn mma_a_owner(row: u32, col: u32) -> (u32, u32, u32) {
    (
        4 * (row % 8) + (col % 8) / 2,
        row / 8 + 2 * (col / 8),
        col % 2,
    )
}

/// mma B operand (16×8, `.col`): the element `(k, n)` that `lane` holds in register `reg`
/// (0..2), half `half`. Half 1 is `(k + 1, n)`, so each register is a pair of consecutive
/// elements of B stored n-major (`Bᵀ` row-major, 8 rows of 16 `k`).
#[inline(always)]
pub const fn mma_b(lane: u32, reg: u32, half: u32) -> (u32, u32) {
    let (g, t) = lane_group(lane);
    (2 * t + half + 8 * reg, g)
}

/// Inverse of [`mma_b`]: `(lane, reg, half)` holding B element `(k, n)` (k < 16, n < 8).
#[inline(always)]
pub const fn mma_b_owner(k: u32, n: u32) -> (u32, u32, u32) {
    (4 * n + (k % 8) / 2, k / 8, k % 2)
}

/// mma C/D operand (16×8 f32): the element `(row, col)` that `lane` holds in its f32 register
/// `i` (0..4).
#[inline(always)]
pub const fn mma_c(lane: u32, i: u32) -> (u32, u32) {
    let (g, t) = lane_group(lane);
    (g + 8 * (i >> 1), 2 * t + (i & 1))
}

/// Inverse of [`mma_c`]: `(lane, i)` holding C/D element `(row, col)` (row < 16, col < 8).
#[inline(always)]
pub const fn mma_c_owner(row: u32, col: u32) -> (u32, u32) {
    (4 * (row % 8) + col / 2, 2 * (row / 8) + col % 2)
}

/// ldmatrix: the lane that supplies the address of row `row` (0..8) of matrix `matrix` (0..4).
#[inline(always)]
pub const fn ldmatrix_addr_lane(matrix: u32, row: u32) -> u32 {
    8 * matrix + row
}

/// Inverse of [`ldmatrix_addr_lane`]: `(matrix, row)` whose address `lane` supplies. Only lanes
/// with `matrix < X` matter for `.xX` (the others' addresses are ignored on sm_80+).
#[inline(always)]
pub const fn ldmatrix_lane_addr(lane: u32) -> (u32, u32) {
    (lane / 8, lane % 8)
}

/// ldmatrix m8n8 (16-bit elements): the element `(row, col)` of the stored 8×8 matrix `reg`
/// that `lane` receives in half `half` of register `reg`. `trans` selects `.trans`.
#[inline(always)]
pub const fn ldmatrix_elem(lane: u32, half: u32, trans: bool) -> (u32, u32) {
    let (g, t) = lane_group(lane);
    if trans {
        (2 * t + half, g)
    } else {
        (g, 2 * t + half)
    }
}

/// Inverse of [`ldmatrix_elem`]: `(lane, half)` receiving stored element `(row, col)`.
#[inline(always)]
pub const fn ldmatrix_elem_owner(row: u32, col: u32, trans: bool) -> (u32, u32) {
    if trans {
        (4 * col + row / 2, row % 2)
    } else {
        (4 * row + col / 2, col % 2)
    }
}

/// `ldmatrix.x4` (no `.trans`) of a row-major 16×16 A tile straight into the mma A fragment:
/// the `(row, col)` of the tile whose address `lane` supplies (16 bytes from there). Matrices
/// 0..4 are the quadrants (rows 0-7, cols 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15), which
/// are registers `a0..a3` of [`mma_a`].
#[inline(always)]
pub const fn ldmatrix_a_x4_src(lane: u32) -> (u32, u32) {
    (lane % 16, 8 * (lane / 16))
}

/// `ldmatrix.x2` (no `.trans`) of B stored n-major (`Bᵀ` row-major, `[n][k]`, 8×16) into the mma
/// B fragment: the `(n, k)` whose address `lane` supplies. Lanes 16..32 repeat lanes 0..16
/// (their addresses are ignored by `.x2`).
#[inline(always)]
pub const fn ldmatrix_bt_x2_src(lane: u32) -> (u32, u32) {
    (lane % 8, 8 * ((lane / 8) % 2))
}

/// `ldmatrix.x4` (no `.trans`) of two n-tiles of B stored n-major (`[n][k]`, 16×16; e.g. K rows
/// for S = Q·Kᵀ): the `(n, k)` whose address `lane` supplies. Registers 0, 1 are `b0, b1` of
/// n-tile 0 (n 0..8), registers 2, 3 those of n-tile 1 (n 8..16).
#[inline(always)]
pub const fn ldmatrix_bt_x4_src(lane: u32) -> (u32, u32) {
    (lane % 8 + 8 * (lane / 16), 8 * ((lane / 8) % 2))
}

/// `ldmatrix.x2.trans` of B stored k-major (`[k][n]` row-major, 16×8) into the mma B fragment:
/// the `(k, n)` whose address `lane` supplies. Lanes 16..32 repeat lanes 0..16.
#[inline(always)]
pub const fn ldmatrix_b_x2_trans_src(lane: u32) -> (u32, u32) {
    (lane % 16, 0)
}

/// `ldmatrix.x4.trans` of two n-tiles of B stored k-major (`[k][n]`, 16×16; e.g. V rows for
/// O = P·V): the `(k, n)` whose address `lane` supplies. Registers 0, 1 are `b0, b1` of n-tile 0,
/// registers 2, 3 those of n-tile 1.
#[inline(always)]
pub const fn ldmatrix_b_x4_trans_src(lane: u32) -> (u32, u32) {
    (lane % 16, 8 * (lane / 16))
}

/// Packs a row-major 16×16 A (16-bit bit patterns) into the 32 lanes' A fragments.
#[cfg(not(target_arch = "nvptx64"))]
pub fn pack_a(a: &[[u16; 16]; 16]) -> [[u32; 4]; 32] {
    let mut out = [[0u32; 4]; 32];
    for (lane, regs) in out.iter_mut().enumerate() {
        for (reg, r) in regs.iter_mut().enumerate() {
            for half in 0..2u32 {
                let (row, col) = mma_a(lane as u32, reg as u32, half);
                *r |= u32::from(a[row as usize][col as usize]) << (16 * half);
            }
        }
    }
    out
}

/// Packs B given as `b[k][n]` (16×8, 16-bit bit patterns) into the 32 lanes' B fragments.
#[cfg(not(target_arch = "nvptx64"))]
pub fn pack_b(b: &[[u16; 8]; 16]) -> [[u32; 2]; 32] {
    let mut out = [[0u32; 2]; 32];
    for (lane, regs) in out.iter_mut().enumerate() {
        for (reg, r) in regs.iter_mut().enumerate() {
            for half in 0..2u32 {
                let (k, n) = mma_b(lane as u32, reg as u32, half);
                *r |= u32::from(b[k as usize][n as usize]) << (16 * half);
            }
        }
    }
    out
}

/// Packs a row-major 16×8 f32 C into the 32 lanes' C fragments.
#[cfg(not(target_arch = "nvptx64"))]
pub fn pack_c(c: &[[f32; 8]; 16]) -> [[f32; 4]; 32] {
    let mut out = [[0f32; 4]; 32];
    for (lane, regs) in out.iter_mut().enumerate() {
        for (i, r) in regs.iter_mut().enumerate() {
            let (row, col) = mma_c(lane as u32, i as u32);
            *r = c[row as usize][col as usize];
        }
    }
    out
}

/// Inverse of [`pack_c`]: the row-major 16×8 matrix held by the 32 lanes' C/D fragments.
#[cfg(not(target_arch = "nvptx64"))]
pub fn unpack_c(d: &[[f32; 4]; 32]) -> [[f32; 8]; 16] {
    let mut out = [[0f32; 8]; 16];
    for (lane, regs) in d.iter().enumerate() {
        for (i, &v) in regs.iter().enumerate() {
            let (row, col) = mma_c(lane as u32, i as u32);
            out[row as usize][col as usize] = v;
        }
    }
    out
}

/// CPU model of `ldmatrix.sync.aligned.m8n8.x{X}[.trans].shared.b16` (`X` = 1, 2 or 4):
/// `rows[lane]` is the 8-element row stored at the address `lane` supplies; returns each lane's
/// `X` registers.
#[cfg(not(target_arch = "nvptx64"))]
pub fn ldmatrix_emulate<const X: usize>(rows: &[[u16; 8]; 32], trans: bool) -> [[u32; X]; 32] {
    let mut out = [[0u32; X]; 32];
    for (lane, regs) in out.iter_mut().enumerate() {
        for (m, r) in regs.iter_mut().enumerate() {
            for half in 0..2u32 {
                let (row, col) = ldmatrix_elem(lane as u32, half, trans);
                let src = ldmatrix_addr_lane(m as u32, row) as usize;
                *r |= u32::from(rows[src][col as usize]) << (16 * half);
            }
        }
    }
    out
}

/// CPU model of `mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32` on fragments:
/// `to_f32` decodes one 16-bit element. Each `D[r][n] = Σ_k A[r][k]·B[k][n] + C[r][n]` is
/// accumulated in f64 and rounded to f32 once (exact whenever the true sum fits in f32, which
/// the hardware then also returns; otherwise within the hardware's accumulation error).
#[cfg(not(target_arch = "nvptx64"))]
pub fn mma_m16n8k16_emulate(
    a: &[[u32; 4]; 32],
    b: &[[u32; 2]; 32],
    c: &[[f32; 4]; 32],
    to_f32: impl Fn(u16) -> f32,
) -> [[f32; 4]; 32] {
    let half_of = |reg: u32, half: u32| to_f32((reg >> (16 * half)) as u16) as f64;
    let mut am = [[0f64; 16]; 16];
    let mut bm = [[0f64; 8]; 16];
    for lane in 0..32u32 {
        for half in 0..2u32 {
            for reg in 0..4u32 {
                let (row, col) = mma_a(lane, reg, half);
                am[row as usize][col as usize] = half_of(a[lane as usize][reg as usize], half);
            }
            for reg in 0..2u32 {
                let (k, n) = mma_b(lane, reg, half);
                bm[k as usize][n as usize] = half_of(b[lane as usize][reg as usize], half);
            }
        }
    }
    let mut d = [[0f32; 4]; 32];
    for (lane, regs) in d.iter_mut().enumerate() {
        for (i, r) in regs.iter_mut().enumerate() {
            let (row, col) = mma_c(lane as u32, i as u32);
            let mut acc = c[lane][i] as f64;
            for (k, bk) in bm.iter().enumerate() {
                acc += am[row as usize][k] * bk[col as usize];
            }
            *r = acc as f32;
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: deterministic test data without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        /// A bf16 bit pattern of a small integer in [-8, 8] (exact products and sums).
        fn small_bf16(&mut self) -> u16 {
            let v = (self.next() % 17) as i32 - 8;
            bf16_bits(v as f32)
        }
    }

    fn bf16_bits(x: f32) -> u16 {
        // Exact for the small integers used here (no rounding needed).
        (x.to_bits() >> 16) as u16
    }

    fn bf16_to_f32(b: u16) -> f32 {
        f32::from_bits(u32::from(b) << 16)
    }

    /// The ISA's formulas, written per element index as the PTX ISA states them (independent
    /// of the register/half form used by the maps).
    fn isa_a(lane: u32, i: u32) -> (u32, u32) {
        let (group, tig) = (lane >> 2, lane % 4);
        let row = if i < 2 || (4..6).contains(&i) {
            group
        } else {
            group + 8
        };
        let col = if i < 4 {
            tig * 2 + (i & 1)
        } else {
            tig * 2 + (i & 1) + 8
        };
        (row, col)
    }

    fn isa_b(lane: u32, i: u32) -> (u32, u32) {
        let (group, tig) = (lane >> 2, lane % 4);
        let row = if i < 2 {
            tig * 2 + (i & 1)
        } else {
            tig * 2 + (i & 1) + 8
        };
        (row, group)
    }

    fn isa_c(lane: u32, i: u32) -> (u32, u32) {
        let (group, tig) = (lane >> 2, lane % 4);
        let row = if i < 2 { group } else { group + 8 };
        (row, tig * 2 + (i & 1))
    }

    #[test]
    fn maps_match_the_isa_formulas() {
        for lane in 0..32 {
            for i in 0..8 {
                assert_eq!(
                    mma_a(lane, i / 2, i % 2),
                    isa_a(lane, i),
                    "A lane {lane} a{i}"
                );
            }
            for i in 0..4 {
                assert_eq!(
                    mma_b(lane, i / 2, i % 2),
                    isa_b(lane, i),
                    "B lane {lane} b{i}"
                );
                assert_eq!(mma_c(lane, i), isa_c(lane, i), "C lane {lane} c{i}");
            }
            // ldmatrix: "each thread receives row lane/4, elements 2*(lane%4), +1".
            for half in 0..2 {
                assert_eq!(
                    ldmatrix_elem(lane, half, false),
                    (lane / 4, 2 * (lane % 4) + half)
                );
            }
        }
    }

    #[test]
    fn mma_maps_cover_every_element_once() {
        let mut seen_a = [[0u32; 16]; 16];
        let mut seen_b = [[0u32; 8]; 16];
        let mut seen_c = [[0u32; 8]; 16];
        for lane in 0..32 {
            for reg in 0..4 {
                for half in 0..2 {
                    let (r, c) = mma_a(lane, reg, half);
                    seen_a[r as usize][c as usize] += 1;
                    assert_eq!(mma_a_owner(r, c), (lane, reg, half));
                }
            }
            for reg in 0..2 {
                for half in 0..2 {
                    let (k, n) = mma_b(lane, reg, half);
                    seen_b[k as usize][n as usize] += 1;
                    assert_eq!(mma_b_owner(k, n), (lane, reg, half));
                }
            }
            for i in 0..4 {
                let (r, c) = mma_c(lane, i);
                seen_c[r as usize][c as usize] += 1;
                assert_eq!(mma_c_owner(r, c), (lane, i));
            }
        }
        assert!(seen_a.iter().flatten().all(|&n| n == 1));
        assert!(seen_b.iter().flatten().all(|&n| n == 1));
        assert!(seen_c.iter().flatten().all(|&n| n == 1));
        // Owners are inverses the other way round too (so both maps are bijections).
        for r in 0..MMA_M {
            for c in 0..MMA_K {
                let (l, g, h) = mma_a_owner(r, c);
                assert_eq!(mma_a(l, g, h), (r, c));
            }
            for c in 0..MMA_N {
                let (l, i) = mma_c_owner(r, c);
                assert_eq!(mma_c(l, i), (r, c));
            }
        }
        for k in 0..MMA_K {
            for n in 0..MMA_N {
                let (l, g, h) = mma_b_owner(k, n);
                assert_eq!(mma_b(l, g, h), (k, n));
            }
        }
    }

    #[test]
    fn registers_hold_adjacent_pairs() {
        for lane in 0..32 {
            for reg in 0..4 {
                let (r0, c0) = mma_a(lane, reg, 0);
                assert_eq!(mma_a(lane, reg, 1), (r0, c0 + 1));
                assert_eq!(c0 % 2, 0);
            }
            for reg in 0..2 {
                let (k0, n0) = mma_b(lane, reg, 0);
                assert_eq!(mma_b(lane, reg, 1), (k0 + 1, n0));
                assert_eq!(k0 % 2, 0);
            }
            for i in [0, 2] {
                let (r0, c0) = mma_c(lane, i);
                assert_eq!(mma_c(lane, i + 1), (r0, c0 + 1));
            }
        }
    }

    #[test]
    fn ldmatrix_maps_cover_and_trans_is_transpose() {
        for trans in [false, true] {
            let mut seen = [[0u32; 8]; 8];
            for lane in 0..32 {
                for half in 0..2 {
                    let (r, c) = ldmatrix_elem(lane, half, trans);
                    seen[r as usize][c as usize] += 1;
                    assert_eq!(ldmatrix_elem_owner(r, c, trans), (lane, half));
                    let (tr, tc) = ldmatrix_elem(lane, half, !trans);
                    assert_eq!((r, c), (tc, tr), "trans must be the transpose map");
                }
            }
            assert!(seen.iter().flatten().all(|&n| n == 1));
        }
        for lane in 0..32 {
            let (m, r) = ldmatrix_lane_addr(lane);
            assert_eq!(ldmatrix_addr_lane(m, r), lane);
        }
    }

    #[test]
    fn ldmatrix_emulation_trans_transposes_each_matrix() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let mut rows = [[0u16; 8]; 32];
        for row in rows.iter_mut() {
            for e in row.iter_mut() {
                *e = rng.next() as u16;
            }
        }
        // Transposing every stored 8×8 matrix and loading without .trans equals .trans.
        let mut t_rows = [[0u16; 8]; 32];
        for m in 0..4 {
            for r in 0..8 {
                for c in 0..8 {
                    t_rows[8 * m + r][c] = rows[8 * m + c][r];
                }
            }
        }
        assert_eq!(
            ldmatrix_emulate::<4>(&rows, true),
            ldmatrix_emulate::<4>(&t_rows, false)
        );
        // x1 and x2 are prefixes of x4.
        let x4 = ldmatrix_emulate::<4>(&rows, false);
        let x2 = ldmatrix_emulate::<2>(&rows, false);
        let x1 = ldmatrix_emulate::<1>(&rows, false);
        for lane in 0..32 {
            assert_eq!(x2[lane], [x4[lane][0], x4[lane][1]]);
            assert_eq!(x1[lane], [x4[lane][0]]);
        }
    }

    fn random_a(rng: &mut Rng) -> [[u16; 16]; 16] {
        let mut a = [[0u16; 16]; 16];
        a.iter_mut().flatten().for_each(|e| *e = rng.small_bf16());
        a
    }

    fn random_b(rng: &mut Rng) -> [[u16; 8]; 16] {
        let mut b = [[0u16; 8]; 16];
        b.iter_mut().flatten().for_each(|e| *e = rng.small_bf16());
        b
    }

    #[test]
    fn mma_emulation_equals_naive_matmul() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20 {
            let a = random_a(&mut rng);
            let b = random_b(&mut rng);
            let mut c = [[0f32; 8]; 16];
            c.iter_mut()
                .flatten()
                .for_each(|e| *e = ((rng.next() % 201) as i32 - 100) as f32 / 4.0);
            let d = unpack_c(&mma_m16n8k16_emulate(
                &pack_a(&a),
                &pack_b(&b),
                &pack_c(&c),
                bf16_to_f32,
            ));
            for r in 0..16 {
                for n in 0..8 {
                    let mut want = c[r][n];
                    for k in 0..16 {
                        want += bf16_to_f32(a[r][k]) * bf16_to_f32(b[k][n]);
                    }
                    assert_eq!(d[r][n], want, "D[{r}][{n}]");
                }
            }
        }
    }

    #[test]
    fn pack_and_unpack_c_are_inverse() {
        let mut c = [[0f32; 8]; 16];
        for (i, e) in c.iter_mut().flatten().enumerate() {
            *e = i as f32;
        }
        assert_eq!(unpack_c(&pack_c(&c)), c);
    }

    /// Gathers the 32 lanes' rows of a tile: `src(lane)` is the (row, col) of the first element.
    fn rows_from<const W: usize>(
        tile: &[[u16; W]],
        src: impl Fn(u32) -> (u32, u32),
    ) -> [[u16; 8]; 32] {
        let mut rows = [[0u16; 8]; 32];
        for (lane, row) in rows.iter_mut().enumerate() {
            let (r, c) = src(lane as u32);
            row.copy_from_slice(&tile[r as usize][c as usize..c as usize + 8]);
        }
        rows
    }

    #[test]
    fn ldmatrix_sources_produce_mma_fragments() {
        let mut rng = Rng(0x0bad_cafe_dead_beef);
        let a = random_a(&mut rng);
        let b = random_b(&mut rng); // b[k][n]
        let mut bt = [[0u16; 16]; 8]; // bt[n][k]
        for k in 0..16 {
            for n in 0..8 {
                bt[n][k] = b[k][n];
            }
        }
        // A: x4 of the row-major tile.
        let a_frag = ldmatrix_emulate::<4>(&rows_from(&a, ldmatrix_a_x4_src), false);
        assert_eq!(a_frag, pack_a(&a));
        // B n-major: x2 without .trans.
        let b_frag = ldmatrix_emulate::<2>(&rows_from(&bt, ldmatrix_bt_x2_src), false);
        assert_eq!(b_frag, pack_b(&b));
        // B k-major: x2 with .trans.
        let b_frag_t = ldmatrix_emulate::<2>(&rows_from(&b, ldmatrix_b_x2_trans_src), true);
        assert_eq!(b_frag_t, pack_b(&b));

        // Two n-tiles: B2 is 16(k)×16(n); tile j is columns 8j..8j+8.
        let mut b2 = [[0u16; 16]; 16];
        b2.iter_mut().flatten().for_each(|e| *e = rng.small_bf16());
        let mut b2t = [[0u16; 16]; 16];
        for k in 0..16 {
            for n in 0..16 {
                b2t[n][k] = b2[k][n];
            }
        }
        let tile = |j: usize| {
            let mut t = [[0u16; 8]; 16];
            for k in 0..16 {
                t[k].copy_from_slice(&b2[k][8 * j..8 * j + 8]);
            }
            pack_b(&t)
        };
        let x4t = ldmatrix_emulate::<4>(&rows_from(&b2, ldmatrix_b_x4_trans_src), true);
        let x4 = ldmatrix_emulate::<4>(&rows_from(&b2t, ldmatrix_bt_x4_src), false);
        let (t0, t1) = (tile(0), tile(1));
        for lane in 0..32 {
            for frag in [x4t[lane], x4[lane]] {
                assert_eq!([frag[0], frag[1]], t0[lane], "n-tile 0, lane {lane}");
                assert_eq!([frag[2], frag[3]], t1[lane], "n-tile 1, lane {lane}");
            }
        }
    }
}
