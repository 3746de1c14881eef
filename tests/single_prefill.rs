//! Single-request prefill (tensor cores on the GPU; per-token decode on the CPU backend) against
//! the f64 oracle: random lengths (tile multiples ±1), head dims 64/128, groups 1–8, causal or
//! not, sliding window, soft-cap, both dtypes; consistency with decode and with chunked
//! prefill; bad input.
use ferrinfer::ops::single_decode::KvStrides;
use ferrinfer::ops::{SingleDecode, SinglePrefill};
use ferrinfer::reference::attention;
use ferrinfer::{cpu, AttentionOptions, DType, Error, Float16, Gpu, HeadConfig};
use ferrinfer_harness::{gpu_or_skip, proptest_cases, random_values, rng, to_f64, ErrorStats};
use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

#[derive(Clone, Debug)]
struct Case {
    heads: HeadConfig,
    qo_len: usize,
    kv_len: usize,
    opts: AttentionOptions,
    /// On the Hopper tile, K/V by TMA (else `cp.async`; `SinglePrefill::set_tma`).
    tma: bool,
    seed: u64,
}

struct Data<T> {
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    reference: ferrinfer::reference::Reference,
}

fn make<T: Float16>(c: &Case) -> Data<T> {
    let h = c.heads;
    let mut r = rng(c.seed);
    let (q, qf) = random_values::<T>(&mut r, c.qo_len * h.num_qo_heads * h.head_dim, 2.0);
    let (k, kf) = random_values::<T>(&mut r, c.kv_len * h.num_kv_heads * h.head_dim, 2.0);
    let (v, vf) = random_values::<T>(&mut r, c.kv_len * h.num_kv_heads * h.head_dim, 1.0);
    let reference = attention(&qf, &kf, &vf, &h, c.qo_len, c.kv_len, &c.opts).unwrap();
    Data { q, k, v, reference }
}

fn compare<T: Float16>(d: &Data<T>, out: &[T], lse: &[f32]) -> ErrorStats {
    let l: Vec<f64> = lse.iter().map(|&x| x as f64).collect();
    ErrorStats::compare(&to_f64(out), &d.reference.o, Some((&l, &d.reference.lse)))
}

fn run_gpu<T: Float16>(gpu: &Gpu, c: &Case) -> ErrorStats {
    let d = make::<T>(c);
    let mut op = SinglePrefill::new(gpu, c.heads, T::DTYPE, c.opts).unwrap();
    op.set_tma(c.tma);
    let (q, k, v) = (
        gpu.upload(&d.q).unwrap(),
        gpu.upload(&d.k).unwrap(),
        gpu.upload(&d.v).unwrap(),
    );
    let mut o = gpu.upload(&vec![T::nan(); d.q.len()]).unwrap();
    let mut l = gpu
        .upload(&vec![f32::NAN; c.qo_len * c.heads.num_qo_heads])
        .unwrap();
    op.run(&q, &k, &v, c.qo_len, c.kv_len, &mut o, Some(&mut l))
        .unwrap();
    compare(&d, &gpu.download(&o).unwrap(), &gpu.download(&l).unwrap())
}

fn run_cpu<T: Float16>(c: &Case) -> ErrorStats {
    let d = make::<T>(c);
    let mut o = vec![T::nan(); d.q.len()];
    let mut l = vec![f32::NAN; c.qo_len * c.heads.num_qo_heads];
    cpu::single_prefill(
        &c.heads,
        &c.opts,
        &d.q,
        &d.k,
        &d.v,
        c.qo_len,
        c.kv_len,
        &mut o,
        Some(&mut l),
    )
    .unwrap();
    compare(&d, &o, &l)
}

