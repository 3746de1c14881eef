//! Where a model kernel's f32 results go: an f32 tensor, or a 16-bit one — the input of a
//! bf16/f16 matrix product, written directly so that no cast kernel runs between the op and
//! the product. Each value is computed in f32 and rounded once (round to nearest even).
use crate::arch::global;
use crate::dtype::{Bf16, Elem, F16};

/// An output element type of the model kernels.
pub(super) trait Out: Copy + 'static {
    /// Bytes per element.
    const BYTES: u64;
    /// A NaN of this type, as the raw bits `store_bits` takes.
    fn nan_bits() -> u32;
    /// `v` rounded to this type, as raw bits (low bits of the word).
    fn bits(v: f32) -> u32;
    /// Stores raw bits (from `bits` or loaded from a tensor of this type) at element `i`.
    ///
    /// # Safety
    /// `base + i · BYTES` must be a writable, aligned element of a device tensor of this type.
    unsafe fn store_bits(base: u64, i: u64, bits: u32);
    /// Loads element `i` as raw bits.
    ///
    /// # Safety
    /// `base + i · BYTES` must be an aligned element of a device tensor of this type, not
    /// written during the launch.
    unsafe fn load_bits(base: u64, i: u64) -> u32;

    /// Stores `v` rounded to this type at element `i`.
    ///
    /// # Safety
    /// As [`Out::store_bits`].
    #[inline(always)]
    unsafe fn store(base: u64, i: u64, v: f32) {
        // SAFETY: forwarded contract.
        unsafe { Self::store_bits(base, i, Self::bits(v)) }
    }
}

/// f32 outputs.
#[derive(Clone, Copy, Debug)]
pub(super) struct F32;

impl Out for F32 {
    const BYTES: u64 = 4;
    #[inline(always)]
    fn nan_bits() -> u32 {
        f32::NAN.to_bits()
    }
    #[inline(always)]
    fn bits(v: f32) -> u32 {
        v.to_bits()
    }
    #[inline(always)]
    unsafe fn store_bits(base: u64, i: u64, bits: u32) {
        // SAFETY: forwarded contract.
        unsafe { global::st_u32(base + i * Self::BYTES, bits) }
    }
    #[inline(always)]
    unsafe fn load_bits(base: u64, i: u64) -> u32 {
        // SAFETY: forwarded contract.
        unsafe { global::ld_nc_f32(base + i * Self::BYTES) }.to_bits()
    }
}

macro_rules! half_out {
    ($($t:ty),*) => {$(
        impl Out for $t {
            const BYTES: u64 = 2;
            #[inline(always)]
            fn nan_bits() -> u32 {
                <$t as Elem>::pack2(f32::NAN, 0.0) & 0xffff
            }
            #[inline(always)]
            fn bits(v: f32) -> u32 {
                <$t as Elem>::pack2(v, 0.0) & 0xffff
            }
            #[inline(always)]
            unsafe fn store_bits(base: u64, i: u64, bits: u32) {
                // SAFETY: forwarded contract.
                unsafe { global::st_u16(base + i * Self::BYTES, bits as u16) }
            }
            #[inline(always)]
            unsafe fn load_bits(base: u64, i: u64) -> u32 {
                // SAFETY: forwarded contract.
                unsafe { global::ld_u16(base + i * Self::BYTES) as u32 }
            }
        }
    )*};
}

half_out!(F16, Bf16);
