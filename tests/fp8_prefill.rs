//! Batch prefill over fp8 KV caches on the GPU (`BatchPrefill::run_paged_fp8` /
//! `run_ragged_fp8`: the 64-row tile's `prefill_*_fp8_*` kernels, K/V codes converted in
//! registers on the way to the tensor cores) against the f64 oracle fed the *dequantised* K/V
//! (code × scale, exact in f64), over random batches, page orders, page sizes, layouts, groups
//! (1–32), head dims 64 and 128, options (causal, window, soft-cap, sm_scale), both formats and
//! both query types; the paged cache is filled by the device's quantising append, the ragged
//! K/V are the CPU quantiser's codes. Outputs are poisoned with NaN (the GPU op takes them at
//! exactly the planned size) and every element must be written.
//! Bad input (head dim 256, RoPE or a custom mask with fp8, mismatched plans, formats and
//! scales): typed errors with nothing written.
//!
//! Bounds: the 16-bit tolerance table (`reference::tolerance`), for the reason
//! `tests/fp8_decode.rs` gives: the oracle sees exactly the values the kernel decodes, so what
//! is left is the kernel's own arithmetic (f32 accumulation, `ex2.approx`, k_scale folded into
//! the f32 logit scale, P rounded to f16 for the P·V product — the 16-bit kernels round P to
//! the query type, bf16 or f16, which is as coarse or coarser — and the 16-bit output).
use ferrinfer::dtype::{KvDtype, KvElem};
use ferrinfer::fp8::{E4m3, E5m2, Fp8, Fp8Format, KvScales};
use ferrinfer::kv::{BatchPages, KvLayout};
use ferrinfer::mask::segment_packbits;
use ferrinfer::ops::BatchPrefill;
use ferrinfer::reference::attention;
use ferrinfer::rope::{RopeConfig, RopeScaling, RopeStyle};
use ferrinfer::{AttentionOptions, DType, Error, Float16, Gpu, HeadConfig};
use ferrinfer_harness::fp8::{gpu_pool, quantize_rows, random_scales};
use ferrinfer_harness::paged::{per_request, shuffled_pages};
use ferrinfer_harness::{gpu_or_skip, proptest_cases, random_values, rng, to_f64, ErrorStats};
use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

#[derive(Clone, Debug)]
struct Case {
    heads: HeadConfig,
    /// KV length and query tokens (`≤` the KV length) per request.
    lens: Vec<usize>,
    qo: Vec<usize>,
    page_size: usize,
    layout: KvLayout,
    opts: AttentionOptions,
    /// Fixed split-KV chunk (forces the split-KV merge), if any.
    split: Option<usize>,
    bf16: bool,
    e5m2: bool,
    seed: u64,
}

fn arb_case(max_batch: usize, max_len: usize) -> impl Strategy<Value = Case> {
    let req = prop_oneof![1 => Just(0usize), 1 => 1usize..=17, 4 => 1usize..=max_len]
        .prop_flat_map(|len| (Just(len), 0..=len.min(300)));
    let opts = (
        prop::option::of(0.02f32..0.5),
        prop::option::of(5.0f32..50.0),
        prop::option::of(0usize..600),
        any::<bool>(),
    )
        .prop_map(
            |(sm_scale, soft_cap, window_left, causal)| AttentionOptions {
                sm_scale,
                soft_cap,
                window_left,
                causal,
            },
        );
    (
        prop::sample::select(vec![64usize, 128]),
        prop::sample::select(vec![1usize, 2, 3, 4, 8, 16, 32]),
        1usize..=2,
        prop::collection::vec(req, 1..=max_batch),
        prop::sample::select(vec![1usize, 16, 32]),
        opts,
        prop::option::of(prop::sample::select(vec![64usize, 256])),
        any::<(bool, bool, bool, u64)>(),
    )
        .prop_map(
            |(d, g, hkv, reqs, page_size, opts, split, (hnd, bf16, e5m2, seed))| Case {
                heads: HeadConfig::new(g * hkv, hkv, d).unwrap(),
                lens: reqs.iter().map(|r| r.0).collect(),
                qo: reqs.iter().map(|r| r.1).collect(),
                page_size,
                layout: if hnd { KvLayout::Hnd } else { KvLayout::Nhd },
                opts,
                split,
                bf16,
                e5m2,
                seed,
            },
        )
}