fn arb_case(max_len: usize) -> impl Strategy<Value = (Case, bool)> {
    (
        prop::sample::select(vec![64usize, 128, 256]),
        1usize..=8,
        1usize..=2,
        prop_oneof![Just(1usize), Just(63), Just(64), Just(65), 1usize..max_len],
        0usize..max_len,
        any::<bool>(),
        prop_oneof![Just(None), (1.0f32..50.0).prop_map(Some)],
        prop_oneof![Just(None), (0usize..400).prop_map(Some)],
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(d, g, hkv, qo, extra, causal, cap, win, seed, bf)| {
            let opts = AttentionOptions {
                soft_cap: cap,
                window_left: win,
                causal,
                ..Default::default()
            };
            let case = Case {
                heads: HeadConfig::new(hkv * g, hkv, d).unwrap(),
                qo_len: qo,
                kv_len: qo + extra,
                opts,
                // Mostly the default (TMA on the Hopper tile), now and then `cp.async`.
                tma: seed % 4 != 0,
                seed,
            };
            (case, bf)
        })
}

fn check(s: ErrorStats, dtype: DType, c: &Case) {
    s.assert_within(dtype, c);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_prefill_random_matches_oracle() {
    let Some(gpu) = gpu_or_skip("gpu_prefill_random_matches_oracle") else {
        return;
    };
    let cases = proptest_cases(40);
    let worst = std::cell::Cell::new(ErrorStats::default());
    TestRunner::new(ProptestConfig::with_cases(cases))
        .run(&arb_case(700), |(c, bf)| {
            let (dt, s) = if bf {
                (DType::Bf16, run_gpu::<bf16>(&gpu, &c))
            } else {
                (DType::F16, run_gpu::<f16>(&gpu, &c))
            };
            check(s, dt, &c);
            worst.set(worst.get().worst(s));
            Ok(())
        })
        .unwrap();
    println!("gpu prefill: {cases} random cases, worst {:?}", worst.get());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_prefill_edges_match_oracle() {
    let Some(gpu) = gpu_or_skip("gpu_prefill_edges_match_oracle") else {
        return;
    };
    let mk = |hq, hkv, d, qo, kv, opts| Case {
        heads: HeadConfig::new(hq, hkv, d).unwrap(),
        qo_len: qo,
        kv_len: kv,
        opts,
        tma: true,
        seed: (qo * 31 + kv) as u64,
    };
    let causal = AttentionOptions::default().with_causal(true);
    let cases = [
        mk(32, 8, 128, 1024, 1024, causal),
        mk(8, 8, 128, 129, 129, causal),
        mk(8, 2, 64, 1, 1, causal),
        mk(8, 1, 64, 17, 3000, causal.with_window_left(100)),
        mk(4, 4, 128, 300, 300, AttentionOptions::default()),
        mk(6, 2, 128, 64, 65, causal.with_soft_cap(30.0)),
    ];
    for c in &cases {
        check(run_gpu::<bf16>(&gpu, c), DType::Bf16, c);
        check(run_gpu::<f16>(&gpu, c), DType::F16, c);
        let c = &Case {
            tma: false,
            ..c.clone()
        };
        check(run_gpu::<bf16>(&gpu, c), DType::Bf16, c);
    }
}

/// K and V read through explicit strides, as views into wider buffers whose other elements
/// are NaN (so a read outside the view shows): rows of a fused projection (`stride_n` past the
/// heads), and head-major `[heads, kv_len, D]` (`stride_h > stride_n`); both K/V load paths of
/// the Hopper tile (TMA and `cp.async`) where it runs, the auto tile elsewhere.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_prefill_strided_kv_matches_oracle() {
    let Some(gpu) = gpu_or_skip("gpu_prefill_strided_kv_matches_oracle") else {
        return;
    };
    let h = HeadConfig::new(8, 2, 128).unwrap();
    let (qo, kv) = (300, 700);
    let c = Case {
        heads: h,
        qo_len: qo,
        kv_len: kv,
        opts: AttentionOptions::default().with_causal(true),
        tma: true,
        seed: 11,
    };
    let d = make::<bf16>(&c);
    let dh = h.head_dim;
    let fused = KvStrides {
        stride_n: (h.num_qo_heads + 2 * h.num_kv_heads) * dh,
        stride_h: dh,
    };
    let head_major = KvStrides {
        stride_n: dh,
        stride_h: kv * dh,
    };
    let mut worst = ErrorStats::default();
    for st in [fused, head_major] {
        // Element (n, h, d) of the contiguous K/V at n·stride_n + h·stride_h + d of a buffer
        // that holds NaN everywhere else.
        let place = |src: &[bf16]| {
            let len = (kv - 1) * st.stride_n + (h.num_kv_heads - 1) * st.stride_h + dh;
            let mut out = vec![bf16::NAN; len];
            for n in 0..kv {
                for hh in 0..h.num_kv_heads {
                    let from = (n * h.num_kv_heads + hh) * dh;
                    let to = n * st.stride_n + hh * st.stride_h;
                    out[to..to + dh].copy_from_slice(&src[from..from + dh]);
                }
            }
            out
        };
        let (k, v) = (
            gpu.upload(&place(&d.k)).unwrap(),
            gpu.upload(&place(&d.v)).unwrap(),
        );
        let q = gpu.upload(&d.q).unwrap();
        for tma in [true, false] {
            let mut op = SinglePrefill::new(&gpu, h, DType::Bf16, c.opts).unwrap();
            op.set_tma(tma);
            let mut o = gpu.upload(&vec![bf16::NAN; d.q.len()]).unwrap();
            let mut l = gpu.upload(&vec![f32::NAN; qo * h.num_qo_heads]).unwrap();
            op.run_strided(&q, &k, st, &v, st, qo, kv, &mut o, Some(&mut l))
                .unwrap();
            let s = compare(&d, &gpu.download(&o).unwrap(), &gpu.download(&l).unwrap());
            check(s, DType::Bf16, &c);
            worst = worst.worst(s);
        }
    }
    println!("strided K/V (fused rows, head-major), TMA and cp.async: worst {worst:?}");
}

#[test]
fn cpu_prefill_random_matches_oracle() {
    TestRunner::new(ProptestConfig::with_cases(proptest_cases(24)))
        .run(&arb_case(200), |(c, bf)| {
            if bf {
                check(run_cpu::<bf16>(&c), DType::Bf16, &c);
            } else {
                check(run_cpu::<f16>(&c), DType::F16, &c);
            }
            Ok(())
        })
        .unwrap();
}

/// Prefill with one query token equals decode on the same inputs; a prefill split into two
/// chunks (the second chunk seeing the keys appended after the first) equals one prefill.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_prefill_consistency() {
    let Some(gpu) = gpu_or_skip("gpu_prefill_consistency") else {
        return;
    };
    let h = HeadConfig::new(16, 4, 128).unwrap();
    let opts = AttentionOptions::default().with_causal(true);
    let c = Case {
        heads: h,
        qo_len: 1,
        kv_len: 777,
        opts,
        tma: true,
        seed: 3,
    };
    let d = make::<bf16>(&c);
    let (q, k, v) = (
        gpu.upload(&d.q).unwrap(),
        gpu.upload(&d.k).unwrap(),
        gpu.upload(&d.v).unwrap(),
    );
    let mut po = gpu.alloc::<bf16>(d.q.len()).unwrap();
    let mut dout = gpu.alloc::<bf16>(d.q.len()).unwrap();
    SinglePrefill::new(&gpu, h, DType::Bf16, opts)
        .unwrap()
        .run(&q, &k, &v, 1, 777, &mut po, None)
        .unwrap();
    SingleDecode::new(&gpu, h, DType::Bf16, AttentionOptions::default())
        .unwrap()
        .run(&q, &k, &v, 777, &mut dout, None)
        .unwrap();
    let (a, b) = (
        to_f64(&gpu.download(&po).unwrap()),
        to_f64(&gpu.download(&dout).unwrap()),
    );
    let s = ErrorStats::compare(&a, &b, None);
    assert!(s.rel_l2 < 5e-3, "prefill(qo=1) vs decode: {s:?}");

    // Chunked: 300 query tokens over 1000 keys = chunk A (first 120 queries over the first 820
    // keys) + chunk B (the other 180 over all 1000).
    let c = Case {
        heads: h,
        qo_len: 300,
        kv_len: 1000,
        opts,
        tma: true,
        seed: 4,
    };
    let d = make::<bf16>(&c);
    let op = SinglePrefill::new(&gpu, h, DType::Bf16, opts).unwrap();
    let row = h.num_qo_heads * h.head_dim;
    let (k, v) = (gpu.upload(&d.k).unwrap(), gpu.upload(&d.v).unwrap());
    let run = |q: &[bf16], qo: usize, kv: usize| {
        let qd = gpu.upload(q).unwrap();
        let mut o = gpu.upload(&vec![bf16::NAN; q.len()]).unwrap();
        op.run(&qd, &k, &v, qo, kv, &mut o, None).unwrap();
        to_f64(&gpu.download(&o).unwrap())
    };
    let mut chunked = run(&d.q[..120 * row], 120, 820);
    chunked.extend(run(&d.q[120 * row..], 180, 1000));
    let whole = run(&d.q, 300, 1000);
    let s = ErrorStats::compare(&chunked, &whole, None);
    assert!(
        s.max_abs == 0.0,
        "chunked prefill differs from one prefill: {s:?}"
    );
}

