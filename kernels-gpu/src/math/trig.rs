//! Accurate single-precision sine and cosine of one argument, for RoPE angles.
//!
//! RoPE rotates pair `i` of a token at position `p` by `p · inv_freq[i]` radians; with
//! `inv_freq[0] = 1` the angle is the position itself, thousands to hundreds of thousands of
//! radians. The SFU's `sin.approx.f32`/`cos.approx.f32` lose all accuracy there (their error
//! grows with the argument), so this is a range-reduced implementation in plain f32 arithmetic:
//!
//! 1. `j = rint(x · 2/π)` (round to nearest by the `1.5·2²³` trick, valid for `|x·2/π| < 2²²`);
//! 2. `r = x − j·π/2` by three fused multiply-adds against π/2 split into three f32 parts
//!    (Cody–Waite): the first step is exact (for `j ≥ 1` the difference is a multiple of 2⁻²³
//!    below 2 in magnitude), the other two round once each, so `r` is within about one ulp of
//!    the exact reduced argument;
//! 3. minimax polynomials on `|r| ≤ π/4` (Cephes' `sinf`/`cosf` coefficients, about 1 ulp),
//!    combined by the quadrant `j mod 4`.
//!
//! Accuracy (host tests, against `f64` sine/cosine of the same f32 argument): absolute error
//! below 2.5·10⁻⁷ (measured: 9.2·10⁻⁸) for every `position · inv_freq` with positions
//! `0..131072`, and below 10⁻⁶ for `|x| ≤ 2²⁰·π`. Beyond `|x| ≈ 6.6·10⁶` radians the reduction
//! is no longer accurate (the result is unspecified, possibly NaN, but computing it never
//! faults); NaN and infinities give NaN. Host and device run this same code (`fma` is
//! `fma.rn.f32` on the device and `f32::mul_add` on the host; the device may also fuse
//! `x·2/π + 1.5·2²³`, which can move `j` only where `x·2/π` is within rounding of a
//! half-integer, where either choice leaves `|r|` at about π/4 and is accurate).
use super::fast::fma;

/// 2/π.
const FRAC_2_PI: f32 = core::f32::consts::FRAC_2_PI;
/// π/2, leading 24 bits (`0x3fc90fdb`, 1.5707964).
const PIO2_HI: f32 = f32::from_bits(0x3fc9_0fdb);
/// π/2 − `PIO2_HI`, leading 24 bits (−4.371139e-8).
const PIO2_MID: f32 = f32::from_bits(0xb33b_bd2e);
/// The remainder π/2 − `PIO2_HI` − `PIO2_MID` (−1.7151245e-15).
const PIO2_LO: f32 = f32::from_bits(0xa6f7_2ced);
/// `1.5 · 2²³`: adding and subtracting it rounds an f32 below 2²² to the nearest integer.
const ROUND: f32 = 12_582_912.0;

/// `sin(r)` for `|r| ≤ π/4` (a little beyond is fine).
#[inline(always)]
fn sin_poly(r: f32) -> f32 {
    let z = r * r;
    let p = fma(fma(-1.951_529_6e-4, z, 8.332_161e-3), z, -1.666_665_5e-1);
    fma(r * z, p, r)
}

/// `cos(r)` for `|r| ≤ π/4`.
#[inline(always)]
fn cos_poly(r: f32) -> f32 {
    let z = r * r;
    let p = fma(fma(2.443_315_7e-5, z, -1.388_731_6e-3), z, 4.166_664_6e-2);
    fma(z * z, p, fma(-0.5, z, 1.0))
}

/// `(sin x, cos x)`, accurate to about 2 ulp of 1 for `|x|` up to ~10⁶ (see the module docs).
#[inline(always)]
pub fn sincos(x: f32) -> (f32, f32) {
    let j = (x * FRAC_2_PI + ROUND) - ROUND;
    let r = fma(j, -PIO2_HI, x);
    let r = fma(j, -PIO2_MID, r);
    let r = fma(j, -PIO2_LO, r);
    let (s, c) = (sin_poly(r), cos_poly(r));
    // `as i32` saturates (and maps NaN to 0): no trap, and NaN `x` still gives NaN through `r`.
    match (j as i32) & 3 {
        0 => (s, c),
        1 => (c, -s),
        2 => (-s, -c),
        _ => (-c, s),
    }
}

/// 2π, leading 24 bits (`0x40c90fdb`, 6.2831855).
const TAU_HI: f32 = f32::from_bits(0x40c9_0fdb);
/// 2π − `TAU_HI` (−1.7484555e-7); the rest (about 10⁻¹⁴) is below every error here.
const TAU_LO: f32 = f32::from_bits(0xb43b_bd2e);

