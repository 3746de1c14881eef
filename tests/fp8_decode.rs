//! fp8 KV cache on the GPU (e4m3 and e5m2, per-tensor `k_scale`/`v_scale`): the quantising
//! append against the CPU quantiser bit for bit, and batch decode (`BatchDecode::run_fp8`: the
//! CUDA-core `decode_fp8_*` and tensor-core `decode_tc_fp8_*` kernels) and single decode
//! against the f64 oracle fed the *dequantised* K/V (code ×
//! scale, exact in f64), over random batches, page orders, groups, head dims, layouts, options,
//! both formats and both query types; bad input → typed errors with nothing written.
//!
//! Bounds: the 16-bit tolerance table (`reference::tolerance`: rel-L2 5e-3 / max-abs 3e-2 bf16,
//! 1e-3 / 4e-3 f16, lse 1e-3 + 1e-4·|lse|). Why the same as 16-bit K/V: the oracle sees exactly
//! the values the kernel decodes (fp8 → f32 is exact), so what is left is the kernel's own
//! error — f32 dot products and softmax with `ex2.approx`, the k_scale folded into the f32
//! logit scale (one more f32 rounding, ≤ 2^-24 relative) and the 16-bit output rounding — which
//! is the 16-bit decode's. The format's quantisation error is not measured here, by design.
use ferrinfer::dtype::{KvDtype, KvElem};
use ferrinfer::fp8::{E4m3, E5m2, Fp8, Fp8Format, KvScales};
use ferrinfer::kv::{KvLayout, KvPool};
use ferrinfer::ops::{BatchDecode, DecodeKernel};
use ferrinfer::reference::attention;
use ferrinfer::{AttentionOptions, DType, Error, Float16, Gpu, HeadConfig};
use ferrinfer_harness::fp8::{gpu_pool, host_pool, quantize_rows, random_scales};
use ferrinfer_harness::paged::{per_request, pool_spans, shuffled_pages};
use ferrinfer_harness::{gpu_or_skip, proptest_cases, random_values, rng, to_f64, ErrorStats};
use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

#[derive(Clone, Debug)]
struct Case {
    heads: HeadConfig,
    page_size: usize,
    layout: KvLayout,
    lens: Vec<usize>,
    opts: AttentionOptions,
    bf16: bool,
    e5m2: bool,
    seed: u64,
}

fn arb_case(max_batch: usize, max_len: usize) -> impl Strategy<Value = Case> {
    (
        prop::sample::select(vec![64usize, 128, 256]),
        prop::sample::select(vec![1usize, 2, 3, 4, 5, 8, 13, 16]),
        1usize..=2,
        prop::sample::select(vec![1usize, 8, 16, 32]),
        any::<bool>(),
        prop::collection::vec(
            prop_oneof![Just(0usize), Just(1), 1usize..max_len, Just(16), Just(17)],
            1..max_batch,
        ),
        prop_oneof![Just(None), (1.0f32..50.0).prop_map(Some)],
        prop_oneof![Just(None), (0usize..3000).prop_map(Some)],
        any::<(bool, bool, u64)>(),
    )
        .prop_map(
            |(d, g, hkv, p, hnd, lens, cap, win, (bf16, e5m2, seed))| Case {
                // Groups past 8 run on the tensor-core decode only: head dims up to 128.
                heads: HeadConfig::new(hkv * g, hkv, if g > 8 { d.min(128) } else { d }).unwrap(),
                page_size: p,
                layout: if hnd { KvLayout::Hnd } else { KvLayout::Nhd },
                lens,
                opts: AttentionOptions {
                    soft_cap: cap,
                    window_left: win,
                    ..Default::default()
                },
                bf16,
                e5m2,
                seed,
            },
        )
}

/// Rows of a case: 16-bit K/V (with a few outliers past the format's range and a NaN-free
/// remainder), q, scales.
struct Data<T> {
    k: Vec<T>,
    v: Vec<T>,
    q: Vec<T>,
    qf: Vec<f64>,
    scales: KvScales,
}

fn make<T: Float16>(c: &Case) -> Data<T> {
    let h = c.heads;
    let mut r = rng(c.seed);
    let rows: usize = c.lens.iter().sum();
    let n = rows * h.num_kv_heads * h.head_dim;
    let scales = random_scales(&mut r);
    let (mut k, _) = random_values::<T>(&mut r, n, 2.0);
    let (v, _) = random_values::<T>(&mut r, n, 1.0);
    // Outliers: saturate in both formats (x / scale past 57344 needs x ≥ 57344 · scale).
    for i in (0..n).step_by(997) {
        k[i] = T::from_f32(if i % 2 == 0 { 60000.0 } else { -60000.0 } * scales.k.min(1.0));
    }
    let (q, qf) = random_values::<T>(&mut r, c.lens.len() * h.num_qo_heads * h.head_dim, 1.0);
    Data {
        k,
        v,
        q,
        qf,
        scales,
    }
}

