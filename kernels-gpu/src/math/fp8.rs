//! The fp8 storage formats of the KV cache: OCP `e4m3fn` (4 exponent bits, bias 7, no
//! infinities, `0x7F`/`0xFF` NaN, max finite ±448) and `e5m2` (IEEE-like: bias 15, infinities,
//! max finite ±57344), as torch's `float8_e4m3fn` / `float8_e5m2` and CUDA's `__nv_fp8_*`.
//!
//! Pure integer/float arithmetic, so the host quantiser (CPU backend, tests) and the device
//! quantiser (the append kernel) are the same function and agree bit for bit. Encoding rounds to
//! nearest, ties to even, saturates every finite value and infinity beyond the largest finite
//! code to it (CUDA's `__NV_SATFINITE`: an fp8 cache never holds an infinity, so one outlier
//! cannot turn a whole softmax row into NaN), and maps NaN to the all-ones NaN code (sign kept).
//! Decoding is exact: every fp8 value is an f32 (and an f16 and a bf16).
//!
//! Both directions are branch-free selects on the device: decode multiplies a re-biased f32
//! whose subnormal inputs stay IEEE (`mul.rn.f32`, never `.ftz`), encode rounds normal values
//! on the bits and subnormal ones with the `2^23` float trick.

/// Which fp8 format, as a value (kernel keys, runtime dtype tags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fp8Kind {
    /// [`E4m3`].
    E4m3,
    /// [`E5m2`].
    E5m2,
}

impl Fp8Kind {
    /// Both formats.
    pub const ALL: [Fp8Kind; 2] = [Fp8Kind::E4m3, Fp8Kind::E5m2];

    /// Short name used in kernel symbols and reports (`e4m3`, `e5m2`).
    pub const fn name(self) -> &'static str {
        match self {
            Fp8Kind::E4m3 => "e4m3",
            Fp8Kind::E5m2 => "e5m2",
        }
    }
}

/// An fp8 format: its name in kernel symbols, the largest finite value, and its codec.
pub trait Fp8Format: Copy + Send + Sync + 'static {
    /// The format as a value.
    const KIND: Fp8Kind;
    /// Short name used in kernel symbols and reports (`e4m3`, `e5m2`).
    const NAME: &'static str = Self::KIND.name();
    /// Largest finite value (what saturation clamps to).
    const MAX: f32;
    /// f32 → code: round to nearest even, saturating, NaN → NaN.
    fn encode(x: f32) -> u8;
    /// code → f32, exact (NaN codes → NaN; e5m2's infinity codes → ±inf).
    fn decode(code: u8) -> f32;
}

/// OCP fp8 e4m3fn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct E4m3;

/// OCP fp8 e5m2.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct E5m2;

/// The code every NaN encodes to (with the input's sign): all ones, a NaN in both formats.
const NAN_CODE: u32 = 0x7F;

/// Rounds `x` to a code of a format with `MB` mantissa bits and exponent bias `BIAS`,
/// saturating at `MAX_CODE` (the largest finite code's magnitude).
#[inline(always)]
fn encode_with<const MB: u32, const BIAS: u32, const MAX_CODE: u32>(x: f32) -> u8 {
    let bits = x.to_bits();
    let sign = (bits >> 24) & 0x80;
    let a = bits & 0x7FFF_FFFF;
    // |x| >= 2^(1 - BIAS), the smallest normal: round on the bits. Dropping `23 - MB` mantissa
    // bits with round-half-even; a carry into the exponent is the correct next binade, and
    // re-biasing the exponent field turns the rounded bits into the code.
    let shift = 23 - MB;
    let rounded = (a + ((1 << (shift - 1)) - 1) + ((a >> shift) & 1)) >> shift;
    // Wraps for subnormal inputs, whose result is not selected below.
    let normal = rounded.wrapping_sub((127 - BIAS) << MB);
    // |x| below it: the code is |x| / 2^(1 - BIAS - MB) rounded to an integer (at most 2^MB,
    // which is exactly the smallest normal's code). The quotient is below 2^MB, so adding and
    // removing 2^23 rounds it to nearest even in f32 arithmetic.
    let q = f32::from_bits(a) * f32::from_bits((127 + BIAS - 1 + MB) << 23);
    let subnormal = ((q + 8_388_608.0) - 8_388_608.0) as u32;
    let min_normal = (128 - BIAS) << 23;
    let code = if a < min_normal {
        subnormal
    } else if normal > MAX_CODE {
        MAX_CODE
    } else {
        normal
    };
    let code = if a > 0x7F80_0000 { NAN_CODE } else { code };
    (sign | code) as u8
}

