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
