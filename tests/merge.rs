//! The public GPU state-merge ops (`merge_state`, `merge_state_in_place`, `merge_states`)
//! against an f64 evaluation of the merge formula: random rows, heads, head dims 64/128/256,
//! 0–6 states with empty (`lse = −inf`) ones mixed in, both dtypes; bad input.
use ferrinfer::ops::{merge_state, merge_state_in_place, merge_states, MergeShape};
use ferrinfer::{Error, Float16, Gpu};
use ferrinfer_harness::{gpu_or_skip, proptest_cases, random_values, rng, to_f64, ErrorStats};
use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use rand::Rng;

/// `n` states per row: values `[rows, n, heads, D]` (as stored), lse `[rows, n, heads]`.
struct States<T> {
    v: Vec<T>,
    vf: Vec<f64>,
    s: Vec<f32>,
}

fn states<T: Float16>(seed: u64, shape: MergeShape, n: usize, empty: f64) -> States<T> {
    let mut r = rng(seed);
    let len = shape.seq_len * n * shape.num_heads * shape.head_dim;
    let (v, vf) = random_values::<T>(&mut r, len, 1.0);
    let s = (0..shape.seq_len * n * shape.num_heads)
        .map(|_| {
            if r.random_bool(empty) {
                f32::NEG_INFINITY
            } else {
                r.random_range(-20.0f32..20.0)
            }
        })
        .collect();
    States { v, vf, s }
}

/// The merge in f64: o `[rows, heads, D]`, lse `[rows, heads]`.
fn oracle(shape: MergeShape, n: usize, vf: &[f64], s: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let (hh, d) = (shape.num_heads, shape.head_dim);
    let mut o = vec![0.0; shape.seq_len * hh * d];
    let mut lse = vec![f64::NEG_INFINITY; shape.seq_len * hh];
    for i in 0..shape.seq_len {
        for h in 0..hh {
            let sj = |j: usize| s[(i * n + j) * hh + h] as f64;
            let m = (0..n).map(sj).fold(f64::NEG_INFINITY, f64::max);
            if m == f64::NEG_INFINITY {
                continue;
            }
            let w: Vec<f64> = (0..n).map(|j| (sj(j) - m).exp2()).collect();
            let den: f64 = w.iter().sum();
            for x in 0..d {
                let acc: f64 = (0..n)
                    .map(|j| w[j] * vf[((i * n + j) * hh + h) * d + x])
                    .sum();
                o[(i * hh + h) * d + x] = acc / den;
            }
            lse[i * hh + h] = m + den.log2();
        }
    }
    (o, lse)
}

fn compare(o: &[f64], lse: &[f32], ro: &[f64], rl: &[f64]) -> ErrorStats {
    let l: Vec<f64> = lse.iter().map(|&x| x as f64).collect();
    ErrorStats::compare(o, ro, Some((&l, rl)))
}

fn run_states<T: Float16>(gpu: &Gpu, seed: u64, shape: MergeShape, n: usize) -> ErrorStats {
    let st = states::<T>(seed, shape, n, 0.2);
    let (ro, rl) = oracle(shape, n, &st.vf, &st.s);
    let out_len = shape.seq_len * shape.num_heads * shape.head_dim;
    let v = gpu.upload(&st.v).unwrap();
    let s = gpu.upload(&st.s).unwrap();
    let mut o = gpu.upload(&vec![T::nan(); out_len]).unwrap();
    let mut l = gpu
        .upload(&vec![f32::NAN; shape.seq_len * shape.num_heads])
        .unwrap();
    merge_states(gpu, shape, n, &v, &s, &mut o, Some(&mut l)).unwrap();
    compare(
        &to_f64(&gpu.download(&o).unwrap()),
        &gpu.download(&l).unwrap(),
        &ro,
        &rl,
    )
}

/// Splits two-state data `[rows, 2, heads, D]` into separate `a` and `b` tensors.
fn split2<T: Copy>(x: &[T], rows: usize, per: usize) -> (Vec<T>, Vec<T>) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..rows {
        a.extend_from_slice(&x[(2 * i) * per..(2 * i + 1) * per]);
        b.extend_from_slice(&x[(2 * i + 1) * per..(2 * i + 2) * per]);
    }
    (a, b)
}

fn run_pair<T: Float16>(gpu: &Gpu, seed: u64, shape: MergeShape, in_place: bool) -> ErrorStats {
    let st = states::<T>(seed, shape, 2, 0.2);
    let (ro, rl) = oracle(shape, 2, &st.vf, &st.s);
    let per = shape.num_heads * shape.head_dim;
    let (va, vb) = split2(&st.v, shape.seq_len, per);
    let (sa, sb) = split2(&st.s, shape.seq_len, shape.num_heads);
    let (mut va, vb) = (gpu.upload(&va).unwrap(), gpu.upload(&vb).unwrap());
    let (mut sa, sb) = (gpu.upload(&sa).unwrap(), gpu.upload(&sb).unwrap());
    let (o, l) = if in_place {
        merge_state_in_place(gpu, shape, &mut va, &mut sa, &vb, &sb).unwrap();
        (va, sa)
    } else {
        let mut o = gpu.upload(&vec![T::nan(); shape.seq_len * per]).unwrap();
        let mut l = gpu
            .upload(&vec![f32::NAN; shape.seq_len * shape.num_heads])
            .unwrap();
        merge_state(gpu, shape, &va, &sa, &vb, &sb, &mut o, Some(&mut l)).unwrap();
        (o, l)
    };
    compare(
        &to_f64(&gpu.download(&o).unwrap()),
        &gpu.download(&l).unwrap(),
        &ro,
        &rl,
    )
}