/// One case's data: the cache rows (16-bit, quantised by the device append for the paged run,
/// by the CPU quantiser for the ragged one), their codes and real values, and the queries.
struct Data<T, F> {
    k: Vec<T>,
    v: Vec<T>,
    kc: Vec<Fp8<F>>,
    vc: Vec<Fp8<F>>,
    kf: Vec<f64>,
    vf: Vec<f64>,
    q: Vec<T>,
    qf: Vec<f64>,
    scales: KvScales,
    pages: BatchPages,
    num_pages: usize,
}

fn data<T: Float16, F: Fp8Format>(c: &Case) -> Data<T, F> {
    let h = c.heads;
    let mut r = rng(c.seed);
    let scales = random_scales(&mut r);
    let total: usize = c.lens.iter().sum();
    let rows: usize = c.qo.iter().sum();
    let kvrow = h.num_kv_heads * h.head_dim;
    let (q, qf) = random_values::<T>(&mut r, rows * h.num_qo_heads * h.head_dim, 1.0);
    let (k, _) = random_values::<T>(&mut r, total * kvrow, 1.0);
    let (v, _) = random_values::<T>(&mut r, total * kvrow, 1.0);
    let (kc, kf) = quantize_rows::<T, F>(&k, scales.k);
    let (vc, vf) = quantize_rows::<T, F>(&v, scales.v);
    let (pages, num_pages) = shuffled_pages(&mut r, &c.lens, c.page_size, 2);
    Data {
        k,
        v,
        kc,
        vc,
        kf,
        vf,
        q,
        qf,
        scales,
        pages,
        num_pages,
    }
}

fn indptrs(c: &Case) -> (Vec<i32>, Vec<i32>) {
    let (mut qo, mut kv) = (vec![0i32], vec![0i32]);
    for (&q, &l) in c.qo.iter().zip(&c.lens) {
        qo.push(qo.last().unwrap() + q as i32);
        kv.push(kv.last().unwrap() + l as i32);
    }
    (qo, kv)
}

/// The oracle per request over the dequantised K/V, compared with `out`/`lse`.
fn compare<T: Float16, F>(c: &Case, d: &Data<T, F>, out: &[T], lse: &[f32]) -> ErrorStats {
    let h = c.heads;
    let (qrow, kvrow) = (h.num_qo_heads * h.head_dim, h.num_kv_heads * h.head_dim);
    let rows: usize = c.qo.iter().sum();
    let (ks, vs) = (
        per_request(&d.kf, &c.lens, kvrow),
        per_request(&d.vf, &c.lens, kvrow),
    );
    let qs = per_request(&d.qf, &c.qo, qrow);
    let (mut want_o, mut want_l) = (Vec::new(), Vec::new());
    for b in 0..c.lens.len() {
        let r = attention(&qs[b], &ks[b], &vs[b], &h, c.qo[b], c.lens[b], &c.opts).unwrap();
        want_o.extend(r.o);
        want_l.extend(r.lse);
    }
    // Every element written (no NaN left from the poison) before the comparison.
    assert!(
        out[..rows * qrow].iter().all(|x| !x.to_f32().is_nan())
            && lse[..rows * h.num_qo_heads].iter().all(|x| !x.is_nan()),
        "an output element was not written: {c:?}"
    );
    let o = to_f64(&out[..rows * qrow]);
    let l: Vec<f64> = lse[..rows * h.num_qo_heads]
        .iter()
        .map(|&x| x as f64)
        .collect();
    ErrorStats::compare(&o, &want_o, Some((&l, &want_l)))
}

fn poisoned<T: Float16>(
    gpu: &Gpu,
    rows: usize,
    h: &HeadConfig,
) -> (ferrinfer::DeviceBuffer<T>, ferrinfer::DeviceBuffer<f32>) {
    (
        gpu.upload(&vec![T::nan(); rows * h.num_qo_heads * h.head_dim])
            .unwrap(),
        gpu.upload(&vec![f32::NAN; rows * h.num_qo_heads]).unwrap(),
    )
}

