//! Our thin intrinsics layer: one small `#[inline(always)]` function per PTX instruction we use,
//! named after CUDA's (as cuda_std does), each with the instruction it emits in its docs.
//!
//! Device only (`cfg(target_arch = "nvptx64")`). Register classes in `asm!`: `reg16`, `reg32`,
//! `reg64`; predicates are declared inside a `{ }` scope of the asm string. Instructions that
//! touch memory are never marked `nomem`/`readonly`/`pure`, so the compiler cannot move them
//! across our barriers. Host-side twins of the lane/fragment layouts are in `crate::math`.
pub mod convert;
pub mod fast;
pub mod global;
pub mod grid_dep;
pub mod ldmatrix;
#[cfg(target_feature = "sm_90a")]
pub mod mbarrier;
pub mod mma;
pub mod opaque;
pub mod pipeline;
pub mod shared;
pub mod thread;
#[cfg(target_feature = "sm_90a")]
pub mod tma;
pub mod warp;
#[cfg(target_feature = "sm_90a")]
pub mod wgmma;
