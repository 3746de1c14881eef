//! Global-memory vector accesses (16 bytes per thread).
use core::arch::asm;

/// `ld.global.nc.v4.b32`: a 16-byte load through the read-only (non-coherent) path.
///
/// # Safety
/// `addr` must be a 16-byte aligned device address of memory that no thread writes during the
/// kernel.
#[inline(always)]
pub unsafe fn ld_nc_u32x4(addr: u64) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("ld.global.nc.v4.b32 {{{0}, {1}, {2}, {3}}}, [{4}];",
             out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg64) addr,
             options(nostack, readonly))
    };
    [a, b, c, d]
}

/// `ld.global.nc.v2.b32`: an 8-byte load through the read-only (non-coherent) path.
///
/// # Safety
/// `addr` must be an 8-byte aligned device address of memory that no thread writes during the
/// kernel.
#[inline(always)]
pub unsafe fn ld_nc_u32x2(addr: u64) -> [u32; 2] {
    let (a, b): (u32, u32);
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("ld.global.nc.v2.b32 {{{0}, {1}}}, [{2}];", out(reg32) a, out(reg32) b,
             in(reg64) addr, options(nostack, readonly))
    };
    [a, b]
}

/// `ld.global.v4.b32`: a coherent 16-byte load.
///
/// # Safety
/// `addr` must be a 16-byte aligned device address.
#[inline(always)]
pub unsafe fn ld_u32x4(addr: u64) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("ld.global.v4.b32 {{{0}, {1}, {2}, {3}}}, [{4}];",
             out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg64) addr,
             options(nostack))
    };
    [a, b, c, d]
}

/// `st.global.v4.b32`: a 16-byte store.
///
/// # Safety
/// `addr` must be a 16-byte aligned, writable device address.
#[inline(always)]
pub unsafe fn st_u32x4(addr: u64, v: [u32; 4]) {
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("st.global.v4.b32 [{0}], {{{1}, {2}, {3}, {4}}};", in(reg64) addr,
             in(reg32) v[0], in(reg32) v[1], in(reg32) v[2], in(reg32) v[3], options(nostack))
    };
}

/// `st.global.v2.b32`: an 8-byte store.
///
/// # Safety
/// `addr` must be an 8-byte aligned, writable device address.
#[inline(always)]
pub unsafe fn st_u32x2(addr: u64, v: [u32; 2]) {
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("st.global.v2.b32 [{0}], {{{1}, {2}}};", in(reg64) addr, in(reg32) v[0],
             in(reg32) v[1], options(nostack))
    };
}

/// `ld.global.nc.f32`: a scalar read-only load.
///
/// # Safety
/// `addr` must be a 4-byte aligned device address not written during the kernel.
#[inline(always)]
pub unsafe fn ld_nc_f32(addr: u64) -> f32 {
    let r: f32;
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("ld.global.nc.f32 {0}, [{1}];", out(reg32) r, in(reg64) addr, options(nostack, readonly))
    };
    r
}

/// `ld.global.b32`.
///
/// # Safety
/// `addr` must be a 4-byte aligned device address.
#[inline(always)]
pub unsafe fn ld_u32(addr: u64) -> u32 {
    let r: u32;
    // SAFETY: per the caller's contract.
    unsafe { asm!("ld.global.b32 {0}, [{1}];", out(reg32) r, in(reg64) addr, options(nostack)) };
    r
}

/// `st.global.b32`.
///
/// # Safety
/// `addr` must be a 4-byte aligned, writable device address.
#[inline(always)]
pub unsafe fn st_u32(addr: u64, v: u32) {
    // SAFETY: per the caller's contract.
    unsafe { asm!("st.global.b32 [{0}], {1};", in(reg64) addr, in(reg32) v, options(nostack)) };
}

/// `@p st.global.b32`: stores only when `pred` (a predicated store, so that a row loop with
/// skipped rows stays straight-line code).
///
/// # Safety
/// When `pred`, as [`st_u32`]; otherwise `addr` is not accessed.
#[inline(always)]
pub unsafe fn st_u32_if(addr: u64, v: u32, pred: bool) {
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("{{ .reg .pred p; setp.ne.b32 p, {2}, 0; @p st.global.b32 [{0}], {1}; }}",
             in(reg64) addr, in(reg32) v, in(reg32) pred as u32, options(nostack))
    };
}

