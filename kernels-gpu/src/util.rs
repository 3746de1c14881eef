//! Utility kernels for the benchmarks.
use crate::abi::SpinParams;
use core::arch::asm;

/// Busy-waits until `%globaltimer` has advanced by `p.ns` nanoseconds. Queued before a timed
/// call so the host has enqueued that call before the GPU reaches the start event (the timing
/// then excludes host launch gaps, as FlashInfer's benchmark does with `torch.cuda._sleep`).
///
/// # Safety
/// Any launch shape; touches no memory.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn util_spin(p: SpinParams) {
    let read = || {
        let t: u64;
        // SAFETY: reads a special register.
        unsafe { asm!("mov.u64 {0}, %globaltimer;", out(reg64) t, options(nomem, nostack)) };
        t
    };
    let start = read();
    while read().wrapping_sub(start) < p.ns {}
}
