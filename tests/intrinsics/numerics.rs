//! The approximate special functions and the 16-bit conversions.
use super::*;

/// Inputs of the special-function test: several ranges plus the special values.
fn fast_inputs() -> Vec<f32> {
    let mut r = rng(17);
    let mut x: Vec<f32> = Vec::new();
    x.extend((0..256).map(|_| r.random_range(-60.0f32..=60.0)));
    x.extend((0..256).map(|_| r.random_range(-2.0f32..=2.0)));
    x.extend((0..128).map(|_| {
        let m = 2f32.powf(r.random_range(-20.0f32..=6.0));
        if r.random::<bool>() {
            m
        } else {
            -m
        }
    }));
    x.extend((0..64).map(|_| r.random_range(0.9f32..=1.1)));
    x.extend([
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1.0,
        -1.0,
        0.5,
        2.0,
    ]);
    x
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn fast_math_approximations() {
    let Some(gpu) = gpu_or_skip("fast_math_approximations") else {
        return;
    };
    let x = fast_inputs();
    let fma_c = -3.71875f32;
    for got in with_poisons(|p| selftest::fast(&gpu, &x, fma_c, p)) {
        assert_eq!(got.len(), x.len() * selftest::FAST_FIELDS);
        for (i, &xi) in x.iter().enumerate() {
            let nf = selftest::FAST_FIELDS;
            let g = &got[nf * i..nf * (i + 1)];
            let xd = xi as f64;
            // Exact special results (NaN, ±inf, and anything of a non-finite input) must match
            // by value (±0 equal); everything else is compared with a tolerance.
            let special = |got: f32, want: f64| -> Option<bool> {
                if want.is_nan() {
                    Some(got.is_nan())
                } else if want.is_infinite() || !xi.is_finite() {
                    Some(got as f64 == want)
                } else {
                    None
                }
            };
            // ex2
            let want = xd.exp2();
            let ok = special(g[0], want)
                .unwrap_or_else(|| g[0].is_finite() && ulp_dist(g[0], want as f32) <= 3);
            assert!(ok, "ex2({xi:e}): got {:e}, want {want:e}", g[0]);
            // lg2 of |x|
            let ax = xd.abs();
            let want = ax.log2();
            let ok = special(g[1], want).unwrap_or_else(|| {
                if (0.5..=2.0).contains(&ax) {
                    (g[1] as f64 - want).abs() <= 2f64.powi(-21)
                } else {
                    g[1].is_finite() && ulp_dist(g[1], want as f32) <= 3
                }
            });
            assert!(ok, "lg2({ax:e}): got {:e}, want {want:e}", g[1]);
            // rcp
            let want = 1.0 / xd;
            let ok = special(g[2], want)
                .unwrap_or_else(|| g[2].is_finite() && ulp_dist(g[2], want as f32) <= 2);
            assert!(ok, "rcp({xi:e}): got {:e}, want {want:e}", g[2]);
            // tanh
            let want = xd.tanh();
            let ok = special(g[3], want).unwrap_or_else(|| {
                (g[3] as f64 - want).abs() <= 2f64.powf(-10.5) * want.abs() + 1e-30
            });
            assert!(ok, "tanh({xi:e}): got {:e}, want {want:e}", g[3]);
            // fma: exact (IEEE fused multiply-add, round to nearest even).
            let want = xi.mul_add(xi, fma_c);
            assert!(
                g[4].to_bits() == want.to_bits() || (g[4].is_nan() && want.is_nan()),
                "fma({xi:e}, {xi:e}, {fma_c}): got {:e}, want {want:e}",
                g[4]
            );
            check_sincos(xi, &g[5..7]);
        }
    }
}

/// `math::trig::sincos_fast` (fields 5 and 6 of `selftest_fast`): absolute error below 1e-6 for
/// `|x| < 2^22` (the reduction within 1.2e-7 plus `sin.approx`/`cos.approx`'s 2^-21 on
/// `[-pi, pi]`); NaN for non-finite input.
fn check_sincos(x: f32, g: &[f32]) {
    let (ws, wc) = (x as f64).sin_cos();
    if x.is_finite() {
        let e = (g[0] as f64 - ws).abs().max((g[1] as f64 - wc).abs());
        assert!(e < 1e-6, "sincos_fast({x:e}): got {g:?}, error {e:e}");
    } else {
        assert!(g[0].is_nan() && g[1].is_nan(), "sincos_fast({x:e}): {g:?}");
    }
}

/// The sine and cosine at RoPE angles, `position · inv_freq` up to 131072 positions (the other
/// fields overflow there and are checked on [`fast_inputs`]).
#[test]
#[ignore = "needs a CUDA GPU"]
fn sincos_at_rope_angles() {
    let Some(gpu) = gpu_or_skip("sincos_at_rope_angles") else {
        return;
    };
    let mut r = rng(19);
    let x: Vec<f32> = (0..4096)
        .map(|_| {
            let f = [1.0f32, 0.75, 0.1, 0.013_335_214][r.random_range(0..4)];
            r.random_range(0..131_072) as f32 * f
        })
        .collect();
    for got in with_poisons(|p| selftest::fast(&gpu, &x, 0.0, p)) {
        let nf = selftest::FAST_FIELDS;
        assert_eq!(got.len(), x.len() * nf);
        for (i, &xi) in x.iter().enumerate() {
            check_sincos(xi, &got[nf * i + 5..nf * i + 7]);
        }
    }
}

/// Compares an f32 bit pattern with the expected one, NaN matching any NaN.
fn same_f32(got: u32, want: u32) -> bool {
    got == want || (f32::from_bits(got).is_nan() && f32::from_bits(want).is_nan())
}

/// Compares a packed pair of 16-bit floats, NaN halves matching any NaN.
fn same_pair(got: u32, want: u32, is_nan: impl Fn(u16) -> bool) -> bool {
    (0..2).all(|h| {
        let (g, w) = ((got >> (16 * h)) as u16, (want >> (16 * h)) as u16);
        g == w || (is_nan(g) && is_nan(w))
    })
}

fn convert_inputs() -> Vec<[u32; 4]> {
    let mut r = rng(18);
    let mut vals: Vec<f32> = Vec::new();
    vals.extend((0..200).map(|_| r.random_range(-1.0f32..=1.0)));
    vals.extend((0..100).map(|_| r.random_range(-70000.0f32..=70000.0)));
    vals.extend((0..200).map(|_| {
        let m = 2f32.powf(r.random_range(-30.0f32..=16.0)) * r.random_range(1.0f32..2.0);
        if r.random::<bool>() {
            m
        } else {
            -m
        }
    }));
    // Exact ties: half an f16 ulp above a normal f16, and half a bf16 ulp above a bf16.
    vals.extend((0..100).map(|_| {
        let h = f16::from_f32(r.random_range(-1000.0f32..=1000.0));
        let h = if h.to_f32().abs() < 1e-4 { f16::ONE } else { h };
        f32::from_bits(h.to_f32().to_bits() + (1 << 12))
    }));
    vals.extend((0..100).map(|_| {
        let b = r.random::<u32>() & 0x3fff_0000 | 0x0080_0000; // normal, |x| < 2
        f32::from_bits(b | 0x8000)
    }));
    vals.extend([
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        65504.0,
        65520.0,
        -65520.0,
        5.960_464_5e-8,
        2.980_232_2e-8,
    ]);
    let mut out: Vec<[u32; 4]> = vals
        .chunks(2)
        .map(|p| {
            let hi = p.get(1).copied().unwrap_or(1.5);
            [p[0].to_bits(), hi.to_bits(), r.random(), r.random()]
        })
        .collect();
    // Also pair each value with a random partner in the other half.
    for v in vals.iter().rev().step_by(3) {
        out.push([
            r.random_range(-2.0f32..2.0).to_bits(),
            v.to_bits(),
            r.random(),
            r.random(),
        ]);
    }
    out
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn f16_bf16_conversions() {
    let Some(gpu) = gpu_or_skip("f16_bf16_conversions") else {
        return;
    };
    let input = convert_inputs();
    let f16_nan = |h: u16| f16::from_bits(h).is_nan();
    let bf16_nan = |h: u16| bf16::from_bits(h).is_nan();
    let f16_f32 = |h: u16| f16::from_bits(h).to_f32().to_bits();
    let bf16_f32 = |h: u16| bf16::from_bits(h).to_f32().to_bits();
    for got in with_poisons(|p| selftest::convert(&gpu, &input, p)) {
        assert_eq!(got.len(), input.len() * selftest::CONVERT_FIELDS);
        for (i, rec) in input.iter().enumerate() {
            let g = &got[12 * i..12 * i + 12];
            let (lo, hi) = (f32::from_bits(rec[0]), f32::from_bits(rec[1]));
            let what = format!(
                "record {i} (lo {lo:e}, hi {hi:e}, raw {:#x}, raw2 {:#x})",
                rec[2], rec[3]
            );
            let want_h = u32::from(f16::from_f32(lo).to_bits())
                | u32::from(f16::from_f32(hi).to_bits()) << 16;
            let want_b = u32::from(bf16::from_f32(lo).to_bits())
                | u32::from(bf16::from_f32(hi).to_bits()) << 16;
            assert!(
                same_pair(g[0], want_h, f16_nan),
                "{what}: f32x2_to_f16x2 got {:#010x}, want {want_h:#010x}",
                g[0]
            );
            assert!(
                same_pair(g[1], want_b, bf16_nan),
                "{what}: f32x2_to_bf16x2 got {:#010x}, want {want_b:#010x}",
                g[1]
            );
            // Unpacking the GPU's own packed words (so NaN payloads do not matter).
            let pairs = [
                (
                    2,
                    g[0],
                    &f16_f32 as &dyn Fn(u16) -> u32,
                    "f16x2_to_f32x2(packed)",
                ),
                (4, g[1], &bf16_f32, "bf16x2_to_f32x2(packed)"),
                (6, rec[2], &f16_f32, "f16x2_to_f32x2(raw)"),
                (8, rec[3], &bf16_f32, "bf16x2_to_f32x2(raw2)"),
                (10, rec[3], &f16_f32, "f16_to_f32(raw2 halves)"),
            ];
            for (at, word, cvt, name) in pairs {
                for h in 0..2 {
                    let want = cvt((word >> (16 * h)) as u16);
                    let gv = g[at + h];
                    assert!(
                        same_f32(gv, want),
                        "{what}: {name} half {h}: got {gv:#010x}, want {want:#010x}"
                    );
                }
            }
        }
    }
}
