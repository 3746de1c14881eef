//! Exhaustive checks of the fp8 codecs: every code against the formats' definition and against
//! the `float8` crate (a port of CUDA's `cuda_fp8.hpp` conversions, saturating like ours), every
//! tie, saturation and NaN; random f32 against the oracle.
use super::*;
use proptest::prelude::*;

/// A format's layout, for the definition-based decoder below.
struct Layout {
    mantissa_bits: i32,
    bias: i32,
    /// e5m2 reserves its top exponent for inf/NaN; e4m3fn only the all-ones code for NaN.
    ieee_top: bool,
}

const E4M3: Layout = Layout {
    mantissa_bits: 3,
    bias: 7,
    ieee_top: false,
};
const E5M2: Layout = Layout {
    mantissa_bits: 2,
    bias: 15,
    ieee_top: true,
};

/// The value of `code` by the definition (f64 arithmetic, no bit tricks).
fn by_definition(l: &Layout, code: u8) -> f64 {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = ((code & 0x7F) >> l.mantissa_bits) as i32;
    let m = (code & ((1 << l.mantissa_bits) - 1)) as i32;
    let top = (1 << (7 - l.mantissa_bits)) - 1;
    let frac = m as f64 / (1 << l.mantissa_bits) as f64;
    if l.ieee_top && e == top {
        return if m == 0 {
            sign * f64::INFINITY
        } else {
            f64::NAN
        };
    }
    if !l.ieee_top && code & 0x7F == 0x7F {
        return f64::NAN;
    }
    if e == 0 {
        sign * frac * 2f64.powi(1 - l.bias)
    } else {
        sign * (1.0 + frac) * 2f64.powi(e - l.bias)
    }
}

fn oracle_decode<F: Fp8Format>(code: u8) -> f32 {
    match F::NAME {
        "e4m3" => float8::F8E4M3::from_bits(code).to_f32(),
        _ => float8::F8E5M2::from_bits(code).to_f32(),
    }
}

fn oracle_encode<F: Fp8Format>(x: f32) -> u8 {
    match F::NAME {
        "e4m3" => float8::F8E4M3::from_f32(x).to_bits(),
        _ => float8::F8E5M2::from_f32(x).to_bits(),
    }
}

fn same(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
}

fn decode_all<F: Fp8Format>(l: &Layout) {
    for c in 0..=255u8 {
        let ours = F::decode(c);
        let def = by_definition(l, c);
        assert!(
            same(ours as f64, def),
            "{} {c:#04x}: {ours} vs {def}",
            F::NAME
        );
        let o = oracle_decode::<F>(c);
        assert!(
            same(ours as f64, o as f64),
            "{} {c:#04x}: {ours} vs float8 {o}",
            F::NAME
        );
    }
}

#[test]
fn decode_every_code() {
    decode_all::<E4m3>(&E4M3);
    decode_all::<E5m2>(&E5M2);
}

#[test]
fn known_values() {
    assert_eq!(E4m3::decode(0x7E), 448.0);
    assert_eq!(E4m3::decode(0xFE), -448.0);
    assert_eq!(E4m3::decode(0x01), 2f32.powi(-9)); // smallest subnormal
    assert_eq!(E4m3::decode(0x08), 2f32.powi(-6)); // smallest normal
    assert_eq!(E4m3::decode(0x38), 1.0);
    assert!(E4m3::decode(0x7F).is_nan() && E4m3::decode(0xFF).is_nan());
    assert_eq!(E5m2::decode(0x7B), 57344.0);
    assert_eq!(E5m2::decode(0x01), 2f32.powi(-16));
    assert_eq!(E5m2::decode(0x3C), 1.0);
    assert_eq!(E5m2::decode(0x7C), f32::INFINITY);
    assert_eq!(E5m2::decode(0xFC), f32::NEG_INFINITY);
    assert!(E5m2::decode(0x7D).is_nan());
    assert_eq!(E4m3::decode(0x80).to_bits(), (-0.0f32).to_bits());
}

/// Codes of finite values.
fn finite_codes<F: Fp8Format>() -> impl Iterator<Item = u8> {
    (0..=255u8).filter(|&c| F::decode(c).is_finite())
}

fn round_trip<F: Fp8Format>() {
    let mut n = 0;
    for c in finite_codes::<F>() {
        assert_eq!(F::encode(F::decode(c)), c, "{} {c:#04x}", F::NAME);
        n += 1;
    }
    // e4m3fn: 256 minus 2 NaN codes; e5m2: minus 6 NaN and 2 infinity codes.
    assert_eq!(n, if F::NAME == "e4m3" { 254 } else { 248 });
}

#[test]
fn encode_decode_round_trip() {
    round_trip::<E4m3>();
    round_trip::<E5m2>();
}

