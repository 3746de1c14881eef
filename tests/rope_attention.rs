//! RoPE inside attention (FlashInfer's `pos_encoding_mode = "ROPE_LLAMA"`) in batch decode: the
//! GPU op (`BatchDecode::set_rope`) and the CPU twin (`cpu::batch_decode_rope`) against the f64
//! oracle fed q and K rotated in f64 first ("RoPE, then attention"; `ferrinfer_harness::rope`),
//! over random batches, head dims, groups, page sizes, layouts, options, both pairings
//! (`rotate_half`, interleaved), partial rotary dims, base θ, linear and Llama-3.1 scaling and
//! explicit per-request position offsets up to 10⁵.
//!
//! Bounds: the 16-bit tolerance table (`reference::tolerance`), as for plain decode. The kernels
//! keep the rotated q and keys in f32 (never rounded to 16 bits), so the only roundings beyond
//! plain decode's are the f32 angle (the same product on both sides, by definition of the op)
//! and the f32 `sincos` (absolute error below 2.5·10⁻⁷ for these angles, `math::trig`), far
//! below the 16-bit output rounding. The consistency test also checks the op against "apply
//! RoPE to q and the cache, then plain decode" (both computed by ferrinfer); there the rotated
//! rows are rounded to 16 bits on one side only, so its bound is the 16-bit tolerance of the
//! rounded inputs (documented at the test).
use ferrinfer::dtype::KvDtype;
use ferrinfer::kv::{BatchPages, KvLayout};
use ferrinfer::ops::{BatchDecode, BatchPrefill, DecodeKernel};
use ferrinfer::reference::attention;
use ferrinfer::rope::{RopeConfig, RopeScaling, RopeStyle};
use ferrinfer::{cpu, AttentionOptions, DType, DeviceBuffer, Error, Float16, Gpu, HeadConfig};
use ferrinfer_harness::paged::{gpu_pool, host_pool, per_request, shuffled_pages};
use ferrinfer_harness::rope::rotate_rows;
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
    rope: RopeConfig,
    offsets: Option<Vec<i32>>,
    seed: u64,
}

/// Host data of a case: K/V rows (request after request), q, the page tables and the oracle's
/// f64 images with q and K already rotated.
struct Data<T> {
    pages: BatchPages,
    num_pages: usize,
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    qf: Vec<f64>,
    kf: Vec<Vec<f64>>,
    vf: Vec<Vec<f64>>,
}

impl Case {
    fn offset(&self, b: usize) -> u32 {
        self.offsets.as_ref().map_or(0, |o| o[b] as u32)
    }
}

fn make<T: Float16>(c: &Case) -> Data<T> {
    let h = c.heads;
    let mut r = rng(c.seed);
    let (pages, num_pages) = shuffled_pages(&mut r, &c.lens, c.page_size, 3);
    let row = h.num_kv_heads * h.head_dim;
    let n_rows: usize = c.lens.iter().sum();
    let (k, mut kall) = random_values::<T>(&mut r, n_rows * row, 2.0);
    let (v, vall) = random_values::<T>(&mut r, n_rows * row, 1.0);
    let (q, mut qf) = random_values::<T>(&mut r, c.lens.len() * h.num_qo_heads * h.head_dim, 2.0);
    let inv_freq = c.rope.inv_freq(h.head_dim, None).unwrap();
    let style = c.rope.style;
    // Key t of request b at offset(b) + t; the query at offset(b) + len − 1.
    let mut owner = Vec::with_capacity(n_rows);
    for (b, &l) in c.lens.iter().enumerate() {
        owner.extend((0..l).map(|t| c.offset(b) + t as u32));
    }
    rotate_rows(
        &mut kall,
        h.num_kv_heads,
        h.head_dim,
        &inv_freq,
        style,
        |i| owner[i],
    );
    rotate_rows(&mut qf, h.num_qo_heads, h.head_dim, &inv_freq, style, |b| {
        (c.offset(b) + c.lens[b] as u32).saturating_sub(1)
    });
    Data {
        pages,
        num_pages,
        q,
        k,
        v,
        qf,
        kf: per_request(&kall, &c.lens, row),
        vf: per_request(&vall, &c.lens, row),
    }
}

