//! Dynamic shared memory, addressed through 32-bit shared-window addresses.
//!
//! The kernel's dynamic shared memory is one `.extern .shared` array `SMEM`; [`dyn_smem_base`]
//! returns its 32-bit address, and every access goes through `ld.shared`/`st.shared` (or
//! `cp.async`/`ldmatrix`) with such addresses. A generic pointer would compile to slower generic
//! loads, and LLVM cannot see the address space through inline asm.
use core::arch::{asm, global_asm};

// 1024-byte alignment: the 128-byte-swizzled `wgmma` operands need 1024-byte aligned groups.
global_asm!(".extern .shared .align 1024 .b8 SMEM[];");

/// The 32-bit shared-window address of the block's dynamic shared memory (16-byte aligned).
#[inline(always)]
pub fn dyn_smem_base() -> u32 {
    let r: u32;
    // SAFETY: takes the address of a symbol.
    unsafe { asm!("mov.u32 {0}, SMEM;", out(reg32) r, options(pure, nomem, nostack)) };
    r
}

/// `ld.shared.b32`.
///
/// # Safety
/// `addr` must be a 4-byte aligned address inside the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn ld_u32(addr: u32) -> u32 {
    let r: u32;
    // SAFETY: per the caller's contract.
    unsafe { asm!("ld.shared.b32 {0}, [{1}];", out(reg32) r, in(reg32) addr, options(nostack)) };
    r
}

/// `ld.shared.v2.b32` (64 bits).
///
/// # Safety
/// `addr` must be 8-byte aligned and inside the dynamic shared memory.
#[inline(always)]
pub unsafe fn ld_u32x2(addr: u32) -> [u32; 2] {
    let (a, b): (u32, u32);
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("ld.shared.v2.b32 {{{0}, {1}}}, [{2}];", out(reg32) a, out(reg32) b, in(reg32) addr,
             options(nostack))
    };
    [a, b]
}

/// `ld.shared.v4.b32` (128 bits).
///
/// # Safety
/// `addr` must be 16-byte aligned and inside the dynamic shared memory.
#[inline(always)]
pub unsafe fn ld_u32x4(addr: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("ld.shared.v4.b32 {{{0}, {1}, {2}, {3}}}, [{4}];",
             out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg32) addr,
             options(nostack))
    };
    [a, b, c, d]
}

/// `st.shared.b32`.
///
/// # Safety
/// `addr` must be 4-byte aligned and inside the dynamic shared memory.
#[inline(always)]
pub unsafe fn st_u32(addr: u32, v: u32) {
    // SAFETY: per the caller's contract.
    unsafe { asm!("st.shared.b32 [{0}], {1};", in(reg32) addr, in(reg32) v, options(nostack)) };
}

/// `st.shared.v2.b32`.
///
/// # Safety
/// `addr` must be 8-byte aligned and inside the dynamic shared memory.
#[inline(always)]
pub unsafe fn st_u32x2(addr: u32, v: [u32; 2]) {
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("st.shared.v2.b32 [{0}], {{{1}, {2}}};", in(reg32) addr, in(reg32) v[0], in(reg32) v[1],
             options(nostack))
    };
}

/// `st.shared.v4.b32`.
///
/// # Safety
/// `addr` must be 16-byte aligned and inside the dynamic shared memory.
#[inline(always)]
pub unsafe fn st_u32x4(addr: u32, v: [u32; 4]) {
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("st.shared.v4.b32 [{0}], {{{1}, {2}, {3}, {4}}};", in(reg32) addr,
             in(reg32) v[0], in(reg32) v[1], in(reg32) v[2], in(reg32) v[3], options(nostack))
    };
}

/// [`ld_u32`] as f32.
///
/// # Safety
/// As [`ld_u32`].
#[inline(always)]
pub unsafe fn ld_f32(addr: u32) -> f32 {
    // SAFETY: forwarded contract.
    f32::from_bits(unsafe { ld_u32(addr) })
}

/// [`st_u32`] of an f32.
///
/// # Safety
/// As [`st_u32`].
#[inline(always)]
pub unsafe fn st_f32(addr: u32, v: f32) {
    // SAFETY: forwarded contract.
    unsafe { st_u32(addr, v.to_bits()) }
}
