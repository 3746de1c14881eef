//! The few-row products `gemv` and `gemv_silu` against an f64 oracle over the same 16-bit
//! values (for `gemv_silu`: the CPU twin's SiLU-and-mul rounded to the 16-bit type).
use super::*;

/// f64 `out[r, c] = Σ_j x[r, j] · w[c, j]` of the 16-bit values, and `Σ_j |x[r, j] · w[c, j]|`
/// (the error bound's scale).
fn oracle<T: Float16>(x: &[T], w: &[T], m: usize, k: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut out, mut abs) = (vec![0.0; m * n], vec![0.0; m * n]);
    for r in 0..m {
        for c in 0..n {
            for j in 0..k {
                let p = x[r * k + j].to_f32() as f64 * w[c * k + j].to_f32() as f64;
                out[r * n + c] += p;
                abs[r * n + c] += p.abs();
            }
        }
    }
    (out, abs)
}

fn run_gemv<T: Float16>(
    gpu: &Gpu,
    mk: &ModelKernels,
    (m, k, n): (usize, usize, usize),
    seed: u64,
) -> ErrorStats {
    let mut r = rng(seed);
    let x: Vec<T> = uniform(&mut r, m * k, 2.0)
        .into_iter()
        .map(T::from_f32)
        .collect();
    let w: Vec<T> = uniform(&mut r, n * k, 0.5)
        .into_iter()
        .map(T::from_f32)
        .collect();
    let (want, abs) = oracle(&x, &w, m, k, n);
    let slack = r.random_range(0..5);
    let xd = gpu.upload(&padded(&x, 8 * slack, T::nan())).unwrap();
    let wd = gpu.upload(&w).unwrap();
    let mut out = gpu.upload(&vec![f32::NAN; m * n + slack]).unwrap();
    mk.gemv(&xd, m, &wd, k, n, &mut out).unwrap();
    let got = unpadded(gpu.download(&out).unwrap(), m * n, "gemv out");
    // Products of 16-bit values are exact in f32 (8 + 8 or 11 + 11 significant bits ≤ 24).
    check_sums(
        &format!("gemv {:?} m={m} k={k} n={n}", T::DTYPE),
        &got,
        (&want, &abs),
        k,
        0.0,
    )
}

/// Checks every output against the oracle: each of the k − 1 f32 additions (fused into an fma)
/// rounds once, so |error| ≤ k·u·Σ|x·w| with u = 2⁻²⁴ (the recursive-summation bound, whatever
/// the order), plus the final f32 rounding of the oracle's value and `extra`·Σ|x·w| (the
/// inputs' own deviation, where the kernel forms them); returns the summary statistics.
fn check_sums(
    what: &str,
    got: &[f32],
    (want, abs): (&[f64], &[f64]),
    k: usize,
    extra: f64,
) -> ErrorStats {
    let u = f32::EPSILON as f64 / 2.0;
    for (i, &g) in got.iter().enumerate() {
        let err = (g as f64 - want[i]).abs();
        let bound = (k as f64 * u + extra) * abs[i] + u * want[i].abs() + f64::MIN_POSITIVE;
        assert!(
            err <= bound,
            "{what}: element {i}: got {g}, want {} (error {err:e} > {bound:e})",
            want[i]
        );
    }
    ErrorStats::compare(
        &got.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        want,
        None,
    )
}

