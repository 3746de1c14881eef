//! `mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32` (sm_80+): D = A·B + C with
//! A 16×16 (row-major fragment, 4 registers of packed pairs), B 16×8 (column-major fragment, 2
//! registers), C/D 16×8 f32 (4 registers per lane).
//!
//! Fragment ownership, lane `l`, `g = l/4`, `t = l%4` (host model and tests: `math::frag`):
//! A regs `a0: (g, 2t..2t+1)`, `a1: (g+8, 2t..)`, `a2: (g, 2t+8..)`, `a3: (g+8, 2t+8..)`;
//! B regs `b0: (k 2t..2t+1, n g)`, `b1: (k 2t+8.., n g)`;
//! C/D `c0,c1: (g, 2t..2t+1)`, `c2,c3: (g+8, 2t..2t+1)`.
use core::arch::asm;

macro_rules! mma_m16n8k16 {
    ($(#[$doc:meta])* $name:ident, $ty:literal) => {
        $(#[$doc])*
        #[inline(always)]
        pub fn $name(a: [u32; 4], b: [u32; 2], c: [f32; 4]) -> [f32; 4] {
            let (d0, d1, d2, d3): (f32, f32, f32, f32);
            // SAFETY: register-only; warp-convergent by the calling kernel's structure.
            unsafe {
                asm!(concat!("mma.sync.aligned.m16n8k16.row.col.f32.", $ty, ".", $ty, ".f32 ",
                             "{{{0}, {1}, {2}, {3}}}, {{{4}, {5}, {6}, {7}}}, {{{8}, {9}}}, ",
                             "{{{10}, {11}, {12}, {13}}};"),
                     out(reg32) d0, out(reg32) d1, out(reg32) d2, out(reg32) d3,
                     in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3],
                     in(reg32) b[0], in(reg32) b[1],
                     in(reg32) c[0], in(reg32) c[1], in(reg32) c[2], in(reg32) c[3],
                     options(pure, nomem, nostack))
            };
            [d0, d1, d2, d3]
        }
    };
}

mma_m16n8k16!(
    /// f16 inputs, f32 accumulate.
    mma_m16n8k16_f16, "f16");
mma_m16n8k16!(
    /// bf16 inputs, f32 accumulate.
    mma_m16n8k16_bf16, "bf16");
