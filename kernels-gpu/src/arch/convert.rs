//! Conversions between f32 and packed 16-bit pairs (`f16x2`, `bf16x2`). The low 16 bits hold the
//! first (lower-address) element, as in memory.
use core::arch::asm;

/// `cvt.rn.f16x2.f32`: packs `(lo, hi)` to two f16 (round to nearest even).
#[inline(always)]
pub fn f32x2_to_f16x2(lo: f32, hi: f32) -> u32 {
    let r: u32;
    // SAFETY: register-only. PTX takes the high element first.
    unsafe {
        asm!("cvt.rn.f16x2.f32 {0}, {1}, {2};", out(reg32) r, in(reg32) hi, in(reg32) lo,
             options(pure, nomem, nostack))
    };
    r
}

/// `cvt.rn.bf16x2.f32`: packs `(lo, hi)` to two bf16 (round to nearest even).
#[inline(always)]
pub fn f32x2_to_bf16x2(lo: f32, hi: f32) -> u32 {
    let r: u32;
    // SAFETY: register-only. PTX takes the high element first.
    unsafe {
        asm!("cvt.rn.bf16x2.f32 {0}, {1}, {2};", out(reg32) r, in(reg32) hi, in(reg32) lo,
             options(pure, nomem, nostack))
    };
    r
}

/// Unpacks two f16 (`cvt.f32.f16` on each half).
#[inline(always)]
pub fn f16x2_to_f32x2(bits: u32) -> (f32, f32) {
    let (lo, hi): (f32, f32);
    // SAFETY: register-only.
    unsafe {
        asm!("{{ .reg .b16 l, h; mov.b32 {{l, h}}, {2}; cvt.f32.f16 {0}, l; cvt.f32.f16 {1}, h; }}",
             out(reg32) lo, out(reg32) hi, in(reg32) bits, options(pure, nomem, nostack))
    };
    (lo, hi)
}

/// Unpacks two bf16: a bf16 is the high half of an f32, so this is two shifts/masks.
#[inline(always)]
pub fn bf16x2_to_f32x2(bits: u32) -> (f32, f32) {
    (
        f32::from_bits(bits << 16),
        f32::from_bits(bits & 0xffff_0000),
    )
}

/// One f16 (as bits) to f32.
#[inline(always)]
pub fn f16_to_f32(bits: u16) -> f32 {
    let r: f32;
    // SAFETY: register-only.
    unsafe {
        asm!("{{ .reg .b16 h; mov.b16 h, {1}; cvt.f32.f16 {0}, h; }}", out(reg32) r, in(reg16) bits,
             options(pure, nomem, nostack))
    };
    r
}