/// The worst error of each `(out, lse)` in `outs` against the oracle: request `b` has the query
/// rows `qo_indptr[b]..qo_indptr[b + 1]` of `qf` (rotated) and its keys `d.kf[b]`, `d.vf[b]`.
fn compare<T: Float16>(
    c: &Case,
    d: &Data<T>,
    qf: &[f64],
    qo_indptr: &[i32],
    outs: &[(&[T], &[f32])],
) -> ErrorStats {
    let h = c.heads;
    let (hq, qrow) = (h.num_qo_heads, h.num_qo_heads * h.head_dim);
    let mut worst = ErrorStats::default();
    for (b, &l) in c.lens.iter().enumerate() {
        let (q0, q1) = (qo_indptr[b] as usize, qo_indptr[b + 1] as usize);
        let (q, n) = (&qf[q0 * qrow..q1 * qrow], q1 - q0);
        let reference = attention(q, &d.kf[b], &d.vf[b], &h, n, l, &c.opts).unwrap();
        for &(out, lse) in outs {
            let o = to_f64(&out[q0 * qrow..q1 * qrow]);
            let ls: Vec<f64> = lse[q0 * hq..q1 * hq].iter().map(|&x| x as f64).collect();
            let s = ErrorStats::compare(&o, &reference.o, Some((&ls, &reference.lse)));
            worst = worst.worst(s);
        }
    }
    worst
}

/// One query row per request (decode).
fn decode_rows(c: &Case) -> Vec<i32> {
    (0..=c.lens.len() as i32).collect()
}

fn run_gpu<T: Float16>(gpu: &Gpu, c: &Case) -> ErrorStats {
    let d = make::<T>(c);
    let h = c.heads;
    let pool = gpu_pool(
        gpu,
        &h,
        c.page_size,
        c.layout,
        &d.pages,
        d.num_pages,
        &c.lens,
        &d.k,
        &d.v,
    );
    let mut op = BatchDecode::new(gpu, h, T::DTYPE, c.opts).unwrap();
    op.set_rope(Some(c.rope)).unwrap();
    let mut plan = op.plan(&d.pages, pool.config()).unwrap();
    if let Some(o) = &c.offsets {
        op.plan_into_with_offsets(&d.pages, pool.config(), o, &mut plan)
            .unwrap();
    }
    let qd = gpu.upload(&d.q).unwrap();
    let n = c.lens.len() * h.num_qo_heads * h.head_dim;
    // Poisoned outputs: an element the kernel misses stays NaN and fails the comparison.
    let mut od = gpu.upload(&vec![T::nan(); n]).unwrap();
    let mut ld = gpu
        .upload(&vec![f32::NAN; c.lens.len() * h.num_qo_heads])
        .unwrap();
    op.run(&plan, &qd, &pool, &mut od, Some(&mut ld)).unwrap();
    let (out, lse) = (gpu.download(&od).unwrap(), gpu.download(&ld).unwrap());
    compare(c, &d, &d.qf, &decode_rows(c), &[(&out, &lse)])
}

fn run_cpu<T: Float16>(c: &Case) -> ErrorStats {
    let d = make::<T>(c);
    let h = c.heads;
    let pool = host_pool(
        &h,
        c.page_size,
        c.layout,
        &d.pages,
        d.num_pages,
        &c.lens,
        &d.k,
        &d.v,
    );
    let n = c.lens.len() * h.num_qo_heads * h.head_dim;
    let mut out = vec![T::nan(); n];
    let mut lse = vec![f32::NAN; c.lens.len() * h.num_qo_heads];
    cpu::batch_decode_rope(
        &h,
        &c.opts,
        &c.rope,
        c.offsets.as_deref(),
        &d.q,
        &pool,
        &d.pages,
        &mut out,
        Some(&mut lse),
    )
    .unwrap();
    compare(c, &d, &d.qf, &decode_rows(c), &[(&out, &lse)])
}

