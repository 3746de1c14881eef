//! Single-request decode on the GPU against the f64 oracle.
//!
//! Every case poisons `out` and `lse` with NaN before the launch, so an element the kernels
//! never wrote shows up as NaN and fails. Inputs are random (never zeros) and rounded to the
//! storage type before the oracle sees them. Bounds: `ferrinfer_harness::tolerance`.
use ferrinfer::ops::single_decode::{KvStrides, SingleDecode};
use ferrinfer::reference::attention;
use ferrinfer::{AttentionOptions, DType, Error, Float16, Gpu, HeadConfig};
use ferrinfer_harness::{
    gpu_or_skip, proptest_cases, random_values, rng, to_f64, tolerance, ErrorStats,
};
use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

/// One decode problem. `pad_n`/`pad_h` widen the K/V strides beyond contiguous (elements,
/// multiples of 8) to model views into a fused QKV buffer.
#[derive(Clone, Debug)]
struct Case {
    heads: HeadConfig,
    kv_len: usize,
    opts: AttentionOptions,
    pad_n: usize,
    pad_h: usize,
    seed: u64,
}

fn run_case<T: Float16>(gpu: &Gpu, c: &Case) -> ErrorStats {
    let h = c.heads;
    let d = h.head_dim;
    let mut r = rng(c.seed);
    let st = KvStrides {
        stride_n: h.num_kv_heads * (d + c.pad_h) + c.pad_n,
        stride_h: d + c.pad_h,
    };
    let kv_elems = st.required_len(&h, c.kv_len).unwrap();
    let (q, qf) = random_values::<T>(&mut r, h.num_qo_heads * d, 2.0);
    let (k, kf_strided) = random_values::<T>(&mut r, kv_elems, 2.0);
    let (v, vf_strided) = random_values::<T>(&mut r, kv_elems, 1.0);
    // Gather the strided K/V into the oracle's contiguous layout.
    let gather = |src: &[f64]| {
        let mut out = Vec::with_capacity(c.kv_len * h.num_kv_heads * d);
        for t in 0..c.kv_len {
            for kh in 0..h.num_kv_heads {
                let o = t * st.stride_n + kh * st.stride_h;
                out.extend_from_slice(&src[o..o + d]);
            }
        }
        out
    };
    let reference = attention(
        &qf,
        &gather(&kf_strided),
        &gather(&vf_strided),
        &h,
        1,
        c.kv_len,
        &c.opts,
    )
    .unwrap();

    let mut op = SingleDecode::new(gpu, h, T::DTYPE, c.opts).unwrap();
    let qd = gpu.upload(&q).unwrap();
    let kd = gpu.upload(&k).unwrap();
    let vd = gpu.upload(&v).unwrap();
    let mut od = gpu.upload(&vec![T::nan(); h.num_qo_heads * d]).unwrap();
    let mut ld = gpu.upload(&vec![f32::NAN; h.num_qo_heads]).unwrap();
    op.run_strided(&qd, &kd, st, &vd, st, c.kv_len, &mut od, Some(&mut ld))
        .unwrap();
    let o = to_f64(&gpu.download(&od).unwrap());
    let l: Vec<f64> = gpu
        .download(&ld)
        .unwrap()
        .iter()
        .map(|&x| x as f64)
        .collect();
    ErrorStats::compare(&o, &reference.o, Some((&l, &reference.lse)))
}

fn check(gpu: &Gpu, dtype: DType, c: &Case) -> ErrorStats {
    let s = match dtype {
        DType::F16 => run_case::<f16>(gpu, c),
        DType::Bf16 => run_case::<bf16>(gpu, c),
    };
    assert!(
        s.within(tolerance(dtype)),
        "{dtype} {c:?}: {s:?} exceeds {:?}",
        tolerance(dtype)
    );
    s
}

/// The grid: kv_len ∈ {1, 7, 16, 17, 1000, 4096, 131072}, both dtypes, every head dim,
/// group sizes 1–8 (cycled so every group meets several lengths).
#[test]
#[ignore = "needs a CUDA GPU"]
fn decode_grid_matches_oracle() {
    let Some(gpu) = gpu_or_skip("decode_grid_matches_oracle") else {
        return;
    };
    let lens = [1usize, 7, 16, 17, 1000, 4096, 131_072];
    let mut worst = ErrorStats::default();
    let mut cases = 0;
    for dtype in [DType::F16, DType::Bf16] {
        for (di, d) in [64usize, 128, 256].into_iter().enumerate() {
            for (li, &kv_len) in lens.iter().enumerate() {
                let g = 1 + (li + 3 * di) % 8;
                let hkv = if kv_len >= 100_000 { 1 } else { 2 };
                let c = Case {
                    heads: HeadConfig::new(hkv * g, hkv, d).unwrap(),
                    kv_len,
                    opts: AttentionOptions::default(),
                    pad_n: 0,
                    pad_h: 0,
                    seed: (li * 31 + di) as u64,
                };
                worst = worst.worst(check(&gpu, dtype, &c));
                cases += 1;
            }
        }
    }
    println!("decode grid: {cases} cases, worst {worst:?}");
}