/// `@p st.global.f32` (see [`st_u32_if`]).
///
/// # Safety
/// As [`st_u32_if`].
#[inline(always)]
pub unsafe fn st_f32_if(addr: u64, v: f32, pred: bool) {
    // SAFETY: forwarded contract.
    unsafe { st_u32_if(addr, v.to_bits(), pred) }
}

/// `st.global.f32`.
///
/// # Safety
/// As [`st_u32`].
#[inline(always)]
pub unsafe fn st_f32(addr: u64, v: f32) {
    // SAFETY: forwarded contract.
    unsafe { st_u32(addr, v.to_bits()) }
}

/// `ld.global.b16`.
///
/// # Safety
/// `addr` must be a 2-byte aligned device address.
#[inline(always)]
pub unsafe fn ld_u16(addr: u64) -> u16 {
    let r: u16;
    // SAFETY: per the caller's contract.
    unsafe { asm!("ld.global.b16 {0}, [{1}];", out(reg16) r, in(reg64) addr, options(nostack)) };
    r
}

/// `st.global.b16`.
///
/// # Safety
/// `addr` must be a 2-byte aligned, writable device address.
#[inline(always)]
pub unsafe fn st_u16(addr: u64, v: u16) {
    // SAFETY: per the caller's contract.
    unsafe { asm!("st.global.b16 [{0}], {1};", in(reg64) addr, in(reg16) v, options(nostack)) };
}

/// `ld.global.cg.v4.b32`: a 16-byte load cached in L2 only — for data other CTAs of the same
/// launch wrote (after a fence), which L1 or the non-coherent path could serve stale.
///
/// # Safety
/// `addr` must be a 16-byte aligned device address.
#[inline(always)]
pub unsafe fn ld_cg_u32x4(addr: u64) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("ld.global.cg.v4.b32 {{{0}, {1}, {2}, {3}}}, [{4}];",
             out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg64) addr,
             options(nostack))
    };
    [a, b, c, d]
}

/// `ld.global.cg.f32` (see [`ld_cg_u32x4`]).
///
/// # Safety
/// `addr` must be a 4-byte aligned device address.
#[inline(always)]
pub unsafe fn ld_cg_f32(addr: u64) -> f32 {
    let r: f32;
    // SAFETY: per the caller's contract.
    unsafe { asm!("ld.global.cg.f32 {0}, [{1}];", out(reg32) r, in(reg64) addr, options(nostack)) };
    r
}

/// `atom.global.add.u32`: adds `v` and returns the old value (relaxed, device scope).
///
/// # Safety
/// `addr` must be a 4-byte aligned, writable device address.
#[inline(always)]
pub unsafe fn atomic_add_u32(addr: u64, v: u32) -> u32 {
    let r: u32;
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("atom.global.add.u32 {0}, [{1}], {2};", out(reg32) r, in(reg64) addr, in(reg32) v, options(nostack))
    };
    r
}

/// `fence.acq_rel.gpu` (CUDA's `__threadfence`): orders this thread's memory accesses before
/// and after it for every thread of the device.
#[inline(always)]
pub fn fence_gpu() {
    // SAFETY: no operands.
    unsafe { asm!("fence.acq_rel.gpu;", options(nostack)) };
}

/// `st.global.cs.v4.b32`: a 16-byte streaming store (evict-first: the line is not expected to
/// be read again soon).
///
/// # Safety
/// `addr` must be a 16-byte aligned, writable device address.
#[inline(always)]
pub unsafe fn st_cs_u32x4(addr: u64, v: [u32; 4]) {
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("st.global.cs.v4.b32 [{0}], {{{1}, {2}, {3}, {4}}};", in(reg64) addr,
             in(reg32) v[0], in(reg32) v[1], in(reg32) v[2], in(reg32) v[3], options(nostack))
    };
}