/// Paged and ragged fp8 prefill of one case on the GPU: the worst of the two comparisons.
fn run_case<T: Float16, F: Fp8Format>(gpu: &Gpu, c: &Case) -> ErrorStats {
    let h = c.heads;
    let d = data::<T, F>(c);
    let (qo_indptr, kv_indptr) = indptrs(c);
    let rows: usize = c.qo.iter().sum();
    if rows == 0 {
        // No query rows: nothing to launch or compare (every request's qo_len drawn 0).
        return ErrorStats::default();
    }
    let mut op = BatchPrefill::new(gpu, h, T::DTYPE, c.opts).unwrap();
    op.set_kv_dtype(<Fp8<F> as KvElem>::KV_DTYPE).unwrap();
    op.set_fixed_split_size(c.split);
    let q = gpu.upload(&d.q).unwrap();

    let pool = gpu_pool::<T, F>(
        gpu,
        &h,
        c.page_size,
        c.layout,
        &d.pages,
        d.num_pages,
        &c.lens,
        (&d.k, &d.v),
        d.scales,
    );
    let plan = op.plan_paged(&qo_indptr, &d.pages, pool.config()).unwrap();
    let (mut out, mut lse) = poisoned::<T>(gpu, rows, &h);
    op.run_paged_fp8(&plan, &q, &pool, d.scales, &mut out, Some(&mut lse))
        .unwrap();
    let s = compare(
        c,
        &d,
        &gpu.download(&out).unwrap(),
        &gpu.download(&lse).unwrap(),
    );

    let plan = op.plan_ragged(&qo_indptr, &kv_indptr).unwrap();
    // At least one element each: an empty batch still passes buffers.
    let pad = |x: &[Fp8<F>]| {
        let mut v = x.to_vec();
        v.push(Fp8::quantize(0.0, 1.0));
        v
    };
    let (kd, vd) = (
        gpu.upload(&pad(&d.kc)).unwrap(),
        gpu.upload(&pad(&d.vc)).unwrap(),
    );
    let (mut out, mut lse) = poisoned::<T>(gpu, rows, &h);
    op.run_ragged_fp8(&plan, &q, &kd, &vd, d.scales, &mut out, Some(&mut lse))
        .unwrap();
    let s2 = compare(
        c,
        &d,
        &gpu.download(&out).unwrap(),
        &gpu.download(&lse).unwrap(),
    );
    s.worst(s2)
}