/// Every midpoint between neighbouring finite magnitudes rounds to the even code, and one f32
/// ulp either side of it rounds to the nearer code.
fn ties<F: Fp8Format>() {
    let max = F::encode(F::MAX);
    for c in 0..max {
        let (lo, hi) = (F::decode(c), F::decode(c + 1));
        // Exact in f32: the midpoint needs one more mantissa bit than the format has.
        let mid = ((lo as f64 + hi as f64) / 2.0) as f32;
        assert_eq!((mid as f64) * 2.0, lo as f64 + hi as f64);
        let even = if c % 2 == 0 { c } else { c + 1 };
        for sign in [0u8, 0x80] {
            let s = if sign == 0 { 1.0 } else { -1.0 };
            assert_eq!(F::encode(s * mid), even | sign, "{} tie {mid}", F::NAME);
            let below = f32::from_bits(mid.to_bits() - 1);
            let above = f32::from_bits(mid.to_bits() + 1);
            assert_eq!(F::encode(s * below), c | sign, "{} below {mid}", F::NAME);
            assert_eq!(
                F::encode(s * above),
                (c + 1) | sign,
                "{} above {mid}",
                F::NAME
            );
        }
    }
}

#[test]
fn ties_round_to_even() {
    ties::<E4m3>();
    ties::<E5m2>();
}

fn saturation<F: Fp8Format>() {
    let max = F::encode(F::MAX);
    assert_eq!(F::decode(max), F::MAX);
    for x in [F::MAX * 1.0001, F::MAX * 2.0, 1e30, f32::MAX, f32::INFINITY] {
        assert_eq!(F::encode(x), max, "{} {x}", F::NAME);
        assert_eq!(F::encode(-x), max | 0x80, "{} -{x}", F::NAME);
    }
}

#[test]
fn saturates_to_max_finite() {
    saturation::<E4m3>();
    saturation::<E5m2>();
    // The tie between 448 and the (NaN) code above it would round to 480: saturated instead.
    assert_eq!(E4m3::encode(464.0), 0x7E);
    assert_eq!(E4m3::encode(479.0), 0x7E);
    assert_eq!(E5m2::encode(61440.0), 0x7B);
}

#[test]
fn nan_stays_nan() {
    for x in [
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7F80_0001),
        f32::from_bits(0xFFC0_1234),
    ] {
        assert!(E4m3::decode(E4m3::encode(x)).is_nan());
        assert!(E5m2::decode(E5m2::encode(x)).is_nan());
    }
}

#[test]
fn underflow_and_zero() {
    for f in [0.0f32, -0.0, f32::from_bits(1), 1e-30] {
        assert_eq!(E4m3::decode(E4m3::encode(f)), 0.0);
        assert_eq!(E5m2::decode(E5m2::encode(f)), 0.0);
    }
    // Half the smallest subnormal is a tie with zero (even): 0; just above it rounds up.
    assert_eq!(E4m3::encode(2f32.powi(-10)), 0x00);
    assert_eq!(E4m3::encode(2f32.powi(-10) * 1.0001), 0x01);
    assert_eq!(E5m2::encode(-(2f32.powi(-17))), 0x80);
}

#[test]
fn packed_words() {
    let w = encode4::<E4m3>([1.0, -2.0, 0.5, 448.0]);
    assert_eq!(w, 0x7E30_C038);
    assert_eq!(decode4::<E4m3>(w), [1.0, -2.0, 0.5, 448.0]);
    assert_eq!(decode4::<E5m2>(0x3C00_0000)[3], 1.0);
}

/// Ours against the oracle on one f32 (NaN: both NaN codes).
fn agrees<F: Fp8Format>(x: f32) -> Result<(), TestCaseError> {
    let (ours, theirs) = (F::encode(x), oracle_encode::<F>(x));
    if x.is_nan() {
        prop_assert!(F::decode(ours).is_nan() && F::decode(theirs).is_nan());
    } else {
        prop_assert_eq!(ours, theirs, "{} {} ({:#x})", F::NAME, x, x.to_bits());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    /// Any f32 bit pattern.
    #[test]
    fn encode_matches_oracle_any_bits(bits in any::<u32>()) {
        let x = f32::from_bits(bits);
        agrees::<E4m3>(x)?;
        agrees::<E5m2>(x)?;
    }

    /// Values inside the formats' ranges, where every rounding decision happens.
    #[test]
    fn encode_matches_oracle_in_range(m in -1.0f32..1.0, e in -20i32..17) {
        let x = m * 2f32.powi(e);
        agrees::<E4m3>(x)?;
        agrees::<E5m2>(x)?;
    }
}

/// Every f32 whose exponent lies in the formats' ranges, with a sparse mantissa sweep (all 2^23
/// mantissas of 60 binades would take too long on the CPU): against the oracle.
#[test]
fn encode_matches_oracle_sweep() {
    for biased in (127 - 26)..(127 + 17) {
        for m in (0..(1u32 << 23))
            .step_by(997)
            .chain([0x40_0000, 0x7F_FFFF, 0x10_0000])
        {
            for sign in [0, 0x8000_0000u32] {
                let x = f32::from_bits(sign | (biased << 23) | m);
                assert_eq!(E4m3::encode(x), oracle_encode::<E4m3>(x), "e4m3 {x}");
                assert_eq!(E5m2::encode(x), oracle_encode::<E5m2>(x), "e5m2 {x}");
            }
        }
    }
}