fn arb_rope(d: usize) -> impl Strategy<Value = RopeConfig> {
    (
        any::<bool>(),
        prop_oneof![Just(d), (1..=d / 16).prop_map(|m| m * 16)],
        prop::sample::select(vec![10_000.0f32, 100_000.0, 500_000.0]),
        prop_oneof![
            Just(RopeScaling::None),
            Just(RopeScaling::Linear { factor: 4.0 }),
            Just(RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_context: 8192,
            }),
        ],
    )
        .prop_map(|(half, rotary_dim, theta, scaling)| RopeConfig {
            theta,
            rotary_dim,
            scaling,
            style: if half {
                RopeStyle::Half
            } else {
                RopeStyle::Interleaved
            },
        })
}

fn arb_case(max_batch: usize, max_len: usize) -> impl Strategy<Value = (Case, bool)> {
    prop::sample::select(vec![64usize, 128, 256])
        .prop_flat_map(move |d| {
            (
                Just(d),
                arb_rope(d),
                prop::sample::select(vec![1usize, 2, 3, 4, 5, 8]),
                1usize..=2,
                prop::sample::select(vec![1usize, 8, 16]),
                any::<bool>(),
                prop::collection::vec(
                    prop_oneof![Just(0usize), Just(1), 1usize..max_len, Just(17)],
                    1..max_batch,
                ),
                prop_oneof![Just(None), (1.0f32..50.0).prop_map(Some)],
                prop_oneof![Just(None), (0usize..800).prop_map(Some)],
                prop_oneof![Just(false), Just(true)],
                any::<u64>(),
                any::<bool>(),
            )
        })
        .prop_map(
            |(d, rope, g, hkv, p, hnd, lens, cap, win, offs, seed, bf)| {
                let opts = AttentionOptions {
                    soft_cap: cap,
                    window_left: win,
                    ..Default::default()
                };
                let offsets = offs.then(|| {
                    let mut r = rng(seed ^ 0x5eed);
                    lens.iter()
                        .map(|_| rand::Rng::random_range(&mut r, 0..100_000))
                        .collect()
                });
                let case = Case {
                    heads: HeadConfig::new(hkv * g, hkv, d).unwrap(),
                    page_size: p,
                    layout: if hnd { KvLayout::Hnd } else { KvLayout::Nhd },
                    lens,
                    opts,
                    rope,
                    offsets,
                    seed,
                };
                (case, bf)
            },
        )
}