fn case_on(gpu: &Gpu, c: &Case) -> (DType, ErrorStats) {
    match (c.bf16, c.e5m2) {
        (false, false) => (DType::F16, run_case::<f16, E4m3>(gpu, c)),
        (false, true) => (DType::F16, run_case::<f16, E5m2>(gpu, c)),
        (true, false) => (DType::Bf16, run_case::<bf16, E4m3>(gpu, c)),
        (true, true) => (DType::Bf16, run_case::<bf16, E5m2>(gpu, c)),
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_fp8_prefill_random_matches_oracle() {
    let Some(gpu) = gpu_or_skip("gpu_fp8_prefill_random_matches_oracle") else {
        return;
    };
    let cases = proptest_cases(48);
    let worst = std::cell::Cell::new(ErrorStats::default());
    TestRunner::new(ProptestConfig::with_cases(cases))
        .run(&arb_case(5, 1500), |c| {
            let (dt, s) = case_on(&gpu, &c);
            s.assert_within(dt, &c);
            worst.set(worst.get().worst(s));
            Ok(())
        })
        .unwrap();
    println!(
        "gpu fp8 prefill: {cases} random batches (paged and ragged), worst {:?}",
        worst.get()
    );
}

/// Every head dim × group × format × query type once, causal with a long request (several
/// query tiles, keys past the causal diagonal skipped) and split-KV items (the partials carry
/// V's scale into the merge).
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_fp8_prefill_every_kernel_instance() {
    let Some(gpu) = gpu_or_skip("gpu_fp8_prefill_every_kernel_instance") else {
        return;
    };
    let mut worst = ErrorStats::default();
    let mut seed = 100;
    for d in [64usize, 128] {
        for g in [1usize, 2, 4, 8, 16, 32] {
            for (bf16, e5m2) in [(false, false), (false, true), (true, false), (true, true)] {
                seed += 1;
                let c = Case {
                    heads: HeadConfig::new(2 * g, 2, d).unwrap(),
                    lens: vec![700, 1, 0, 130],
                    qo: vec![200, 1, 0, 130],
                    page_size: 16,
                    layout: if seed % 2 == 0 {
                        KvLayout::Nhd
                    } else {
                        KvLayout::Hnd
                    },
                    opts: AttentionOptions {
                        causal: true,
                        ..Default::default()
                    },
                    split: Some(128),
                    bf16,
                    e5m2,
                    seed,
                };
                let (dt, s) = case_on(&gpu, &c);
                s.assert_within(dt, &c);
                worst = worst.worst(s);
            }
        }
    }
    println!("gpu fp8 prefill, every instance: worst {worst:?}");
}

/// What the fp8 prefill refuses, each a typed error before any launch, with the output left
/// untouched.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_fp8_prefill_bad_input_is_a_typed_error() {
    let Some(gpu) = gpu_or_skip("gpu_fp8_prefill_bad_input_is_a_typed_error") else {
        return;
    };
    let opts = AttentionOptions::default();
    // Head dim 256: no fp8 prefill kernel.
    let h256 = HeadConfig::new(4, 2, 256).unwrap();
    let mut op = BatchPrefill::new(&gpu, h256, DType::Bf16, opts).unwrap();
    let e = op.set_kv_dtype(KvDtype::E4m3).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    // A 16-bit K/V type other than the queries'.
    let h = HeadConfig::new(8, 2, 128).unwrap();
    let mut op = BatchPrefill::new(&gpu, h, DType::Bf16, opts).unwrap();
    let e = op.set_kv_dtype(KvDtype::F16).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    // RoPE and fp8, in either order.
    let rope = RopeConfig {
        theta: 10_000.0,
        rotary_dim: 128,
        scaling: RopeScaling::None,
        style: RopeStyle::Half,
    };
    op.set_rope(Some(rope)).unwrap();
    let e = op.set_kv_dtype(KvDtype::E4m3).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    op.set_rope(None).unwrap();
    op.set_kv_dtype(KvDtype::E4m3).unwrap();
    let e = op.set_rope(Some(rope)).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");

    let c = Case {
        heads: h,
        lens: vec![40, 9],
        qo: vec![40, 3],
        page_size: 16,
        layout: KvLayout::Nhd,
        opts,
        split: None,
        bf16: true,
        e5m2: false,
        seed: 7,
    };
    let d = data::<bf16, E4m3>(&c);
    let (qo_indptr, _) = indptrs(&c);
    let rows = 43;
    let pool = gpu_pool::<bf16, E4m3>(
        &gpu,
        &h,
        16,
        KvLayout::Nhd,
        &d.pages,
        d.num_pages,
        &c.lens,
        (&d.k, &d.v),
        d.scales,
    );
    let q = gpu.upload(&d.q).unwrap();
    let (mut out, _) = poisoned::<bf16>(&gpu, rows, &h);
    let untouched =
        |out: &ferrinfer::DeviceBuffer<bf16>| gpu.download(out).unwrap().iter().all(|x| x.is_nan());
    // A custom mask with fp8 K/V.
    let bits = vec![true; 40 * 40 + 3 * 9];
    let mask = segment_packbits(&bits, &[0, 40 * 40, 40 * 40 + 3 * 9]).unwrap();
    let e = op.plan_paged_masked(&qo_indptr, &d.pages, pool.config(), &mask);
    assert!(matches!(e, Err(Error::Unsupported { .. })));
    // A plan made for 16-bit K/V, run after the switch to fp8.
    let mut op16 = BatchPrefill::new(&gpu, h, DType::Bf16, opts).unwrap();
    let plan16 = op16
        .plan_paged(&qo_indptr, &d.pages, pool.config())
        .unwrap();
    op16.set_kv_dtype(KvDtype::E4m3).unwrap();
    let e = op16
        .run_paged_fp8(&plan16, &q, &pool, d.scales, &mut out, None)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    // The op reads e5m2, the pool holds e4m3.
    let plan = op.plan_paged(&qo_indptr, &d.pages, pool.config()).unwrap();
    op.set_kv_dtype(KvDtype::E5m2).unwrap();
    let e = op
        .run_paged_fp8(&plan, &q, &pool, d.scales, &mut out, None)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    op.set_kv_dtype(KvDtype::E4m3).unwrap();
    // Bad scales.
    for bad in [0.0f32, -1.0, f32::NAN, f32::INFINITY] {
        let s = KvScales { k: bad, v: 1.0 };
        let e = op
            .run_paged_fp8(&plan, &q, &pool, s, &mut out, None)
            .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        let s = KvScales { k: 1.0, v: bad };
        let e = op
            .run_paged_fp8(&plan, &q, &pool, s, &mut out, None)
            .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    }
    // A 16-bit run on an op that reads fp8: refused (its plan is an fp8 plan).
    let pool16 = ferrinfer_harness::paged::gpu_pool(
        &gpu,
        &h,
        16,
        KvLayout::Nhd,
        &d.pages,
        d.num_pages,
        &c.lens,
        &d.k,
        &d.v,
    );
    let e = op
        .run_paged(&plan, &q, &pool16, &mut out, None)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    assert!(untouched(&out), "an error wrote the output");
    // And the good call writes it.
    op.run_paged_fp8(&plan, &q, &pool, d.scales, &mut out, None)
        .unwrap();
    let o = gpu.download(&out).unwrap();
    assert!(o[..rows * h.num_qo_heads * h.head_dim]
        .iter()
        .all(|x| !x.is_nan()));
}