/// Options: soft-cap, sliding windows (including wider than the context), custom scale, strides.
#[test]
#[ignore = "needs a CUDA GPU"]
fn decode_options_match_oracle() {
    let Some(gpu) = gpu_or_skip("decode_options_match_oracle") else {
        return;
    };
    let opts = [
        AttentionOptions::default().with_soft_cap(20.0),
        AttentionOptions::default().with_window_left(0),
        AttentionOptions::default().with_window_left(100),
        AttentionOptions::default().with_window_left(5000),
        AttentionOptions::default()
            .with_sm_scale(0.3)
            .with_soft_cap(5.0)
            .with_window_left(700),
    ];
    let mut cases = 0;
    for (i, o) in opts.iter().enumerate() {
        for dtype in [DType::F16, DType::Bf16] {
            for &kv_len in &[1usize, 300, 3000] {
                let c = Case {
                    heads: HeadConfig::new(8, 2, 128).unwrap(),
                    kv_len,
                    opts: *o,
                    pad_n: 8 * (i % 2),
                    pad_h: 16 * (i % 3 == 0) as usize,
                    seed: 1000 + i as u64,
                };
                check(&gpu, dtype, &c);
                cases += 1;
            }
        }
    }
    println!("decode options: {cases} cases passed");
}

/// kv_len = 0: o = 0 and lse = −inf, never NaN.
#[test]
#[ignore = "needs a CUDA GPU"]
fn empty_kv_gives_zeros_and_neg_inf() {
    let Some(gpu) = gpu_or_skip("empty_kv_gives_zeros_and_neg_inf") else {
        return;
    };
    let h = HeadConfig::new(4, 1, 64).unwrap();
    let mut op = SingleDecode::new(&gpu, h, DType::Bf16, AttentionOptions::default()).unwrap();
    let q = gpu.upload(&vec![bf16::from_f32(0.5); 4 * 64]).unwrap();
    let k = gpu.alloc::<bf16>(64).unwrap();
    let v = gpu.alloc::<bf16>(64).unwrap();
    let mut o = gpu.upload(&vec![bf16::NAN; 4 * 64]).unwrap();
    let mut l = gpu.upload(&[f32::NAN; 4]).unwrap();
    op.run(&q, &k, &v, 0, &mut o, Some(&mut l)).unwrap();
    assert!(gpu.download(&o).unwrap().iter().all(|x| x.to_f32() == 0.0));
    assert!(gpu
        .download(&l)
        .unwrap()
        .iter()
        .all(|&x| x == f32::NEG_INFINITY));
}

fn arb_case() -> impl Strategy<Value = (Case, bool)> {
    (
        prop::sample::select(vec![64usize, 128, 256]),
        1usize..=8,
        1usize..=3,
        prop_oneof![Just(1usize), Just(15), Just(16), Just(17), 1usize..5000],
        prop_oneof![Just(None), (1.0f32..50.0).prop_map(Some)],
        prop_oneof![Just(None), (0usize..3000).prop_map(Some)],
        0usize..3,
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(d, g, hkv, kv_len, cap, win, pad, seed, bf)| {
            let opts = AttentionOptions {
                soft_cap: cap,
                window_left: win,
                ..Default::default()
            };
            let case = Case {
                heads: HeadConfig::new(hkv * g, hkv, d).unwrap(),
                kv_len,
                opts,
                pad_n: 8 * pad,
                pad_h: 8 * (pad % 2),
                seed,
            };
            (case, bf)
        })
}