#[test]
fn cpu_rope_decode_matches_oracle() {
    TestRunner::new(ProptestConfig::with_cases(proptest_cases(16)))
        .run(&arb_case(8, 700), |(c, bf)| {
            if bf {
                run_cpu::<bf16>(&c).assert_within(DType::Bf16, &c);
            } else {
                run_cpu::<f16>(&c).assert_within(DType::F16, &c);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_rope_decode_matches_oracle() {
    let Some(gpu) = gpu_or_skip("gpu_rope_decode_matches_oracle") else {
        return;
    };
    let cases = proptest_cases(64);
    let worst = std::cell::Cell::new(ErrorStats::default());
    TestRunner::new(ProptestConfig::with_cases(cases))
        .run(&arb_case(48, 4000), |(c, bf)| {
            let (dt, s) = if bf {
                (DType::Bf16, run_gpu::<bf16>(&gpu, &c))
            } else {
                (DType::F16, run_gpu::<f16>(&gpu, &c))
            };
            s.assert_within(dt, &c);
            worst.set(worst.get().worst(s));
            Ok(())
        })
        .unwrap();
    println!(
        "gpu rope decode: {cases} random batches, worst {:?}",
        worst.get()
    );
}

/// RoPE inside attention equals applying RoPE to q and to the cached keys first, then plain
/// decode (both sides computed by ferrinfer's CPU backend). The pre-rotated rows are rounded to
/// the 16-bit type before the plain decode reads them, which the in-attention path never does:
/// relative error of each input element up to 2⁻⁹ (bf16) / 2⁻¹² (f16), a few such roundings in
/// each logit, so the outputs agree to the 16-bit tolerance table, the bound used here.
#[test]
fn cpu_rope_equals_rope_then_decode() {
    let c = Case {
        heads: HeadConfig::new(8, 2, 128).unwrap(),
        page_size: 16,
        layout: KvLayout::Nhd,
        lens: vec![1, 37, 300, 1000],
        opts: AttentionOptions::default(),
        rope: RopeConfig {
            theta: 500_000.0,
            rotary_dim: 128,
            scaling: RopeScaling::None,
            style: RopeStyle::Half,
        },
        offsets: Some(vec![0, 5, 4096, 77_777]),
        seed: 7,
    };
    let h = c.heads;
    let d = make::<bf16>(&c);
    let inv_freq = c.rope.inv_freq(h.head_dim, None).unwrap();
    // ferrinfer's own RoPE op on the rows, then rounded to bf16 for the cache.
    let mut kr: Vec<f32> = d.k.iter().map(|x| x.to_f32()).collect();
    let mut kpos = Vec::new();
    for (b, &l) in c.lens.iter().enumerate() {
        kpos.extend((0..l).map(|t| (c.offset(b) + t as u32) as i32));
    }
    cpu::rope::apply_rope(
        &mut kr,
        h.num_kv_heads,
        h.head_dim,
        &kpos,
        &inv_freq,
        c.rope.style,
    )
    .unwrap();
    let mut qr: Vec<f32> = d.q.iter().map(|x| x.to_f32()).collect();
    let qpos: Vec<i32> = (0..c.lens.len())
        .map(|b| (c.offset(b) + c.lens[b] as u32 - 1) as i32)
        .collect();
    cpu::rope::apply_rope(
        &mut qr,
        h.num_qo_heads,
        h.head_dim,
        &qpos,
        &inv_freq,
        c.rope.style,
    )
    .unwrap();
    let to16 = |x: &[f32]| x.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>();
    let (k16, q16) = (to16(&kr), to16(&qr));
    let pool = host_pool(
        &h,
        c.page_size,
        c.layout,
        &d.pages,
        d.num_pages,
        &c.lens,
        &k16,
        &d.v,
    );
    let n = c.lens.len() * h.num_qo_heads * h.head_dim;
    let mut plain = vec![bf16::NAN; n];
    cpu::batch_decode(&h, &c.opts, &q16, &pool, &d.pages, &mut plain, None).unwrap();

    let pool = host_pool(
        &h,
        c.page_size,
        c.layout,
        &d.pages,
        d.num_pages,
        &c.lens,
        &d.k,
        &d.v,
    );
    let mut fused = vec![bf16::NAN; n];
    let offsets = c.offsets.as_deref();
    cpu::batch_decode_rope(
        &h, &c.opts, &c.rope, offsets, &d.q, &pool, &d.pages, &mut fused, None,
    )
    .unwrap();
    let s = ErrorStats::compare(&to_f64(&fused), &to_f64(&plain), None);
    s.assert_within(DType::Bf16, &c);
    // And it is not vacuous: without the rotation the outputs differ grossly.
    let mut unrotated = vec![bf16::NAN; n];
    cpu::batch_decode(&h, &c.opts, &d.q, &pool, &d.pages, &mut unrotated, None).unwrap();
    let s = ErrorStats::compare(&to_f64(&unrotated), &to_f64(&plain), None);
    assert!(s.rel_l2 > 0.1, "rotation had no effect: {s:?}");
}

/// Configurations the kernels cannot run are typed errors at `set_rope` / `plan`, before any
/// launch; the CPU twin rejects bad offsets the same way.
#[test]
fn cpu_bad_rope_input_is_a_typed_error() {
    let h = HeadConfig::new(4, 1, 64).unwrap();
    let rope = RopeConfig {
        theta: 10_000.0,
        rotary_dim: 64,
        scaling: RopeScaling::None,
        style: RopeStyle::Half,
    };
    let lens = [5usize, 9];
    let mut r = rng(3);
    let (pages, num_pages) = shuffled_pages(&mut r, &lens, 4, 0);
    let (k, _) = random_values::<f16>(&mut r, 14 * 64, 1.0);
    let pool = host_pool(&h, 4, KvLayout::Nhd, &pages, num_pages, &lens, &k, &k);
    let q = vec![f16::ZERO; 2 * 4 * 64];
    let mut out = vec![f16::NAN; 2 * 4 * 64];
    let opts = AttentionOptions::default();
    let run = |rope: &RopeConfig, offsets: Option<&[i32]>, out: &mut [f16]| {
        cpu::batch_decode_rope(&h, &opts, rope, offsets, &q, &pool, &pages, out, None)
    };
    let e = run(&rope, Some(&[0]), &mut out).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = run(&rope, Some(&[0, -1]), &mut out).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    let e = run(&rope, Some(&[0, i32::MAX - 3]), &mut out).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    let odd = RopeConfig {
        rotary_dim: 63,
        ..rope
    };
    let e = run(&odd, None, &mut out).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    assert!(out.iter().all(|x| x.is_nan()), "an error wrote output");
}

/// The GPU op's typed errors: a rotary dim the lanes cannot pair, fp8 K/V, the tensor-core
/// kernel, bad offsets; nothing is launched.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_bad_rope_input_is_a_typed_error() {
    let Some(gpu) = gpu_or_skip("gpu_bad_rope_input_is_a_typed_error") else {
        return;
    };
    let h = HeadConfig::new(8, 2, 128).unwrap();
    let rope = RopeConfig {
        theta: 10_000.0,
        rotary_dim: 128,
        scaling: RopeScaling::None,
        style: RopeStyle::Half,
    };
    let mut op = BatchDecode::new(&gpu, h, DType::Bf16, AttentionOptions::default()).unwrap();
    let partial = RopeConfig {
        rotary_dim: 40,
        ..rope
    };
    let e = op.set_rope(Some(partial)).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    // Interleaved pairs are lane-local: any even rotary dim works.
    op.set_rope(Some(RopeConfig {
        style: RopeStyle::Interleaved,
        ..partial
    }))
    .unwrap();
    op.set_rope(Some(rope)).unwrap();
    assert_eq!(op.kernel_kind(), DecodeKernel::CudaCore);
    let e = op.set_kernel(DecodeKernel::TensorCore).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    let e = op.set_kv_dtype(KvDtype::E4m3).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    assert!(op.kernel_name().starts_with("decode_rope_bf16_d128"));
    let lens = [3usize, 20];
    let mut r = rng(5);
    let (pages, num_pages) = shuffled_pages(&mut r, &lens, 16, 1);
    let (k, _) = random_values::<bf16>(&mut r, 23 * 2 * 128, 1.0);
    let pool = gpu_pool(
        &gpu,
        &h,
        16,
        KvLayout::Nhd,
        &pages,
        num_pages,
        &lens,
        &k,
        &k,
    );
    let mut plan = op.plan(&pages, pool.config()).unwrap();
    let e = op
        .plan_into_with_offsets(&pages, pool.config(), &[1], &mut plan)
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = op
        .plan_into_with_offsets(&pages, pool.config(), &[1, -2], &mut plan)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    // Switching RoPE off restores the plain kernel.
    op.set_rope(None).unwrap();
    assert!(op.kernel_name().starts_with("decode_bf16_d128"));

    // Prefill: the same rotary-dim rule, offsets checked at plan time, no custom mask.
    let mut pf = BatchPrefill::new(&gpu, h, DType::Bf16, AttentionOptions::default()).unwrap();
    let e = pf.set_rope(Some(partial)).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    pf.set_rope(Some(rope)).unwrap();
    let (qo, kv) = ([0, 1, 3], [0, 3, 23]);
    let mut plan = pf.plan_ragged(&qo, &kv).unwrap();
    let e = pf
        .plan_ragged_into_with_offsets(&qo, &kv, &[0], &mut plan)
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = pf
        .plan_ragged_into_with_offsets(&qo, &kv, &[0, -5], &mut plan)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    let mask = ferrinfer::mask::segment_packbits(&[true; 3 + 40], &[0, 3, 43]).unwrap();
    let e = pf
        .plan_ragged_masked(&qo, &kv, &mask)
        .err()
        .expect("mask with RoPE");
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
}

/// Prefill with RoPE inside attention: query token `i` of request `b` at its causal position
/// `offsets[b] + kv_len − qo_len + i`, key `t` at `offsets[b] + t`, against the f64 oracle fed
/// rotated rows; causal or not, window, soft-cap, both pairings and scalings. The GPU kernels
/// rotate K (and Q) tiles in shared memory and round them to the 16-bit type once (FlashInfer's
/// scheme): one more rounding of each input element, relative 2⁻⁹ (bf16) / 2⁻¹² (f16), of the
/// same order as the inputs' own, so the bounds stay the tolerance table's.
fn prefill_strategy(
    max_batch: usize,
    max_len: usize,
) -> impl Strategy<Value = (Case, bool, Vec<usize>)> {
    (
        arb_case(max_batch, max_len),
        prop::collection::vec(0.0f64..=1.0, max_batch),
        any::<bool>(),
    )
        .prop_map(|((mut c, bf), frac, causal)| {
            c.opts.causal = causal;
            // Query tokens per request: a fraction of its keys (0 allowed).
            let qo = c
                .lens
                .iter()
                .zip(&frac)
                .map(|(&l, &f)| (l as f64 * f) as usize)
                .collect();
            (c, bf, qo)
        })
}

#[test]
fn cpu_rope_prefill_matches_oracle() {
    TestRunner::new(ProptestConfig::with_cases(proptest_cases(16)))
        .run(&prefill_strategy(6, 300), |(c, bf, qo)| {
            if bf {
                prefill::<bf16>(None, &c, &qo).assert_within(DType::Bf16, &c);
            } else {
                prefill::<f16>(None, &c, &qo).assert_within(DType::F16, &c);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_rope_prefill_matches_oracle() {
    let Some(gpu) = gpu_or_skip("gpu_rope_prefill_matches_oracle") else {
        return;
    };
    let cases = proptest_cases(48);
    let worst = std::cell::Cell::new(ErrorStats::default());
    TestRunner::new(ProptestConfig::with_cases(cases))
        .run(&prefill_strategy(8, 800), |(c, bf, qo)| {
            let (dt, s) = if bf {
                (DType::Bf16, prefill::<bf16>(Some(&gpu), &c, &qo))
            } else {
                (DType::F16, prefill::<f16>(Some(&gpu), &c, &qo))
            };
            s.assert_within(dt, &c);
            worst.set(worst.get().worst(s));
            Ok(())
        })
        .unwrap();
    println!(
        "gpu rope prefill (ragged and paged): {cases} random batches, worst {:?}",
        worst.get()
    );
}

/// Outputs and lse of one prefill backend: `[nnz_q, Hq, D]` and `[nnz_q, Hq]`.
type Outputs<T> = (Vec<T>, Vec<f32>);

/// Runs the ragged and the paged prefill with RoPE (on `gpu`, else the CPU backend) and
/// returns the worse of their errors against the oracle.
fn prefill<T: Float16>(gpu: Option<&Gpu>, c: &Case, qo: &[usize]) -> ErrorStats {
    let h = c.heads;
    let d = make::<T>(c);
    let mut r = rng(c.seed ^ 0xabc);
    let qrow = h.num_qo_heads * h.head_dim;
    let nq: usize = qo.iter().sum();
    let (q, mut qf) = random_values::<T>(&mut r, nq * qrow, 2.0);
    let inv_freq = c.rope.inv_freq(h.head_dim, None).unwrap();
    let mut qpos = Vec::with_capacity(nq);
    for (b, (&l, &n)) in c.lens.iter().zip(qo).enumerate() {
        qpos.extend((0..n).map(|i| c.offset(b) + (l - n + i) as u32));
    }
    rotate_rows(
        &mut qf,
        h.num_qo_heads,
        h.head_dim,
        &inv_freq,
        c.rope.style,
        |i| qpos[i],
    );
    let mut qo_indptr = vec![0i32];
    let mut kv_indptr = vec![0i32];
    for (&n, &l) in qo.iter().zip(&c.lens) {
        qo_indptr.push(qo_indptr.last().unwrap() + n as i32);
        kv_indptr.push(kv_indptr.last().unwrap() + l as i32);
    }
    let (ragged, paged): (Outputs<T>, Outputs<T>) = match gpu {
        None => prefill_cpu(c, &d, &q, &qo_indptr, &kv_indptr),
        Some(g) => prefill_gpu(g, c, &d, &q, &qo_indptr, &kv_indptr),
    };
    let outs = [(&ragged.0[..], &ragged.1[..]), (&paged.0[..], &paged.1[..])];
    compare(c, &d, &qf, &qo_indptr, &outs)
}

fn prefill_cpu<T: Float16>(
    c: &Case,
    d: &Data<T>,
    q: &[T],
    qo_indptr: &[i32],
    kv_indptr: &[i32],
) -> (Outputs<T>, Outputs<T>) {
    let h = c.heads;
    let nq = *qo_indptr.last().unwrap() as usize;
    let fresh = || {
        (
            vec![T::nan(); nq * h.num_qo_heads * h.head_dim],
            vec![f32::NAN; nq * h.num_qo_heads],
        )
    };
    let offsets = c.offsets.as_deref();
    let (mut ro, mut rl) = fresh();
    cpu::batch_prefill_ragged_rope(
        &h,
        &c.opts,
        &c.rope,
        offsets,
        q,
        qo_indptr,
        &d.k,
        &d.v,
        kv_indptr,
        &mut ro,
        Some(&mut rl),
    )
    .unwrap();
    let pool = host_pool(
        &h,
        c.page_size,
        c.layout,
        &d.pages,
        d.num_pages,
        &c.lens,
        &d.k,
        &d.v,
    );
    let (mut po, mut pl) = fresh();
    cpu::batch_prefill_paged_rope(
        &h,
        &c.opts,
        &c.rope,
        offsets,
        q,
        qo_indptr,
        &pool,
        &d.pages,
        &mut po,
        Some(&mut pl),
    )
    .unwrap();
    ((ro, rl), (po, pl))
}

fn prefill_gpu<T: Float16>(
    gpu: &Gpu,
    c: &Case,
    d: &Data<T>,
    q: &[T],
    qo_indptr: &[i32],
    kv_indptr: &[i32],
) -> (Outputs<T>, Outputs<T>) {
    let h = c.heads;
    let nq = *qo_indptr.last().unwrap() as usize;
    let mut op = BatchPrefill::new(gpu, h, T::DTYPE, c.opts).unwrap();
    op.set_rope(Some(c.rope)).unwrap();
    let zeros = vec![0; c.lens.len()];
    let offsets = c.offsets.as_deref().unwrap_or(&zeros);
    let qd = gpu.upload(q).unwrap();
    // Poisoned outputs of exactly the planned size (a batch of empty queries has none): a
    // missed element stays NaN.
    let n = nq * h.num_qo_heads * h.head_dim;
    let fresh = || {
        (
            gpu.upload(&vec![T::nan(); n]).unwrap(),
            gpu.upload(&vec![f32::NAN; nq * h.num_qo_heads]).unwrap(),
        )
    };
    let take = |o: &DeviceBuffer<T>, l: &DeviceBuffer<f32>| {
        let (o, l) = (gpu.download(o).unwrap(), gpu.download(l).unwrap());
        (o[..n].to_vec(), l[..nq * h.num_qo_heads].to_vec())
    };
    let mut plan = op.plan_ragged(qo_indptr, kv_indptr).unwrap();
    op.plan_ragged_into_with_offsets(qo_indptr, kv_indptr, offsets, &mut plan)
        .unwrap();
    // A batch of empty requests has no K/V rows: upload one unread element instead.
    let pad = [T::nan()];
    let rows = |x: &'_ [T]| -> DeviceBuffer<T> {
        gpu.upload(if x.is_empty() { &pad[..] } else { x }).unwrap()
    };
    let (kd, vd) = (rows(&d.k), rows(&d.v));
    let (mut ro, mut rl) = fresh();
    op.run_ragged(&plan, &qd, &kd, &vd, &mut ro, Some(&mut rl))
        .unwrap();
    let ragged = take(&ro, &rl);
    let pool = gpu_pool(
        gpu,
        &h,
        c.page_size,
        c.layout,
        &d.pages,
        d.num_pages,
        &c.lens,
        &d.k,
        &d.v,
    );
    let mut plan = op.plan_paged(qo_indptr, &d.pages, pool.config()).unwrap();
    op.plan_paged_into_with_offsets(qo_indptr, &d.pages, pool.config(), offsets, &mut plan)
        .unwrap();
    let (mut po, mut pl) = fresh();
    op.run_paged(&plan, &qd, &pool, &mut po, Some(&mut pl))
        .unwrap();
    (ragged, take(&po, &pl))
}