/// Batch decode of one case on the GPU (kernel family `kind`; `None`: the fp8 default) against
/// the oracle on the dequantised K/V.
fn run_decode<T: Float16, F: Fp8Format>(
    gpu: &Gpu,
    c: &Case,
    kind: Option<DecodeKernel>,
) -> ErrorStats {
    let h = c.heads;
    let d = make::<T>(c);
    let (pages, num_pages) = shuffled_pages(&mut rng(c.seed ^ 1), &c.lens, c.page_size, 3);
    let pool = gpu_pool::<T, F>(
        gpu,
        &h,
        c.page_size,
        c.layout,
        &pages,
        num_pages,
        &c.lens,
        (&d.k, &d.v),
        d.scales,
    );
    let mut op = BatchDecode::new(gpu, h, T::DTYPE, c.opts).unwrap();
    op.set_kv_dtype(<Fp8<F> as KvElem>::KV_DTYPE).unwrap();
    if let Some(k) = kind {
        op.set_kernel(k).unwrap();
    }
    let plan = op.plan(&pages, pool.config()).unwrap();
    let b = c.lens.len();
    let qd = gpu.upload(&d.q).unwrap();
    let mut od = gpu
        .upload(&vec![T::nan(); b * h.num_qo_heads * h.head_dim])
        .unwrap();
    let mut ld = gpu.upload(&vec![f32::NAN; b * h.num_qo_heads]).unwrap();
    op.run_fp8(&plan, &qd, &pool, d.scales, &mut od, Some(&mut ld))
        .unwrap();
    let (out, lse) = (gpu.download(&od).unwrap(), gpu.download(&ld).unwrap());

    // The caller-memory path (`run_spans_fp8`, what the Python package's CUDA decode calls)
    // over the same pages: the same launch, so the same bits.
    let kv = pool_spans(&pool);
    let os = gpu.upload(&vec![T::nan(); out.len()]).unwrap();
    let ls = gpu.upload(&vec![f32::NAN; lse.len()]).unwrap();
    // SAFETY: every span is a live buffer of this test, used on the context's one stream.
    unsafe { op.run_spans_fp8(&plan, qd.span(), &kv, d.scales, os.span(), Some(ls.span())) }
        .unwrap();
    let bits = |v: &[T]| v.iter().map(|x| x.to_f32().to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&gpu.download(&os).unwrap()),
        bits(&out),
        "spans: out differs"
    );
    let lse_bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        lse_bits(&gpu.download(&ls).unwrap()),
        lse_bits(&lse),
        "spans: lse differs"
    );

    let row = h.num_kv_heads * h.head_dim;
    let (_, kf) = quantize_rows::<T, F>(&d.k, d.scales.k);
    let (_, vf) = quantize_rows::<T, F>(&d.v, d.scales.v);
    let (kf, vf) = (
        per_request(&kf, &c.lens, row),
        per_request(&vf, &c.lens, row),
    );
    let qrow = h.num_qo_heads * h.head_dim;
    let mut worst = ErrorStats::default();
    for (bi, &l) in c.lens.iter().enumerate() {
        let q = &d.qf[bi * qrow..(bi + 1) * qrow];
        let r = attention(q, &kf[bi], &vf[bi], &h, 1, l, &c.opts).unwrap();
        let o = to_f64(&out[bi * qrow..(bi + 1) * qrow]);
        let ls: Vec<f64> = lse[bi * h.num_qo_heads..(bi + 1) * h.num_qo_heads]
            .iter()
            .map(|&x| x as f64)
            .collect();
        worst = worst.worst(ErrorStats::compare(&o, &r.o, Some((&ls, &r.lse))));
    }
    worst
}

fn decode_case(gpu: &Gpu, c: &Case, kind: Option<DecodeKernel>) -> (DType, ErrorStats) {
    match (c.bf16, c.e5m2) {
        (false, false) => (DType::F16, run_decode::<f16, E4m3>(gpu, c, kind)),
        (false, true) => (DType::F16, run_decode::<f16, E5m2>(gpu, c, kind)),
        (true, false) => (DType::Bf16, run_decode::<bf16, E4m3>(gpu, c, kind)),
        (true, true) => (DType::Bf16, run_decode::<bf16, E5m2>(gpu, c, kind)),
    }
}