/// The sign bit of `code` on the f32 `v`.
#[inline(always)]
fn with_sign(code: u8, v: f32) -> f32 {
    f32::from_bits(v.to_bits() | ((code as u32 & 0x80) << 24))
}

impl Fp8Format for E4m3 {
    const KIND: Fp8Kind = Fp8Kind::E4m3;
    const MAX: f32 = 448.0;

    #[inline(always)]
    fn encode(x: f32) -> u8 {
        encode_with::<3, 7, 0x7E>(x)
    }

    #[inline(always)]
    fn decode(code: u8) -> f32 {
        let mag = (code & 0x7F) as u32;
        // Exponent and mantissa land in f32's fields with bias 127 instead of 7: the value is
        // off by exactly 2^120, for subnormal codes too (they become f32 subnormals).
        let v = f32::from_bits(mag << 20) * f32::from_bits((127 + 120) << 23);
        let v = if mag == 0x7F { f32::NAN } else { v };
        with_sign(code, v)
    }
}

impl Fp8Format for E5m2 {
    const KIND: Fp8Kind = Fp8Kind::E5m2;
    const MAX: f32 = 57344.0;

    #[inline(always)]
    fn encode(x: f32) -> u8 {
        encode_with::<2, 15, 0x7B>(x)
    }

    #[inline(always)]
    fn decode(code: u8) -> f32 {
        let mag = (code & 0x7F) as u32;
        // As e4m3, with bias 15: off by 2^112. Exponent field 31 is inf (mantissa 0) or NaN.
        let v = f32::from_bits(mag << 21) * f32::from_bits((127 + 112) << 23);
        let v = if mag >= 0x7C {
            f32::from_bits(0x7F80_0000 | ((mag & 3) << 21))
        } else {
            v
        };
        with_sign(code, v)
    }
}

/// The code stored for the real value `x` under a per-tensor `scale` (stored × scale = real):
/// `x / scale` (IEEE division on both host and device, so both quantisers agree bit for bit),
/// encoded.
#[inline(always)]
pub fn quantize<F: Fp8Format>(x: f32, scale: f32) -> u8 {
    F::encode(x / scale)
}

/// `prmt` selectors (with a zero second operand) turning four e5m2 codes into two f16x2
/// registers: each code becomes the high byte of a 16-bit lane, the low byte zero — e5m2 is
/// exactly the high byte of the f16 of the same value (same sign, 5-bit exponent with bias 15,
/// top two mantissa bits), infinities and NaNs included.
pub const E5M2_TO_F16_PRMT: [u32; 2] = [0x1404, 0x3424];

/// Decodes the four codes of `w` (lowest byte first) — one 32-bit load of fp8 K/V.
#[inline(always)]
pub fn decode4<F: Fp8Format>(w: u32) -> [f32; 4] {
    [
        F::decode(w as u8),
        F::decode((w >> 8) as u8),
        F::decode((w >> 16) as u8),
        F::decode((w >> 24) as u8),
    ]
}

/// Encodes four values into one word (the first in the lowest byte).
#[inline(always)]
pub fn encode4<F: Fp8Format>(x: [f32; 4]) -> u32 {
    F::encode(x[0]) as u32
        | (F::encode(x[1]) as u32) << 8
        | (F::encode(x[2]) as u32) << 16
        | (F::encode(x[3]) as u32) << 24
}

#[cfg(test)]
#[path = "fp8_tests.rs"]
mod tests;
