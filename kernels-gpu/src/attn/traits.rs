//! Kernel traits: the per-head-dim constants every attention kernel derives from `D` (as
//! FlashInfer's `KernelTraits`), written once. Stable Rust cannot size an array by an
//! expression of a generic const (`[f32; D / 8]`), so the kernel bodies keep the array lengths
//! as const parameters and the entry macros fill them from [`HeadDim`] of `Dim<D>`; no kernel
//! writes them by hand. Implemented for the supported head dims only (64, 128, 256): another
//! `D` fails to compile.
//!
//! Fragment counts follow the `mma.m16n8k16` shapes: an output row of `D` columns is `D/8`
//! n-tiles of 8, a Q row `D/16` k-steps of 16; a Hopper consumer thread holds `D/2` output
//! accumulators of its warpgroup's `64 × D` tile.

/// Constants derived from the head dim `D`.
pub(crate) trait HeadDim {
    /// n-tiles of 8 columns in a row of `D` (`mma` output fragments per row block).
    const NT: usize;
    /// k-steps of 16 in a row of `D` (Q fragments; `wgmma` score products).
    const KS: usize;
    /// `wgmma` output accumulators per consumer thread (`64 × D` per warpgroup).
    #[cfg_attr(not(target_feature = "sm_90a"), allow(dead_code))]
    const WG_ON: usize;
}

/// The head dim `D` as a type (see [`HeadDim`]).
pub(crate) struct Dim<const D: u32>;

macro_rules! head_dims {
    ($($d:literal),*) => {$(
        impl HeadDim for Dim<$d> {
            const NT: usize = $d / 8;
            const KS: usize = $d / 16;
            const WG_ON: usize = $d / 2;
        }
    )*};
}

head_dims!(64, 128, 256);
