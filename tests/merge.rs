//! The public GPU state-merge ops (`merge_state`, `merge_state_in_place`, `merge_states`)
//! against an f64 evaluation of the merge formula: random rows, heads, head dims 64/128/256,
//! 0–6 states with empty (`lse = −inf`) ones mixed in, both dtypes; bad input.
use ferrinfer::ops::{merge_state, merge_state_in_place, merge_states, MergeShape};
use ferrinfer::{Error, Float16, Gpu};
use ferrinfer_harness::merge::{merge_oracle, merge_within, split2, states};
use ferrinfer_harness::{gpu_or_skip, proptest_cases, rng, to_f64, ErrorStats};
use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

fn compare(o: &[f64], lse: &[f32], ro: &[f64], rl: &[f64]) -> ErrorStats {
    let l: Vec<f64> = lse.iter().map(|&x| x as f64).collect();
    ErrorStats::compare(o, ro, Some((&l, rl)))
}

fn run_states<T: Float16>(gpu: &Gpu, seed: u64, shape: MergeShape, n: usize) -> ErrorStats {
    let st = states::<T>(&mut rng(seed), shape, n, 0.2);
    let (ro, rl) = merge_oracle(shape, n, &st.vf, &st.s);
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

fn run_pair<T: Float16>(gpu: &Gpu, seed: u64, shape: MergeShape, in_place: bool) -> ErrorStats {
    let st = states::<T>(&mut rng(seed), shape, 2, 0.2);
    let (ro, rl) = merge_oracle(shape, 2, &st.vf, &st.s);
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
            assert!(
                merge_within(&s, bf),
                "{shape:?} n={n} op={which} bf16={bf}: {s:?}"
            );
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