/// Random shapes, group sizes, lengths, options and strides (proptest, shrinking on failure).
#[test]
#[ignore = "needs a CUDA GPU"]
fn decode_random_matches_oracle() {
    let Some(gpu) = gpu_or_skip("decode_random_matches_oracle") else {
        return;
    };
    let mut runner = TestRunner::new(ProptestConfig::with_cases(proptest_cases(64)));
    let worst = std::cell::Cell::new(ErrorStats::default());
    runner
        .run(&arb_case(), |(case, bf)| {
            let dtype = if bf { DType::Bf16 } else { DType::F16 };
            worst.set(worst.get().worst(check(&gpu, dtype, &case)));
            Ok(())
        })
        .unwrap();
    println!("decode random: 64 cases, worst {:?}", worst.get());
}

/// Bad input is a typed error before any launch, and the output buffer is untouched.
#[test]
#[ignore = "needs a CUDA GPU"]
fn bad_input_is_a_typed_error() {
    let Some(gpu) = gpu_or_skip("bad_input_is_a_typed_error") else {
        return;
    };
    let h = HeadConfig::new(8, 2, 128).unwrap();
    let opts = AttentionOptions::default();
    // Configuration errors at construction.
    let bad_d = HeadConfig::new(8, 2, 96).unwrap();
    assert!(matches!(
        SingleDecode::new(&gpu, bad_d, DType::F16, opts),
        Err(Error::Unsupported { .. })
    ));
    // Groups above 8 run on the tensor-core decode (head dims 64 and 128), up to 16.
    let g9 = HeadConfig::new(18, 2, 128).unwrap();
    assert!(SingleDecode::new(&gpu, g9, DType::F16, opts).is_ok());
    for bad_g in [
        HeadConfig::new(34, 2, 128).unwrap(),
        HeadConfig::new(18, 2, 256).unwrap(),
    ] {
        assert!(matches!(
            SingleDecode::new(&gpu, bad_g, DType::F16, opts),
            Err(Error::Unsupported { .. })
        ));
    }
    assert!(matches!(
        HeadConfig::new(9, 2, 128),
        Err(Error::InvalidArgument { .. })
    ));
    let bad_cap = AttentionOptions::default().with_soft_cap(-1.0);
    assert!(matches!(
        SingleDecode::new(&gpu, h, DType::F16, bad_cap),
        Err(Error::InvalidArgument { .. })
    ));

    let mut op = SingleDecode::new(&gpu, h, DType::F16, opts).unwrap();
    let kv_len = 100;
    let q = gpu.upload(&vec![f16::ONE; 8 * 128]).unwrap();
    let k = gpu.upload(&vec![f16::ONE; kv_len * 2 * 128]).unwrap();
    let v = gpu.upload(&vec![f16::ONE; kv_len * 2 * 128]).unwrap();
    let poison = vec![f16::from_f32(7.0); 8 * 128];
    let mut out = gpu.upload(&poison).unwrap();
    let short_q = gpu.upload(&vec![f16::ONE; 8 * 128 - 1]).unwrap();
    let mut short_out = gpu.upload(&[f16::ONE; 100]).unwrap();
    let mut short_lse = gpu.upload(&[0.0f32; 3]).unwrap();
    let wrong_dtype = gpu.upload(&vec![bf16::ONE; 8 * 128]).unwrap();
    let mut wrong_out = gpu.upload(&vec![bf16::ONE; 8 * 128]).unwrap();

    // q too short
    assert!(matches!(
        op.run(&short_q, &k, &v, kv_len, &mut out, None),
        Err(Error::Shape { .. })
    ));
    // K/V shorter than kv_len rows
    assert!(matches!(
        op.run(&q, &k, &v, kv_len + 1, &mut out, None),
        Err(Error::Shape { .. })
    ));
    // output too short
    assert!(matches!(
        op.run(&q, &k, &v, kv_len, &mut short_out, None),
        Err(Error::Shape { .. })
    ));
    // lse too short
    assert!(matches!(
        op.run(&q, &k, &v, kv_len, &mut out, Some(&mut short_lse)),
        Err(Error::Shape { .. })
    ));
    // dtype mismatch with the op
    let kb = gpu.upload(&vec![bf16::ONE; kv_len * 2 * 128]).unwrap();
    assert!(matches!(
        op.run(&wrong_dtype, &kb, &kb, kv_len, &mut wrong_out, None),
        Err(Error::Shape { .. })
    ));
    // misaligned strides
    let st = KvStrides {
        stride_n: 2 * 128 + 4,
        stride_h: 128,
    };
    assert!(matches!(
        op.run_strided(&q, &k, st, &v, st, 10, &mut out, None),
        Err(Error::InvalidArgument { .. })
    ));
    // nothing was written
    assert_eq!(gpu.download(&out).unwrap(), poison);
}
