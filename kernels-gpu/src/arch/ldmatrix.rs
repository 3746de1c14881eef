//! `ldmatrix.sync.aligned.m8n8` (sm_75+): warp-wide loads of 8×8 tiles of 16-bit elements from
//! shared memory straight into mma fragment registers.
//!
//! For `.x1/.x2/.x4`, lanes `8i..8i+8` give the row addresses (16 bytes each) of matrix `i`.
//! Without `.trans`, lane `l` receives, in register `i`, elements `(row l/4, cols 2(l%4),
//! 2(l%4)+1)` of matrix `i`; with `.trans` it receives the same positions of the transposed
//! matrix. The host model of this map is `math::frag`.
use core::arch::asm;

/// `ldmatrix.sync.aligned.m8n8.x1.shared.b16`.
///
/// # Safety
/// Warp-convergent; lanes 0..8 must pass 16-byte aligned shared addresses inside the dynamic
/// shared memory (other lanes' addresses are ignored but must be valid values).
#[inline(always)]
pub unsafe fn ldmatrix_x1(addr: u32) -> u32 {
    let r: u32;
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {{{0}}}, [{1}];", out(reg32) r, in(reg32) addr,
             options(nostack))
    };
    r
}

/// `ldmatrix.sync.aligned.m8n8.x2.shared.b16`.
///
/// # Safety
/// As [`ldmatrix_x1`], with lanes 0..16 giving addresses.
#[inline(always)]
pub unsafe fn ldmatrix_x2(addr: u32) -> [u32; 2] {
    let (a, b): (u32, u32);
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {{{0}, {1}}}, [{2}];", out(reg32) a,
             out(reg32) b, in(reg32) addr, options(nostack))
    };
    [a, b]
}

/// `ldmatrix.sync.aligned.m8n8.x4.shared.b16`.
///
/// # Safety
/// As [`ldmatrix_x1`], with all 32 lanes giving addresses.
#[inline(always)]
pub unsafe fn ldmatrix_x4(addr: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {{{0}, {1}, {2}, {3}}}, [{4}];",
             out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg32) addr, options(nostack))
    };
    [a, b, c, d]
}

/// `ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16`.
///
/// # Safety
/// As [`ldmatrix_x1`].
#[inline(always)]
pub unsafe fn ldmatrix_x1_trans(addr: u32) -> u32 {
    let r: u32;
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {{{0}}}, [{1}];", out(reg32) r,
             in(reg32) addr, options(nostack))
    };
    r
}

/// `ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16`.
///
/// # Safety
/// As [`ldmatrix_x2`].
#[inline(always)]
pub unsafe fn ldmatrix_x2_trans(addr: u32) -> [u32; 2] {
    let (a, b): (u32, u32);
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {{{0}, {1}}}, [{2}];", out(reg32) a,
             out(reg32) b, in(reg32) addr, options(nostack))
    };
    [a, b]
}

/// `ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16`.
///
/// # Safety
/// As [`ldmatrix_x4`].
#[inline(always)]
pub unsafe fn ldmatrix_x4_trans(addr: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {{{0}, {1}, {2}, {3}}}, [{4}];",
             out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg32) addr, options(nostack))
    };
    [a, b, c, d]
}