/// `cases` random shapes (m ≤ 3 · GEMV_GROUP_ROWS: up to three row groups, k a multiple of 8 below `k_max`, n below `n_max`,
/// f16 or bf16) through `run`; prints the worst statistics.
fn random_shapes(
    label: &str,
    cases: u32,
    (k_max, n_max): (usize, usize),
    run: impl Fn((usize, usize, usize), bool, u64) -> ErrorStats,
) {
    let worst = std::cell::Cell::new(ErrorStats::default());
    let strategy = (
        1usize..=3 * ferrinfer::ops::model::GEMV_GROUP_ROWS,
        (1usize..k_max / 8).prop_map(|v| 8 * v),
        1usize..n_max,
        any::<bool>(),
        any::<u64>(),
    );
    TestRunner::new(ProptestConfig::with_cases(cases))
        .run(&strategy, |(m, k, n, half, seed)| {
            worst.set(worst.get().worst(run((m, k, n), half, seed)));
            Ok(())
        })
        .unwrap();
    println!("gpu {label}: {cases} random cases, worst {:?}", worst.get());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_gemv_matches_f64_oracle() {
    let Some(gpu) = gpu_or_skip("gpu_gemv_matches_f64_oracle") else {
        return;
    };
    let mk = ModelKernels::new(&gpu).unwrap();
    // SmolLM2's products at one token (QKV, output, gate|up, down, the LM head's width cut
    // down for the f64 oracle), then random shapes.
    let fixed = [
        (1usize, 576usize, 960usize),
        (1, 576, 576),
        (1, 576, 3072),
        (1, 1536, 576),
        (8, 576, 4096),
        (3, 4096, 130),
        // Batch-64 decode steps: eight row groups.
        (64, 576, 960),
    ];
    for (i, &s) in fixed.iter().enumerate() {
        run_gemv::<bf16>(&gpu, &mk, s, i as u64);
        run_gemv::<f16>(&gpu, &mk, s, 100 + i as u64);
    }
    random_shapes("gemv", proptest_cases(48), (3200, 700), |s, half, seed| {
        if half {
            run_gemv::<f16>(&gpu, &mk, s, seed)
        } else {
            run_gemv::<bf16>(&gpu, &mk, s, seed)
        }
    });
}

fn run_gemv_silu<T: Float16>(
    gpu: &Gpu,
    mk: &ModelKernels,
    (m, k, n): (usize, usize, usize),
    seed: u64,
) -> ErrorStats {
    let mut r = rng(seed);
    let gate_up = uniform(&mut r, m * 2 * k, 6.0);
    let mut act = vec![0.0f32; m * k];
    activation::silu_and_mul(&gate_up, k, &mut act).unwrap();
    let x: Vec<T> = act.iter().map(|&a| T::from_f32(a)).collect();
    let w: Vec<T> = uniform(&mut r, n * k, 0.5)
        .into_iter()
        .map(T::from_f32)
        .collect();
    let (want, abs) = oracle(&x, &w, m, k, n);
    let slack = r.random_range(0..5);
    let gd = gpu.upload(&padded(&gate_up, 8 * slack, f32::NAN)).unwrap();
    let wd = gpu.upload(&w).unwrap();
    let mut out = gpu.upload(&vec![f32::NAN; m * n + slack]).unwrap();
    mk.gemv_silu(&gd, m, &wd, k, n, &mut out).unwrap();
    let got = unpadded(gpu.download(&out).unwrap(), m * n, "gemv_silu out");
    // The summation bound plus the activations: the kernel's silu is within 4·10⁻⁶ relative
    // of the twin's (the silu_and_mul test's bound), so its rounding to T can land one T-ulp
    // (2⁻⁸ relative for bf16, 2⁻¹¹ for f16) away where the twin's value sits next to a rounding
    // boundary: at most (ulp + 4·10⁻⁶) · Σ|x·w| over the row.
    let ulp = if T::DTYPE == ferrinfer::DType::Bf16 {
        2f64.powi(-8)
    } else {
        2f64.powi(-11)
    };
    let what = format!("gemv_silu {:?} m={m} k={k} n={n}", T::DTYPE);
    check_sums(&what, &got, (&want, &abs), k, ulp + 4e-6)
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_gemv_silu_matches_f64_oracle() {
    let Some(gpu) = gpu_or_skip("gpu_gemv_silu_matches_f64_oracle") else {
        return;
    };
    let mk = ModelKernels::new(&gpu).unwrap();
    // SmolLM2's down projection at one and eight tokens, then random shapes.
    for (i, &s) in [(1usize, 1536usize, 576usize), (8, 1536, 576)]
        .iter()
        .enumerate()
    {
        run_gemv_silu::<bf16>(&gpu, &mk, s, i as u64);
        run_gemv_silu::<f16>(&gpu, &mk, s, 100 + i as u64);
    }
    random_shapes(
        "gemv_silu",
        proptest_cases(32),
        (2400, 400),
        |s, half, seed| {
            if half {
                run_gemv_silu::<f16>(&gpu, &mk, s, seed)
            } else {
                run_gemv_silu::<bf16>(&gpu, &mk, s, seed)
            }
        },
    );
}

/// A row's product is the same bits whatever rows share its launch: each row of a 37-row
/// launch (five row groups, the last partial) against the same row launched alone, for both
/// forms.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_gemv_rows_do_not_depend_on_the_batch() {
    let Some(gpu) = gpu_or_skip("gpu_gemv_rows_do_not_depend_on_the_batch") else {
        return;
    };
    let mk = ModelKernels::new(&gpu).unwrap();
    let (m, k, n) = (37usize, 1536usize, 576usize);
    let mut r = rng(77);
    let x: Vec<bf16> = uniform(&mut r, m * k, 2.0)
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    let gate_up = uniform(&mut r, m * 2 * k, 6.0);
    let w: Vec<bf16> = uniform(&mut r, n * k, 0.5)
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    let wd = gpu.upload(&w).unwrap();
    let run = |silu: bool, rows: std::ops::Range<usize>| -> Vec<f32> {
        let mut out = gpu.upload(&vec![f32::NAN; rows.len() * n]).unwrap();
        if silu {
            let g = gpu
                .upload(&gate_up[rows.start * 2 * k..rows.end * 2 * k])
                .unwrap();
            mk.gemv_silu(&g, rows.len(), &wd, k, n, &mut out).unwrap();
        } else {
            let xd = gpu.upload(&x[rows.start * k..rows.end * k]).unwrap();
            mk.gemv(&xd, rows.len(), &wd, k, n, &mut out).unwrap();
        }
        gpu.download(&out).unwrap()
    };
    for silu in [false, true] {
        let all = run(silu, 0..m);
        assert!(
            all.iter().all(|v| v.is_finite()),
            "an output was not written"
        );
        for row in [0, 7, 8, 20, 36] {
            let alone = run(silu, row..row + 1);
            let batched = &all[row * n..(row + 1) * n];
            let differ = alone
                .iter()
                .zip(batched)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            assert_eq!(
                differ, 0,
                "silu={silu} row {row}: {differ} of {n} outputs differ"
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gemv_bad_input_is_a_typed_error() {
    let Some(gpu) = gpu_or_skip("gemv_bad_input_is_a_typed_error") else {
        return;
    };
    let mk = ModelKernels::new(&gpu).unwrap();
    let x = gpu.alloc::<bf16>(8 * 64).unwrap();
    let w = gpu.alloc::<bf16>(32 * 64).unwrap();
    let mut out = gpu.alloc::<f32>(8 * 32).unwrap();
    let shape = |r: ferrinfer::Result<()>| matches!(r, Err(Error::Shape { .. }));
    let invalid = |r: ferrinfer::Result<()>| matches!(r, Err(Error::InvalidArgument { .. }));
    let unsupported = |r: ferrinfer::Result<()>| matches!(r, Err(Error::Unsupported { .. }));
    // More row groups than a grid holds; then 9 rows where x holds 8.
    assert!(unsupported(mk.gemv(&x, 600_000, &w, 64, 32, &mut out)));
    assert!(shape(mk.gemv(&x, 9, &w, 64, 32, &mut out)));
    assert!(invalid(mk.gemv(&x, 1, &w, 60, 32, &mut out)));
    assert!(invalid(mk.gemv(&x, 1, &w, 0, 32, &mut out)));
    assert!(invalid(mk.gemv(&x, 1, &w, 64, 0, &mut out)));
    assert!(shape(mk.gemv(&x, 8, &w, 72, 16, &mut out)));
    assert!(shape(mk.gemv(&x, 1, &w, 64, 33, &mut out)));
    assert!(shape(mk.gemv(
        &x,
        8,
        &w,
        64,
        32,
        &mut gpu.alloc::<f32>(255).unwrap()
    )));
    mk.gemv(&x, 0, &w, 64, 32, &mut out).unwrap();
    mk.gemv(&x, 8, &w, 64, 32, &mut out).unwrap();
    // gemv_silu: gate_up [m, 2k] f32.
    let gu = gpu.alloc::<f32>(8 * 128).unwrap();
    assert!(unsupported(
        mk.gemv_silu(&gu, 600_000, &w, 64, 32, &mut out)
    ));
    assert!(shape(mk.gemv_silu(&gu, 9, &w, 64, 32, &mut out)));
    assert!(invalid(mk.gemv_silu(&gu, 1, &w, 12, 32, &mut out)));
    assert!(shape(mk.gemv_silu(&gu, 8, &w, 72, 16, &mut out)));
    assert!(shape(mk.gemv_silu(
        &gu,
        8,
        &w,
        64,
        32,
        &mut gpu.alloc::<f32>(255).unwrap()
    )));
    mk.gemv_silu(&gu, 8, &w, 64, 32, &mut out).unwrap();
    gpu.synchronize().unwrap();
}
