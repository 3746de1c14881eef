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

/// Four fp8 codes of format `F` (lowest byte first) to two f16x2 registers, `[codes 0, 1]` and
/// `[codes 2, 3]` (low code in the low half). Exact: every fp8 value is an f16 (NaN codes become
/// f16 NaNs, e5m2's infinities f16 infinities).
/// - e5m2 is the high byte of the f16 with the same value, on every architecture: two byte
///   permutes ([`crate::math::fp8::E5M2_TO_F16_PRMT`]).
/// - e4m3: `cvt.rn.f16x2.e4m3x2` on sm_89 and newer (the sm_90/sm_90a images); the sm_80 image
///   (which also serves 8.x GPUs without fp8 conversions) decodes through f32 (`math::fp8`,
///   the host's codec) and packs.
#[inline(always)]
pub fn fp8x4_to_f16x2<F: crate::math::fp8::Fp8Format>(codes: u32) -> [u32; 2] {
    use crate::math::fp8::{Fp8Kind, E5M2_TO_F16_PRMT};
    if F::KIND == Fp8Kind::E5m2 {
        return [
            prmt(codes, E5M2_TO_F16_PRMT[0]),
            prmt(codes, E5M2_TO_F16_PRMT[1]),
        ];
    }
    #[cfg(target_feature = "sm_89")]
    {
        let (lo, hi): (u32, u32);
        // SAFETY: register-only. The hardware takes the high code of a .b16 to the high half.
        unsafe {
            asm!(
                "{{ .reg .b16 l, h; mov.b32 {{l, h}}, {2}; cvt.rn.f16x2.e4m3x2 {0}, l; cvt.rn.f16x2.e4m3x2 {1}, h; }}",
                out(reg32) lo, out(reg32) hi, in(reg32) codes, options(pure, nomem, nostack)
            )
        };
        [lo, hi]
    }
    #[cfg(not(target_feature = "sm_89"))]
    {
        let v = crate::math::fp8::decode4::<F>(codes);
        [f32x2_to_f16x2(v[0], v[1]), f32x2_to_f16x2(v[2], v[3])]
    }
}

/// f16x2 to bf16x2 through f32 (`cvt.f32.f16` twice, `cvt.rn.bf16x2.f32`): exact for values
/// bf16 holds, such as every fp8 value.
#[inline(always)]
pub fn f16x2_to_bf16x2(bits: u32) -> u32 {
    let (lo, hi) = f16x2_to_f32x2(bits);
    f32x2_to_bf16x2(lo, hi)
}

/// `prmt.b32 d, a, 0, sel`: byte `i` of the result is byte `sel[4i..4i+3]` of `a` for selector
/// nibbles 0–3 and zero for 4–7 (see `math::frag_fp8::prmt_host`, its host model).
#[inline(always)]
pub fn prmt(a: u32, sel: u32) -> u32 {
    let r: u32;
    // SAFETY: register-only.
    unsafe {
        asm!("prmt.b32 {0}, {1}, 0, {2};", out(reg32) r, in(reg32) a, in(reg32) sel,
             options(pure, nomem, nostack))
    };
    r
}
