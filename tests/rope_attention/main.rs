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

mod decode;
mod errors;
mod prefill;
