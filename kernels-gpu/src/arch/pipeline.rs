//! Asynchronous global→shared copies (`cp.async`, sm_80+) and their commit/wait groups.
//!
//! A thread issues copies, closes them into a group with [`commit_group`], and later waits with
//! [`wait_group::<N>`] until at most `N` of its groups are still pending. Waiting covers only the
//! calling thread's copies: a block barrier must follow before other threads read the data.
use core::arch::asm;

/// `cp.async.cg.shared.global [dst], [src], 16, src_size`: copies `src_size` (0..=16) bytes and
/// zero-fills the rest of the 16-byte destination. `src_size = 0` reads nothing and writes
/// zeros (how out-of-range V rows are predicated: a stale NaN times p = 0 would still be NaN).
///
/// # Safety
/// `dst` must be a 16-byte aligned shared address inside the dynamic shared memory; when
/// `src_size > 0`, `src` must be a 16-byte aligned readable device address.
#[inline(always)]
pub unsafe fn cp_async_cg_16(dst: u32, src: u64, src_size: u32) {
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("cp.async.cg.shared.global [{0}], [{1}], 16, {2};", in(reg32) dst, in(reg64) src,
             in(reg32) src_size, options(nostack))
    };
}

/// `cp.async.ca.shared.global [dst], [src], 8, src_size`: copies `src_size` (0..=8) bytes and
/// zero-fills the rest of the 8-byte destination (`.cg` takes only 16-byte copies; fp8 rows
/// stage half the bytes of 16-bit ones).
///
/// # Safety
/// `dst` must be an 8-byte aligned shared address inside the dynamic shared memory; when
/// `src_size > 0`, `src` must be an 8-byte aligned readable device address.
#[inline(always)]
pub unsafe fn cp_async_ca_8(dst: u32, src: u64, src_size: u32) {
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("cp.async.ca.shared.global [{0}], [{1}], 8, {2};", in(reg32) dst, in(reg64) src,
             in(reg32) src_size, options(nostack))
    };
}

/// `cp.async.ca.shared.global [dst], [src], 4, src_size`: as [`cp_async_ca_8`] for 4 bytes
/// (half of an fp8 lane vector).
///
/// # Safety
/// `dst` must be a 4-byte aligned shared address inside the dynamic shared memory; when
/// `src_size > 0`, `src` must be a 4-byte aligned readable device address.
#[inline(always)]
pub unsafe fn cp_async_ca_4(dst: u32, src: u64, src_size: u32) {
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("cp.async.ca.shared.global [{0}], [{1}], 4, {2};", in(reg32) dst, in(reg64) src,
             in(reg32) src_size, options(nostack))
    };
}

/// `cp.async.cg.shared.global [dst], [src], 16, ignore_src`: copies 16 bytes, or with `zero`
/// reads nothing and writes 16 zero bytes. The same as [`cp_async_cg_16`] with a size of 0 or
/// 16, but as a predicate: ptxas then emits the predicated copy alone (a run-time size costs
/// ~4 more instructions per copy to turn it back into one). The predicate operand needs PTX
/// 7.5; the sm_80 image is PTX 7.0 (rustc's default there), so it keeps the size form.
///
/// # Safety
/// As [`cp_async_cg_16`]; `src` is not read when `zero`.
#[inline(always)]
pub unsafe fn cp_async_cg_16_or_zero(dst: u32, src: u64, zero: bool) {
    #[cfg(any(target_feature = "sm_90", target_feature = "sm_90a"))]
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("{{ .reg .pred p; setp.ne.u32 p, {2}, 0; cp.async.cg.shared.global [{0}], [{1}], 16, p; }}",
             in(reg32) dst, in(reg64) src, in(reg32) zero as u32, options(nostack))
    };
    #[cfg(not(any(target_feature = "sm_90", target_feature = "sm_90a")))]
    // SAFETY: per the caller's contract.
    unsafe {
        cp_async_cg_16(dst, src, if zero { 0 } else { 16 })
    };
}

/// `cp.async.commit_group`: closes the copies issued since the last commit into one group.
#[inline(always)]
pub fn commit_group() {
    // SAFETY: no operands.
    unsafe { asm!("cp.async.commit_group;", options(nostack)) };
}

/// `cp.async.wait_group N`: waits until at most `N` committed groups are pending.
#[inline(always)]
pub fn wait_group<const N: u32>() {
    // SAFETY: no memory operands; the immediate is a compile-time constant.
    unsafe { asm!("cp.async.wait_group {n};", n = const N, options(nostack)) };
}

/// `cp.async.wait_all`: waits for every copy this thread issued.
#[inline(always)]
pub fn wait_all() {
    // SAFETY: no operands.
    unsafe { asm!("cp.async.wait_all;", options(nostack)) };
}
