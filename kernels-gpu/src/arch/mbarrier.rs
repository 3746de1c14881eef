//! Shared-memory barriers with a transaction phase (`mbarrier`, sm_80+; `try_wait` sm_90).
//!
//! An mbarrier counts arrivals: once `count` threads have arrived, its phase completes and its
//! phase bit flips; waiters name the parity of the phase they wait for. Unlike `bar.sync` it
//! does not stall the arriving threads, so producers and consumers of a shared-memory stage
//! can run apart. `cp.async.mbarrier.arrive` arrives on the thread's behalf when all its
//! earlier `cp.async` copies have landed.
use core::arch::asm;

/// `mbarrier.init.shared::cta.b64 [addr], count`.
///
/// # Safety
/// `addr` 8-byte aligned inside the dynamic shared memory; no thread uses the barrier before
/// the initialising thread's [`fence_init`] and a CTA barrier.
#[inline(always)]
pub unsafe fn init(addr: u32, count: u32) {
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("mbarrier.init.shared::cta.b64 [{0}], {1};", in(reg32) addr, in(reg32) count,
             options(nostack))
    };
}

/// `fence.mbarrier_init.release.cluster`: makes this thread's `init`s visible.
#[inline(always)]
pub fn fence_init() {
    // SAFETY: no operands.
    unsafe { asm!("fence.mbarrier_init.release.cluster;", options(nostack)) };
}

/// `cp.async.mbarrier.arrive.noinc.shared::cta.b64 [addr]`: arrives once all of this thread's
/// earlier `cp.async` copies have completed (the arrival counts against the init count).
///
/// # Safety
/// `addr` an initialised mbarrier.
#[inline(always)]
pub unsafe fn cp_async_arrive(addr: u32) {
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [{0}];", in(reg32) addr,
             options(nostack))
    };
}

/// `mbarrier.arrive.shared::cta.b64`: one arrival (release semantics: this thread's earlier
/// memory accesses happen before the phase completes).
///
/// # Safety
/// `addr` an initialised mbarrier.
#[inline(always)]
pub unsafe fn arrive(addr: u32) {
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("{{ .reg .b64 st; mbarrier.arrive.shared::cta.b64 st, [{0}]; }}", in(reg32) addr,
             options(nostack))
    };
}

/// `mbarrier.arrive.expect_tx.shared::cta.b64`: one arrival that also raises the current
/// phase's expected transaction count by `bytes` (the phase completes when the arrivals are in
/// and that many bytes of asynchronous copies, e.g. `tma::load_3d`, have landed on it).
///
/// # Safety
/// `addr` an initialised mbarrier.
#[inline(always)]
pub unsafe fn arrive_expect_tx(addr: u32, bytes: u32) {
    // SAFETY: per the caller's contract.
    unsafe {
        asm!("{{ .reg .b64 st; mbarrier.arrive.expect_tx.shared::cta.b64 st, [{0}], {1}; }}",
             in(reg32) addr, in(reg32) bytes, options(nostack))
    };
}

/// Waits until the phase of parity `parity` of the barrier at `addr` has completed
/// (`mbarrier.try_wait.parity`, which suspends the thread for a while before returning false).
///
/// # Safety
/// `addr` an initialised mbarrier.
#[inline(always)]
pub unsafe fn wait(addr: u32, parity: u32) {
    loop {
        let done: u32;
        // SAFETY: per the caller's contract.
        unsafe {
            asm!("{{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [{1}], {2}; \
                  selp.u32 {0}, 1, 0, p; }}",
                 out(reg32) done, in(reg32) addr, in(reg32) parity, options(nostack))
        };
        if done != 0 {
            break;
        }
    }
}
