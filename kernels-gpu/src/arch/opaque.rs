//! An optimisation barrier for values: `opaque_u32` returns its input through an empty `mov`
//! the compiler must assume has side effects, so it can neither see the value nor move the
//! instruction out of a loop.
//!
//! Why: LLVM hoists every loop-invariant expression out of a kernel's main loop. In the
//! tensor-core loops each unrolled `ldmatrix`/`cp.async` has its own lane-dependent address
//! (swizzled offsets, row pointers), and hoisting keeps them all live across the loop: dozens of
//! registers, and spills. Deriving those addresses from `opaque_u32(lane)` inside the loop makes
//! them cheap per-iteration arithmetic instead.
use core::arch::asm;

/// `mov.b32 x, x` (not `pure`: never hoisted, merged or removed).
#[inline(always)]
pub fn opaque_u32(mut x: u32) -> u32 {
    // SAFETY: a register move; no memory access.
    unsafe { asm!("mov.b32 {0}, {0};", inout(reg32) x, options(nomem, nostack)) };
    x
}