#[test]
fn prefill_bad_input_is_a_typed_error_cpu() {
    let h = HeadConfig::new(8, 2, 64).unwrap();
    let opts = AttentionOptions::default().with_causal(true);
    let q = vec![bf16::ONE; 4 * 8 * 64];
    let kv = vec![bf16::ONE; 3 * 2 * 64];
    let mut o = vec![bf16::from_f32(7.0); 4 * 8 * 64];
    assert!(matches!(
        cpu::single_prefill(&h, &opts, &q, &kv, &kv, 4, 3, &mut o, None),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        cpu::single_prefill(&h, &opts, &q[..10], &kv, &kv, 1, 3, &mut o, None),
        Err(Error::Shape { .. })
    ));
    assert!(o.iter().all(|x| x.to_f32() == 7.0));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn prefill_bad_input_is_a_typed_error_gpu() {
    let Some(gpu) = gpu_or_skip("prefill_bad_input_is_a_typed_error_gpu") else {
        return;
    };
    let h = HeadConfig::new(8, 2, 64).unwrap();
    let opts = AttentionOptions::default().with_causal(true);
    let q = vec![bf16::ONE; 4 * 8 * 64];
    let kv = vec![bf16::ONE; 3 * 2 * 64];
    let o = vec![bf16::from_f32(7.0); 4 * 8 * 64];
    assert!(matches!(
        SinglePrefill::new(&gpu, HeadConfig::new(8, 2, 96).unwrap(), DType::Bf16, opts),
        Err(Error::Unsupported { .. })
    ));
    let op = SinglePrefill::new(&gpu, h, DType::Bf16, opts).unwrap();
    let (qd, kd) = (gpu.upload(&q).unwrap(), gpu.upload(&kv).unwrap());
    let mut od = gpu.upload(&o).unwrap();
    // qo_len > kv_len, K/V too short, out too short, wrong dtype.
    assert!(matches!(
        op.run(&qd, &kd, &kd, 4, 3, &mut od, None),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        op.run(&qd, &kd, &kd, 3, 4, &mut od, None),
        Err(Error::Shape { .. })
    ));
    let mut short = gpu.upload(&[bf16::ONE; 8]).unwrap();
    assert!(matches!(
        op.run(&qd, &kd, &kd, 1, 3, &mut short, None),
        Err(Error::Shape { .. })
    ));
    let qf = gpu.upload(&vec![f16::ONE; 4 * 8 * 64]).unwrap();
    let kf = gpu.upload(&vec![f16::ONE; 3 * 2 * 64]).unwrap();
    let mut of = gpu.upload(&vec![f16::ONE; 4 * 8 * 64]).unwrap();
    assert!(matches!(
        op.run(&qf, &kf, &kf, 1, 3, &mut of, None),
        Err(Error::Shape { .. })
    ));
    assert!(gpu.download(&od).unwrap().iter().all(|x| x.to_f32() == 7.0));
}