/// The kernel families a case can run on: CUDA cores at groups up to 8, tensor cores at head
/// dims 64 and 128 (groups up to 16).
fn kinds(c: &Case) -> Vec<DecodeKernel> {
    let mut k = Vec::new();
    if c.heads.group() <= 8 {
        k.push(DecodeKernel::CudaCore);
    }
    if c.heads.head_dim <= 128 {
        k.push(DecodeKernel::TensorCore);
    }
    k
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_fp8_batch_decode_random_matches_oracle() {
    let Some(gpu) = gpu_or_skip("gpu_fp8_batch_decode_random_matches_oracle") else {
        return;
    };
    let cases = proptest_cases(64);
    let worst = std::cell::Cell::new(ErrorStats::default());
    TestRunner::new(ProptestConfig::with_cases(cases))
        .run(&arb_case(48, 4000), |c| {
            for kind in kinds(&c) {
                let (dt, s) = decode_case(&gpu, &c, Some(kind));
                s.assert_within(dt, &(kind, &c));
                worst.set(worst.get().worst(s));
            }
            Ok(())
        })
        .unwrap();
    println!(
        "gpu fp8 batch decode: {cases} random batches, worst {:?}",
        worst.get()
    );
}

/// Every head dim × group capacity × format × query type once on each kernel family that takes
/// it (groups 12 and 16: tensor cores only), at
/// lengths that split the KV (the fused split merge carries V's scale through the partial
/// states).
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_fp8_every_kernel_instance() {
    let Some(gpu) = gpu_or_skip("gpu_fp8_every_kernel_instance") else {
        return;
    };
    let mut worst = ErrorStats::default();
    let mut seed = 0;
    for d in [64usize, 128, 256] {
        for g in [1usize, 2, 3, 4, 8, 12, 16] {
            if g > 8 && d > 128 {
                continue;
            }
            for (bf16, e5m2) in [(false, false), (false, true), (true, false), (true, true)] {
                seed += 1;
                let c = Case {
                    heads: HeadConfig::new(2 * g, 2, d).unwrap(),
                    page_size: 16,
                    layout: if seed % 2 == 0 {
                        KvLayout::Nhd
                    } else {
                        KvLayout::Hnd
                    },
                    lens: vec![1, 4097, 300, 0],
                    opts: AttentionOptions::default(),
                    bf16,
                    e5m2,
                    seed,
                };
                for kind in kinds(&c) {
                    let (dt, s) = decode_case(&gpu, &c, Some(kind));
                    s.assert_within(dt, &(kind, &c));
                    worst = worst.worst(s);
                }
            }
        }
    }
    println!("gpu fp8 decode, every instance: worst {worst:?}");
}

/// The device append's bytes equal the CPU quantiser's at every written (page, entry, head),
/// saturated outliers and NaN included.
fn run_append<T: Float16, F: Fp8Format>(gpu: &Gpu, c: &Case) {
    let h = c.heads;
    let mut d = make::<T>(c);
    if let Some(x) = d.v.get_mut(3) {
        *x = T::nan();
    }
    let (pages, num_pages) = shuffled_pages(&mut rng(c.seed ^ 1), &c.lens, c.page_size, 3);
    let kv = (&d.k[..], &d.v[..]);
    let gp = gpu_pool::<T, F>(
        gpu,
        &h,
        c.page_size,
        c.layout,
        &pages,
        num_pages,
        &c.lens,
        kv,
        d.scales,
    );
    let hp = host_pool::<T, F>(
        &h,
        c.page_size,
        c.layout,
        &pages,
        num_pages,
        &c.lens,
        kv,
        d.scales,
    );
    let (gk, gv) = gp.device_buffers().unwrap();
    let (gk, gv) = (gpu.download(gk).unwrap(), gpu.download(gv).unwrap());
    let (hk, hv) = hp.host_buffers().unwrap();
    let cfg = *gp.config();
    let mut checked = 0usize;
    for (b, &len) in c.lens.iter().enumerate() {
        for t in 0..len {
            let page = pages.kv_indices[pages.kv_indptr[b] as usize + t / cfg.page_size] as usize;
            for hk_ in 0..cfg.num_kv_heads {
                let at = cfg.offset(page, t % cfg.page_size, hk_);
                let n = cfg.head_dim;
                let bytes = |x: &[Fp8<F>]| x.iter().map(|c| c.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bytes(&gk[at..at + n]),
                    bytes(&hk[at..at + n]),
                    "K {c:?} b{b} t{t} h{hk_}"
                );
                assert_eq!(
                    bytes(&gv[at..at + n]),
                    bytes(&hv[at..at + n]),
                    "V {c:?} b{b} t{t} h{hk_}"
                );
                checked += 2 * n;
            }
        }
    }
    assert_eq!(
        checked,
        2 * c.lens.iter().sum::<usize>() * h.num_kv_heads * h.head_dim
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_fp8_append_matches_cpu_quantizer_bit_for_bit() {
    let Some(gpu) = gpu_or_skip("gpu_fp8_append_matches_cpu_quantizer_bit_for_bit") else {
        return;
    };
    let cases = proptest_cases(48);
    TestRunner::new(ProptestConfig::with_cases(cases))
        .run(&arb_case(24, 600), |c| {
            match (c.bf16, c.e5m2) {
                (false, false) => run_append::<f16, E4m3>(&gpu, &c),
                (false, true) => run_append::<f16, E5m2>(&gpu, &c),
                (true, false) => run_append::<bf16, E4m3>(&gpu, &c),
                (true, true) => run_append::<bf16, E5m2>(&gpu, &c),
            }
            Ok(())
        })
        .unwrap();
    println!("gpu fp8 append: {cases} random batches bit for bit");
}

/// Bad input: typed errors, outputs untouched.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_fp8_bad_input_is_a_typed_error() {
    let Some(gpu) = gpu_or_skip("gpu_fp8_bad_input_is_a_typed_error") else {
        return;
    };
    let c = Case {
        heads: HeadConfig::new(8, 2, 128).unwrap(),
        page_size: 16,
        layout: KvLayout::Nhd,
        lens: vec![40, 3],
        opts: AttentionOptions::default(),
        bf16: true,
        e5m2: false,
        seed: 5,
    };
    let h = c.heads;
    let d = make::<bf16>(&c);
    let (pages, num_pages) = shuffled_pages(&mut rng(1), &c.lens, 16, 3);
    let kv = (&d.k[..], &d.v[..]);
    let pool: KvPool<bf16, Fp8<E4m3>> = gpu_pool(
        &gpu, &h, 16, c.layout, &pages, num_pages, &c.lens, kv, d.scales,
    );
    let p5: KvPool<bf16, Fp8<E5m2>> = gpu_pool(
        &gpu, &h, 16, c.layout, &pages, num_pages, &c.lens, kv, d.scales,
    );
    let qd = gpu.upload(&d.q).unwrap();
    let poison = vec![bf16::NAN; 2 * h.num_qo_heads * h.head_dim];
    let mut od = gpu.upload(&poison).unwrap();
    let untouched = |od: &ferrinfer::DeviceBuffer<bf16>| {
        let now = gpu.download(od).unwrap();
        now.iter().all(|x| x.is_nan())
    };

    // An op still reading bf16 K/V: run_fp8 refuses (the pool's type is not the op's).
    let mut op = BatchDecode::new(&gpu, h, DType::Bf16, c.opts).unwrap();
    let plan = op.plan(&pages, pool.config()).unwrap();
    let e = op.run_fp8(&plan, &qd, &pool, d.scales, &mut od, None);
    assert!(
        matches!(
            e,
            Err(Error::InvalidArgument {
                what: "kv dtype",
                ..
            })
        ),
        "{e:?}"
    );
    // Set to e4m3: an e5m2 pool is refused; the 16-bit run is refused; bad scales are refused.
    op.set_kv_dtype(KvDtype::E4m3).unwrap();
    // fp8 defaults to tensor cores where they support the heads.
    let family = if h.head_dim <= 128 {
        DecodeKernel::TensorCore
    } else {
        DecodeKernel::CudaCore
    };
    assert_eq!(op.kernel_kind(), family);
    // The kernel family changed: plan again.
    let plan = op.plan(&pages, pool.config()).unwrap();
    let p16 = ferrinfer_harness::paged::gpu_pool(
        &gpu, &h, 16, c.layout, &pages, num_pages, &c.lens, &d.k, &d.v,
    );
    let e = op.run(&plan, &qd, &p16, &mut od, None);
    assert!(
        matches!(
            e,
            Err(Error::InvalidArgument {
                what: "kv dtype",
                ..
            })
        ),
        "{e:?}"
    );
    let e = op.run_fp8(&plan, &qd, &p5, d.scales, &mut od, None);
    assert!(
        matches!(
            e,
            Err(Error::InvalidArgument {
                what: "kv dtype",
                ..
            })
        ),
        "{e:?}"
    );
    for (s, what) in [
        (KvScales { k: 0.0, v: 1.0 }, "k_scale"),
        (
            KvScales {
                k: 1.0,
                v: f32::NAN,
            },
            "v_scale",
        ),
        (
            KvScales {
                k: f32::INFINITY,
                v: 1.0,
            },
            "k_scale",
        ),
        (KvScales { k: 1.0, v: -2.0 }, "v_scale"),
    ] {
        let e = op.run_fp8(&plan, &qd, &pool, s, &mut od, None);
        assert!(
            matches!(e, Err(Error::InvalidArgument { what: w, .. }) if w == what),
            "{e:?}"
        );
    }
    // The caller-memory path refuses another format too.
    // SAFETY: refused before any launch.
    let e = unsafe {
        op.run_spans_fp8(
            &plan,
            qd.span(),
            &pool_spans(&p5),
            d.scales,
            od.span(),
            None,
        )
    };
    assert!(
        matches!(
            e,
            Err(Error::InvalidArgument {
                what: "kv dtype",
                ..
            })
        ),
        "{e:?}"
    );
    // The tensor-core fp8 kernel exists at D ≤ 128 only: a typed error at D = 256.
    let h256 = HeadConfig::new(8, 2, 256).unwrap();
    let mut op256 = BatchDecode::new(&gpu, h256, DType::Bf16, c.opts).unwrap();
    op256.set_kv_dtype(KvDtype::E5m2).unwrap();
    assert!(matches!(
        op256.set_kernel(DecodeKernel::TensorCore),
        Err(Error::Unsupported { .. })
    ));
    gpu.synchronize().unwrap();
    assert!(untouched(&od), "output written by a refused call");
    // And the op still runs.
    op.run_fp8(&plan, &qd, &pool, d.scales, &mut od, None)
        .unwrap();
    gpu.synchronize().unwrap();
    assert!(!untouched(&od));
}

/// Single decode over contiguous fp8 K/V (`SingleDecode::run_fp8`): every head dim, groups,
/// both formats, lengths from 0 to past one split, against the oracle on dequantised K/V.
fn run_single<T: Float16, F: Fp8Format>(gpu: &Gpu, h: HeadConfig, kv_len: usize, seed: u64) {
    let mut r = rng(seed);
    let scales = random_scales(&mut r);
    let n = kv_len * h.num_kv_heads * h.head_dim;
    let (k, _) = random_values::<T>(&mut r, n, 2.0);
    let (v, _) = random_values::<T>(&mut r, n, 1.0);
    let (q, qf) = random_values::<T>(&mut r, h.num_qo_heads * h.head_dim, 1.0);
    let (kc, kf) = quantize_rows::<T, F>(&k, scales.k);
    let (vc, vf) = quantize_rows::<T, F>(&v, scales.v);
    let opts = AttentionOptions::default();
    let mut op = ferrinfer::ops::SingleDecode::new(gpu, h, T::DTYPE, opts).unwrap();
    op.set_kv_dtype(<Fp8<F> as KvElem>::KV_DTYPE).unwrap();
    // An empty tensor still needs a buffer: one zero code.
    let up = |c: &[Fp8<F>]| {
        let c = if c.is_empty() {
            vec![Fp8::from_bits(0)]
        } else {
            c.to_vec()
        };
        gpu.upload(&c).unwrap()
    };
    let (kd, vd, qd) = (up(&kc), up(&vc), gpu.upload(&q).unwrap());
    let mut od = gpu
        .upload(&vec![T::nan(); h.num_qo_heads * h.head_dim])
        .unwrap();
    let mut ld = gpu.upload(&vec![f32::NAN; h.num_qo_heads]).unwrap();
    op.run_fp8(&qd, &kd, &vd, kv_len, scales, &mut od, Some(&mut ld))
        .unwrap();
    let r = attention(&qf, &kf, &vf, &h, 1, kv_len, &opts).unwrap();
    let o = to_f64(&gpu.download(&od).unwrap());
    let l: Vec<f64> = gpu
        .download(&ld)
        .unwrap()
        .iter()
        .map(|&x| x as f64)
        .collect();
    let s = ErrorStats::compare(&o, &r.o, Some((&l, &r.lse)));
    s.assert_within(T::DTYPE, &(h, kv_len, F::NAME, seed));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_fp8_single_decode_matches_oracle() {
    let Some(gpu) = gpu_or_skip("gpu_fp8_single_decode_matches_oracle") else {
        return;
    };
    let mut seed = 100;
    for d in [64usize, 128, 256] {
        for g in [1usize, 4, 8] {
            for kv_len in [0usize, 1, 37, 5000] {
                seed += 1;
                let h = HeadConfig::new(2 * g, 2, d).unwrap();
                run_single::<bf16, E4m3>(&gpu, h, kv_len, seed);
                run_single::<f16, E5m2>(&gpu, h, kv_len, seed);
            }
        }
    }
}