/// Merged values are one rounding of an f32 sum of ≤ 6 terms: bf16 output rounding (2^-9
/// relative) dominates; lse is f32 math on inputs of magnitude ≤ 20.
fn ok(s: ErrorStats, bf: bool) -> bool {
    let tol = if bf { 5e-3 } else { 1e-3 };
    !s.has_nan && s.rel_l2 <= tol && s.lse_ok && s.lse_abs <= 1e-4
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_merge_ops_match_oracle() {
    let Some(gpu) = gpu_or_skip("gpu_merge_ops_match_oracle") else {
        return;
    };
    let cases = proptest_cases(48);
    let worst = std::cell::Cell::new(ErrorStats::default());
    let strategy = (
        1usize..40,
        1usize..6,
        prop::sample::select(vec![64usize, 128, 256]),
        0usize..7,
        0u8..3,
        any::<bool>(),
        any::<u64>(),
    );
    TestRunner::new(ProptestConfig::with_cases(cases))
        .run(&strategy, |(rows, heads, d, n, which, bf, seed)| {
            let shape = MergeShape {
                seq_len: rows,
                num_heads: heads,
                head_dim: d,
            };
            let s = match (which, bf) {
                (0, true) => run_states::<bf16>(&gpu, seed, shape, n),
                (0, false) => run_states::<f16>(&gpu, seed, shape, n),
                (w, true) => run_pair::<bf16>(&gpu, seed, shape, w == 2),
                (w, false) => run_pair::<f16>(&gpu, seed, shape, w == 2),
            };
            assert!(ok(s, bf), "{shape:?} n={n} op={which} bf16={bf}: {s:?}");
            worst.set(worst.get().worst(s));
            Ok(())
        })
        .unwrap();
    println!("gpu merge: {cases} random cases, worst {:?}", worst.get());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_merge_of_empty_states_is_zero_and_neg_inf() {
    let Some(gpu) = gpu_or_skip("gpu_merge_of_empty_states_is_zero_and_neg_inf") else {
        return;
    };
    let shape = MergeShape {
        seq_len: 3,
        num_heads: 2,
        head_dim: 128,
    };
    for n in [0usize, 3] {
        let len = shape.seq_len * n * 2 * 128;
        let v = gpu.upload(&vec![bf16::from_f32(1.0); len.max(1)]).unwrap();
        let s = gpu
            .upload(&vec![f32::NEG_INFINITY; (shape.seq_len * n * 2).max(1)])
            .unwrap();
        let mut o = gpu.upload(&vec![bf16::NAN; 3 * 2 * 128]).unwrap();
        let mut l = gpu.upload(&[f32::NAN; 6]).unwrap();
        merge_states(&gpu, shape, n, &v, &s, &mut o, Some(&mut l)).unwrap();
        assert!(gpu.download(&o).unwrap().iter().all(|x| x.to_f32() == 0.0));
        assert!(gpu
            .download(&l)
            .unwrap()
            .iter()
            .all(|&x| x == f32::NEG_INFINITY));
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn merge_bad_input_is_a_typed_error() {
    let Some(gpu) = gpu_or_skip("merge_bad_input_is_a_typed_error") else {
        return;
    };
    let shape = MergeShape {
        seq_len: 4,
        num_heads: 2,
        head_dim: 64,
    };
    let v = gpu.alloc::<f16>(4 * 3 * 2 * 64).unwrap();
    let s = gpu.alloc::<f32>(4 * 3 * 2).unwrap();
    let mut o = gpu.alloc::<f16>(4 * 2 * 64).unwrap();
    let bad_d = MergeShape {
        head_dim: 96,
        ..shape
    };
    assert!(matches!(
        merge_states(&gpu, bad_d, 3, &v, &s, &mut o, None),
        Err(Error::Unsupported { .. })
    ));
    assert!(matches!(
        merge_states(&gpu, shape, 4, &v, &s, &mut o, None),
        Err(Error::Shape { .. })
    ));
    let mut short = gpu.alloc::<f16>(4 * 2 * 64 - 1).unwrap();
    assert!(matches!(
        merge_states(&gpu, shape, 3, &v, &s, &mut short, None),
        Err(Error::Shape { .. })
    ));
    let sa = gpu.alloc::<f32>(7).unwrap();
    let va = gpu.alloc::<f16>(4 * 2 * 64).unwrap();
    assert!(matches!(
        merge_state(&gpu, shape, &va, &sa, &v, &s, &mut o, None),
        Err(Error::Shape { .. })
    ));
    merge_states(&gpu, shape, 3, &v, &s, &mut o, None).unwrap();
}
