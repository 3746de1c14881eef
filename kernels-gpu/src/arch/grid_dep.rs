//! Programmatic dependent launch (`griddepcontrol`, sm_90 and newer): a kernel launched with
//! the host's programmatic-serialisation attribute may start while the kernel before it on the
//! stream is still running, so its launch and whatever it reads that no earlier kernel writes
//! (a product's weights) overlap the previous kernel's tail. Its first access to anything an
//! earlier kernel wrote, and its first store, must follow [`wait_prior_grids`].
//!
//! The sm_80 image has neither instruction: both are empty there, and the host launches its
//! kernels without the attribute (`ferrinfer`'s `Gpu::dependent_launch`).
#[cfg(any(target_feature = "sm_90", target_feature = "sm_90a"))]
use core::arch::asm;

/// `griddepcontrol.wait`: blocks the thread until every grid this one depends on has completed
/// and its memory is visible. Without a programmatic launch it returns at once.
#[inline(always)]
pub fn wait_prior_grids() {
    #[cfg(any(target_feature = "sm_90", target_feature = "sm_90a"))]
    // SAFETY: no operands; a memory clobber (no `nomem`) keeps every load and store after it.
    unsafe {
        asm!("griddepcontrol.wait;", options(nostack))
    };
}

/// `griddepcontrol.launch_dependents`: once every CTA of this grid has executed it (or exited),
/// the next kernel on the stream may be launched. Scheduling only: it orders no memory, the
/// dependent's [`wait_prior_grids`] does.
#[inline(always)]
pub fn allow_dependents() {
    #[cfg(any(target_feature = "sm_90", target_feature = "sm_90a"))]
    // SAFETY: no operands, no memory effect.
    unsafe {
        asm!("griddepcontrol.launch_dependents;", options(nostack))
    };
}

/// The prologue of a kernel that reads nothing before its dependency: [`wait_prior_grids`], then
/// [`allow_dependents`] (so the next kernel's launch overlaps this one's work). Every thread
/// runs it before any early exit, so the grid completes only after its dependency has.
#[inline(always)]
pub fn enter() {
    wait_prior_grids();
    allow_dependents();
}
