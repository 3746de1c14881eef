//! Thread, block and grid indices; block-wide barriers.
use core::arch::asm;

macro_rules! special_reg {
    ($(#[$doc:meta] $name:ident => $reg:literal;)*) => {$(
        #[$doc]
        #[inline(always)]
        pub fn $name() -> u32 {
            let r: u32;
            // SAFETY: reading a special register has no side effects.
            unsafe { asm!(concat!("mov.u32 {0}, ", $reg, ";"), out(reg32) r, options(pure, nomem, nostack)) };
            r
        }
    )*};
}

special_reg! {
    /// `%tid.x`
    thread_idx_x => "%tid.x";
    /// `%tid.y`
    thread_idx_y => "%tid.y";
    /// `%tid.z`
    thread_idx_z => "%tid.z";
    /// `%ctaid.x`
    block_idx_x => "%ctaid.x";
    /// `%ctaid.y`
    block_idx_y => "%ctaid.y";
    /// `%ctaid.z`
    block_idx_z => "%ctaid.z";
    /// `%ntid.x`
    block_dim_x => "%ntid.x";
    /// `%ntid.y`
    block_dim_y => "%ntid.y";
    /// `%nctaid.x`
    grid_dim_x => "%nctaid.x";
    /// `%nctaid.y`
    grid_dim_y => "%nctaid.y";
    /// `%laneid`: the lane within the warp (0..32).
    lane_id => "%laneid";
    /// `%smid`: the SM this CTA runs on (for diagnostics and persistent schedules).
    sm_id => "%smid";
}

/// The warp index within a 1-D block (`%tid.x / 32`).
#[inline(always)]
pub fn warp_id() -> u32 {
    thread_idx_x() / 32
}

/// `bar.sync 0`: every thread of the block waits here; orders shared-memory accesses.
#[inline(always)]
pub fn sync_threads() {
    // SAFETY: must be reached by all threads of the block (caller's control flow is uniform).
    unsafe { asm!("bar.sync 0;", options(nostack)) };
}

/// `bar.sync id, n`: named barrier `id` (1..16) for `n` threads (a multiple of 32).
///
/// # Safety
/// Exactly `n` threads (whole warps) must arrive at barrier `id`.
#[inline(always)]
pub unsafe fn named_barrier_sync(id: u32, n: u32) {
    // SAFETY: per the caller's contract.
    unsafe { asm!("bar.sync {0}, {1};", in(reg32) id, in(reg32) n, options(nostack)) };
}

/// `bar.arrive id, n`: arrives at named barrier `id` without waiting (the producer side of a
/// `bar.sync id, n` by other warps).
///
/// # Safety
/// As [`named_barrier_sync`]: the arrivals and waits at `id` add up to `n` threads per phase.
#[inline(always)]
pub unsafe fn named_barrier_arrive(id: u32, n: u32) {
    // SAFETY: per the caller's contract.
    unsafe { asm!("bar.arrive {0}, {1};", in(reg32) id, in(reg32) n, options(nostack)) };
}
