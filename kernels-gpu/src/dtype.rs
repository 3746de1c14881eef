//! Element types of the kernels as zero-sized markers.
//!
//! Device code is generic over `E: Elem`; the 16-bit conversions are single PTX instructions
//! (`arch::convert`). Host code uses `half::{f16, bf16}` for the same bit patterns.

/// A 16-bit floating-point storage type.
pub trait Elem: Copy + 'static {
    /// Short name used in kernel symbols (`f16`, `bf16`).
    const NAME: &'static str;

    /// Unpacks two packed values (low half first) to f32.
    #[cfg(target_arch = "nvptx64")]
    fn unpack2(bits: u32) -> (f32, f32);

    /// Packs two f32 values (round to nearest even), `lo` in the low half.
    #[cfg(target_arch = "nvptx64")]
    fn pack2(lo: f32, hi: f32) -> u32;

    /// `mma.sync.m16n8k16` with this element type for A and B, f32 accumulate.
    #[cfg(target_arch = "nvptx64")]
    fn mma(a: [u32; 4], b: [u32; 2], c: [f32; 4]) -> [f32; 4];

    /// An f16x2 register as this type (round to nearest even; exact for values both hold,
    /// such as fp8 values).
    #[cfg(target_arch = "nvptx64")]
    fn from_f16x2(bits: u32) -> u32;
}

/// IEEE binary16.
#[derive(Clone, Copy, Debug)]
pub struct F16;

/// bfloat16.
#[derive(Clone, Copy, Debug)]
pub struct Bf16;

impl Elem for F16 {
    const NAME: &'static str = "f16";

    #[cfg(target_arch = "nvptx64")]
    #[inline(always)]
    fn unpack2(bits: u32) -> (f32, f32) {
        crate::arch::convert::f16x2_to_f32x2(bits)
    }

    #[cfg(target_arch = "nvptx64")]
    #[inline(always)]
    fn pack2(lo: f32, hi: f32) -> u32 {
        crate::arch::convert::f32x2_to_f16x2(lo, hi)
    }

    #[cfg(target_arch = "nvptx64")]
    #[inline(always)]
    fn mma(a: [u32; 4], b: [u32; 2], c: [f32; 4]) -> [f32; 4] {
        crate::arch::mma::mma_m16n8k16_f16(a, b, c)
    }

    #[cfg(target_arch = "nvptx64")]
    #[inline(always)]
    fn from_f16x2(bits: u32) -> u32 {
        bits
    }
}

impl Elem for Bf16 {
    const NAME: &'static str = "bf16";

    #[cfg(target_arch = "nvptx64")]
    #[inline(always)]
    fn unpack2(bits: u32) -> (f32, f32) {
        crate::arch::convert::bf16x2_to_f32x2(bits)
    }

    #[cfg(target_arch = "nvptx64")]
    #[inline(always)]
    fn pack2(lo: f32, hi: f32) -> u32 {
        crate::arch::convert::f32x2_to_bf16x2(lo, hi)
    }

    #[cfg(target_arch = "nvptx64")]
    #[inline(always)]
    fn mma(a: [u32; 4], b: [u32; 2], c: [f32; 4]) -> [f32; 4] {
        crate::arch::mma::mma_m16n8k16_bf16(a, b, c)
    }

    #[cfg(target_arch = "nvptx64")]
    #[inline(always)]
    fn from_f16x2(bits: u32) -> u32 {
        crate::arch::convert::f16x2_to_bf16x2(bits)
    }
}