/// `(sin x, cos x)` for the attention kernels' RoPE (each key row rotated on the fly, where the
/// polynomial [`sincos`] costs about four times the rest of the rotation): the argument is
/// reduced to `r = x − j·2π ∈ [−π, π]` exactly as in [`sincos`] (`j = rint(x/2π)`; the first
/// fused step is exact, the second rounds once, within 1.2·10⁻⁷), then the device's
/// `sin.approx`/`cos.approx` (absolute error about 2⁻²¹ on `[−π, π]`) give both values, with
/// no quadrant logic. Absolute error below 10⁻⁶ for `|x| < 2²²` (the device bound is checked on
/// the GPU by `tests/intrinsics`); the host twin evaluates `r` with `std`'s sine and cosine.
#[inline(always)]
pub fn sincos_fast(x: f32) -> (f32, f32) {
    let j = (x * (0.25 * FRAC_2_PI) + ROUND) - ROUND;
    let r = fma(j, -TAU_HI, x);
    let r = fma(j, -TAU_LO, r);
    #[cfg(target_arch = "nvptx64")]
    {
        (
            crate::arch::fast::sin_approx(r),
            crate::arch::fast::cos_approx(r),
        )
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        r.sin_cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Largest absolute error of `sincos` against f64 over `xs`.
    fn worst(xs: impl Iterator<Item = f32>) -> (f64, f32) {
        let mut w = (0.0f64, 0.0f32);
        for x in xs {
            let (s, c) = sincos(x);
            let (rs, rc) = (x as f64).sin_cos();
            let e = (s as f64 - rs).abs().max((c as f64 - rc).abs());
            if e > w.0 {
                w = (e, x);
            }
        }
        w
    }

    #[test]
    fn split_pi_over_2_is_exact_enough() {
        // f64's π/2 is itself only within 6·10⁻¹⁷ of π/2; the three parts carry ~72 bits.
        let rest = core::f64::consts::FRAC_PI_2 - PIO2_HI as f64 - PIO2_MID as f64;
        assert!((rest - PIO2_LO as f64).abs() < 1e-16, "{rest:e}");
        assert_eq!(PIO2_HI, core::f32::consts::FRAC_PI_2);
    }

    #[test]
    fn split_two_pi_is_exact_enough() {
        let rest = core::f64::consts::TAU - TAU_HI as f64;
        assert!((rest - TAU_LO as f64).abs() < 1e-14, "{rest:e}");
        assert_eq!(TAU_HI, core::f32::consts::TAU);
    }

    /// The fast form's reduction (the host twin's only rounding beyond `std`) over every RoPE
    /// angle of the test below and large arguments.
    #[test]
    fn fast_reduction_is_accurate() {
        let mut w = 0.0f64;
        for f in [1.0f32, 0.5, 0.1, 0.75, 0.999_999, 0.013_335_214] {
            for p in 0..131_072 {
                let x = p as f32 * f;
                let (s, c) = sincos_fast(x);
                let (rs, rc) = (x as f64).sin_cos();
                w = w.max((s as f64 - rs).abs()).max((c as f64 - rc).abs());
            }
        }
        assert!(w < 3e-7, "worst {w:e}");
        let (s, c) = sincos_fast(0.0);
        assert_eq!((s, c), (0.0, 1.0));
        assert!(sincos_fast(f32::NAN).0.is_nan());
    }

    #[test]
    fn small_arguments_match_std() {
        let (e, at) = worst((-20_000..=20_000).map(|i| i as f32 * 1e-3));
        assert!(e < 2e-7, "error {e} at {at}");
        assert_eq!(sincos(0.0), (0.0, 1.0));
    }

    /// Every RoPE angle `position · inv_freq` for positions 0..131072 at a spread of
    /// frequencies, among them 1 (the angle is the position) and Llama's base-θ schedules.
    #[test]
    fn rope_angles_up_to_131072_positions() {
        let mut freqs = vec![1.0f32, 0.5, 0.1, 0.75, 0.999_999];
        for theta in [10_000f64, 100_000.0, 500_000.0] {
            for i in [1usize, 3, 7, 15, 31, 63] {
                freqs.push((1.0 / theta.powf(2.0 * i as f64 / 128.0)) as f32);
            }
        }
        let mut all = 0.0f64;
        for f in freqs {
            let (e, at) = worst((0..131_072).map(|p| p as f32 * f));
            assert!(e < 2.5e-7, "inv_freq {f}: error {e} at {at}");
            all = all.max(e);
        }
        println!("sincos: worst absolute error over RoPE angles {all:e}");
    }

    #[test]
    fn large_and_special_arguments() {
        // Up to 2^20·π: still accurate to a few ulp.
        let (e, at) = worst((0..200_000u32).map(|i| i as f32 * 16.47 + 0.25));
        assert!(e < 1e-6, "error {e} at {at}");
        // Far beyond: unspecified values, but never a fault.
        for x in [1e7f32, 3.3e8, 2.1e9, f32::MAX] {
            let _ = sincos(x);
        }
        assert!(sincos(f32::NAN).0.is_nan());
        assert!(sincos(f32::INFINITY).0.is_nan());
        // Odd symmetry.
        for x in [0.3f32, 2.0, 1234.5, 99_999.0] {
            let (s, c) = sincos(x);
            let (sn, cn) = sincos(-x);
            assert_eq!((s, c), (-sn, cn));
        }
    }
}
