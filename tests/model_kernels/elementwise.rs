//! SiLU-and-mul, 16-bit → f32, embedding gather and argmax against their CPU twins.
use super::*;

fn run_silu<O: Out>(gpu: &Gpu, mk: &ModelKernels, rows: usize, f: usize, seed: u64) -> ErrorStats {
    let mut r = rng(seed);
    let slack = r.random_range(0..5);
    let x = uniform(&mut r, rows * 2 * f, 8.0);
    let mut want = vec![0.0; rows * f];
    activation::silu_and_mul(&x, f, &mut want).unwrap();
    let xd = gpu.upload(&padded(&x, slack, 0.0)).unwrap();
    let mut out = gpu.upload(&vec![O::nan(); rows * f + slack]).unwrap();
    mk.silu_and_mul(&xd, rows, f, &mut out).unwrap();
    let got: Vec<f32> = unpadded(gpu.download(&out).unwrap(), rows * f, "silu_and_mul out")
        .into_iter()
        .map(O::widen)
        .collect();
    // silu(g) · u with e^{−g} from ex2.approx: ≤ 2 ulp, plus the rounding of −g·log2(e)
    // (|g| ≤ 8: ≤ 11.6 · 2⁻²⁴ · ln 2 ≈ 5·10⁻⁷ relative), against the twin's 1-ulp exp;
    // silu's relative error is at most e^{−g}'s, then ≤ 3 roundings (sum, division,
    // product): ≈ 1.2·10⁻⁶ in all; 4·10⁻⁶ relative; then the rounding to O (`out_bound`).
    check("silu_and_mul", &got, &want, out_bound::<O>(4e-6))
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_silu_and_mul_matches_cpu_twin() {
    let Some(gpu) = gpu_or_skip("gpu_silu_and_mul_matches_cpu_twin") else {
        return;
    };
    let mk = ModelKernels::new(&gpu).unwrap();
    let cases = proptest_cases(32);
    let worst = std::cell::Cell::new(ErrorStats::default());
    let strategy = (
        1usize..24,
        prop_oneof![
            prop::sample::select(vec![1usize, 3, 1536, 14_336]),
            1usize..5000
        ],
        0usize..3,
        any::<u64>(),
    );
    TestRunner::new(ProptestConfig::with_cases(cases))
        .run(&strategy, |(rows, f, out, seed)| {
            let s = with_out!(out, run_silu(&gpu, &mk, rows, f, seed));
            worst.set(worst.get().worst(s));
            Ok(())
        })
        .unwrap();
    println!(
        "gpu silu_and_mul: {cases} random cases, worst {:?}",
        worst.get()
    );
}

fn run_to_f32<T: Float16>(gpu: &Gpu, mk: &ModelKernels, n: usize, seed: u64) {
    let mut r = rng(seed);
    let x: Vec<T> = uniform(&mut r, n, 100.0)
        .into_iter()
        .map(T::from_f32)
        .collect();
    // At least one element of slack: no zero-length allocations at n = 0.
    let slack = r.random_range(1..4);
    let xd = gpu.upload(&padded(&x, slack, T::nan())).unwrap();
    let mut out = gpu.upload(&vec![f32::NAN; n + slack]).unwrap();
    mk.to_f32(&xd, n, &mut out).unwrap();
    let got = unpadded(gpu.download(&out).unwrap(), n, "to_f32 out");
    // Widening is exact.
    for (i, (g, x)) in got.iter().zip(&x).enumerate() {
        assert_eq!(
            g.to_bits(),
            x.to_f32().to_bits(),
            "{:?} n={n} element {i}",
            T::DTYPE
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_to_f32_is_exact() {
    let Some(gpu) = gpu_or_skip("gpu_to_f32_is_exact") else {
        return;
    };
    let mk = ModelKernels::new(&gpu).unwrap();
    for (i, n) in [0usize, 1, 2, 3, 511, 512, 513, 9 * 64, 4097, 100_001]
        .into_iter()
        .enumerate()
    {
        run_to_f32::<f16>(&gpu, &mk, n, i as u64);
        run_to_f32::<bf16>(&gpu, &mk, n, 50 + i as u64);
    }
    // Specials survive: ±0, ±inf, NaN, subnormals.
    let s = [
        0.0f32,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e-7,
        65504.0,
    ];
    let x: Vec<f16> = s.iter().map(|&v| f16::from_f32(v)).collect();
    let xd = gpu.upload(&x).unwrap();
    let mut out = gpu.alloc::<f32>(x.len()).unwrap();
    mk.to_f32(&xd, x.len(), &mut out).unwrap();
    let got = gpu.download(&out).unwrap();
    for (g, x) in got.iter().zip(&x) {
        assert_eq!(g.to_bits(), x.to_f32().to_bits());
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_gather_rows_copies_rows_and_poisons_bad_ids() {
    let Some(gpu) = gpu_or_skip("gpu_gather_rows_copies_rows_and_poisons_bad_ids") else {
        return;
    };
    let mk = ModelKernels::new(&gpu).unwrap();
    let cases = proptest_cases(32);
    let strategy = (
        1usize..200,
        prop_oneof![prop::sample::select(vec![1usize, 576, 4096]), 1usize..1000],
        1usize..40,
        0usize..3,
        any::<u64>(),
    );
    TestRunner::new(ProptestConfig::with_cases(cases))
        .run(&strategy, |(rows, dim, n, out, seed)| {
            with_out!(out, run_gather(&gpu, &mk, rows, dim, n, seed));
            Ok(())
        })
        .unwrap();
}

fn run_gather<O: Out>(gpu: &Gpu, mk: &ModelKernels, rows: usize, dim: usize, n: usize, seed: u64) {
    let mut r = rng(seed);
    let table: Vec<O> = uniform(&mut r, rows * dim, 3.0)
        .into_iter()
        .map(O::from_f32)
        .collect();
    // Mostly valid ids; ~10% out of range (the first invalid id, a bit beyond, u32::MAX).
    let ids: Vec<u32> = (0..n)
        .map(|_| match r.random_range(0..20) {
            0 => rows as u32,
            1 => u32::MAX,
            _ => r.random_range(0..rows as u32),
        })
        .collect();
    let slack = r.random_range(0..4);
    let td = gpu
        .upload(&padded(&table, slack, O::from_f32(0.0)))
        .unwrap();
    let idd = gpu.upload(&padded(&ids, slack, 0)).unwrap();
    // Zeros, then poisoned slack: an invalid id must write NaN itself, not leave the poison.
    let mut out = gpu
        .upload(&padded(&vec![O::from_f32(0.0); n * dim], slack, O::nan()))
        .unwrap();
    mk.gather_rows(&td, rows, dim, &idd, n, &mut out).unwrap();
    let got: Vec<f32> = unpadded(gpu.download(&out).unwrap(), n * dim, "gather_rows out")
        .into_iter()
        .map(O::widen)
        .collect();
    for (i, &id) in ids.iter().enumerate() {
        let g = &got[i * dim..(i + 1) * dim];
        if (id as usize) < rows {
            // A copy: bit-identical (widening is exact, so comparing widened bits suffices).
            let w = &table[id as usize * dim..(id as usize + 1) * dim];
            assert!(
                g.iter()
                    .zip(w)
                    .all(|(a, b)| a.to_bits() == (*b).widen().to_bits()),
                "row {i} (id {id})"
            );
        } else {
            assert!(
                g.iter().all(|x| x.is_nan()),
                "row {i}: id {id} ≥ {rows} must give NaN"
            );
        }
    }
}

fn run_argmax(gpu: &Gpu, mk: &ModelKernels, seed: u64, rows: usize, vocab: usize) {
    let mut r = rng(seed);
    let mut logits = uniform(&mut r, rows * vocab, 30.0);
    for row in logits.chunks_mut(vocab) {
        match r.random_range(0..5) {
            // Ties: the maximum repeated at a later and an earlier index (the first wins).
            0 if vocab > 2 => {
                let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) + 1.0;
                let (a, b) = (r.random_range(0..vocab), r.random_range(0..vocab));
                row[a] = m;
                row[b] = m;
            }
            // A row of -inf: index 0.
            1 => row.fill(f32::NEG_INFINITY),
            // A NaN somewhere: u32::MAX.
            2 => {
                let i = r.random_range(0..vocab);
                row[i] = f32::NAN;
            }
            _ => {}
        }
    }
    let want: Vec<u32> = logits
        .chunks(vocab)
        .map(|row| sampling::argmax(row).unwrap_or(u32::MAX)) // the twin errs on NaN rows
        .collect();
    let slack = r.random_range(0..3);
    let ld = gpu.upload(&padded(&logits, slack, 0.0)).unwrap();
    let mut out = gpu.upload(&vec![POISON_ID; rows + slack]).unwrap();
    mk.argmax(&ld, rows, vocab, &mut out).unwrap();
    let got = unpadded(gpu.download(&out).unwrap(), rows, "argmax out");
    // Indices: exact.
    assert_eq!(got, want, "rows={rows} vocab={vocab}");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_argmax_matches_cpu_twin() {
    let Some(gpu) = gpu_or_skip("gpu_argmax_matches_cpu_twin") else {
        return;
    };
    let mk = ModelKernels::new(&gpu).unwrap();
    let cases = proptest_cases(32);
    let strategy = (
        1usize..9,
        prop_oneof![
            prop::sample::select(vec![1usize, 2, 1000, 49_152, 128_256, 262_144]),
            1usize..70_000
        ],
        any::<u64>(),
    );
    TestRunner::new(ProptestConfig::with_cases(cases))
        .run(&strategy, |(rows, vocab, seed)| {
            run_argmax(&gpu, &mk, seed, rows, vocab);
            Ok(())
        })
        .unwrap();
    // A batch of 64 decode rows at SmolLM2's vocabulary.
    run_argmax(&gpu, &mk, 9, 64, 49_152);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn elementwise_bad_input_is_a_typed_error() {
    let Some(gpu) = gpu_or_skip("elementwise_bad_input_is_a_typed_error") else {
        return;
    };
    let mk = ModelKernels::new(&gpu).unwrap();
    let shape = |r: ferrinfer::Result<()>| matches!(r, Err(Error::Shape { .. }));
    let invalid = |r: ferrinfer::Result<()>| matches!(r, Err(Error::InvalidArgument { .. }));
    let overflow = |r: ferrinfer::Result<()>| matches!(r, Err(Error::Overflow { .. }));

    // silu_and_mul: x [4, 2·8], out [4, 8].
    let x = gpu.alloc::<f32>(64).unwrap();
    let mut out = gpu.alloc::<f32>(32).unwrap();
    assert!(invalid(mk.silu_and_mul(&x, 4, 0, &mut out)));
    assert!(shape(mk.silu_and_mul(&x, 5, 8, &mut out)));
    assert!(shape(mk.silu_and_mul(
        &x,
        4,
        8,
        &mut gpu.alloc::<f32>(31).unwrap()
    )));
    assert!(overflow(mk.silu_and_mul(&x, usize::MAX, 8, &mut out)));
    mk.silu_and_mul(&x, 4, 8, &mut out).unwrap();
    mk.silu_and_mul(&x, 0, 8, &mut out).unwrap();

    // to_f32.
    let h = gpu.alloc::<f16>(10).unwrap();
    assert!(shape(mk.to_f32(&h, 11, &mut out)));
    assert!(shape(mk.to_f32(&h, 10, &mut gpu.alloc::<f32>(9).unwrap())));
    mk.to_f32(&h, 10, &mut out).unwrap();

    // gather_rows: table [8, 4], ids [3], out [3, 4].
    let table = gpu.alloc::<f32>(32).unwrap();
    let ids = gpu.alloc::<u32>(3).unwrap();
    let mut g = gpu.alloc::<f32>(12).unwrap();
    assert!(invalid(mk.gather_rows(&table, 0, 4, &ids, 3, &mut g)));
    assert!(invalid(mk.gather_rows(&table, 8, 0, &ids, 3, &mut g)));
    assert!(shape(mk.gather_rows(&table, 9, 4, &ids, 3, &mut g)));
    assert!(shape(mk.gather_rows(&table, 8, 4, &ids, 4, &mut out)));
    assert!(shape(mk.gather_rows(
        &table,
        8,
        4,
        &ids,
        3,
        &mut gpu.alloc::<f32>(11).unwrap()
    )));
    assert!(overflow(mk.gather_rows(
        &table,
        usize::MAX,
        4,
        &ids,
        3,
        &mut g
    )));
    mk.gather_rows(&table, 8, 4, &ids, 3, &mut g).unwrap();
    // 16-bit tables and outputs are checked alike.
    let table16 = gpu.alloc::<bf16>(32).unwrap();
    assert!(shape(mk.gather_rows(
        &table16,
        8,
        4,
        &ids,
        3,
        &mut gpu.alloc::<bf16>(11).unwrap()
    )));
    assert!(shape(mk.silu_and_mul(
        &x,
        4,
        8,
        &mut gpu.alloc::<f16>(31).unwrap()
    )));

    // argmax: logits [2, 16], out [2].
    let logits = gpu.alloc::<f32>(32).unwrap();
    let mut am = gpu.alloc::<u32>(2).unwrap();
    assert!(invalid(mk.argmax(&logits, 2, 0, &mut am)));
    assert!(shape(mk.argmax(&logits, 2, 17, &mut am)));
    assert!(shape(mk.argmax(
        &logits,
        3,
        16,
        &mut gpu.alloc::<u32>(3).unwrap()
    )));
    assert!(shape(mk.argmax(
        &logits,
        2,
        16,
        &mut gpu.alloc::<u32>(1).unwrap()
    )));
    assert!(overflow(mk.argmax(&logits, usize::MAX, 16, &mut am)));
    mk.argmax(&logits, 2, 16, &mut am).unwrap();
    gpu.synchronize().unwrap();
}
