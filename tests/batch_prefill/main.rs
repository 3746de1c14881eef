//! Batch prefill on the GPU (ragged K/V and the paged cache) against the f64 oracle: random
//! batches of 1–16 requests with mixed lengths (tile multiples ±1, qo_len up to 2048), random
//! page permutations, page sizes, layouts, groups, head dims, dtypes, causal or not, window, soft-cap, forced
//! split-KV; consistency with decode (qo_len = 1) and with chunked prefill over the cache;
//! CUDA-graph-mode plan reuse; bad input.
use ferrinfer::kv::{BatchPages, KvLayout, KvPool, KvPoolConfig, PoolSize};
use ferrinfer::ops::{BatchDecode, BatchPrefill, PrefillGraphLimits, PrefillTile};
use ferrinfer::reference::attention;
use ferrinfer::{AttentionOptions, DType, Error, Float16, Gpu, HeadConfig};
use ferrinfer_harness::paged::{gpu_pool, shuffled_pages};
use ferrinfer_harness::{gpu_or_skip, proptest_cases, random_values, rng, to_f64, ErrorStats};
use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

mod consistency;
mod hopper;
mod validation;

#[derive(Clone, Debug)]
struct Case {
    heads: HeadConfig,
    /// (qo_len, kv_len) per request.
    reqs: Vec<(usize, usize)>,
    /// `None`: ragged K/V; `Some((page_size, layout))`: paged.
    paged: Option<(usize, KvLayout)>,
    opts: AttentionOptions,
    fixed_split: Option<usize>,
    tile: PrefillTile,
    /// Ragged K/V of the Hopper tile by TMA, `cp.async`, or the plan's choice (`None`; see
    /// `BatchPrefill::set_tma`).
    tma: Option<bool>,
    seed: u64,
}

struct Data<T> {
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    qo_indptr: Vec<i32>,
    kv_indptr: Vec<i32>,
    /// o and lse of the oracle, request after request.
    ref_o: Vec<f64>,
    ref_lse: Vec<f64>,
}

fn make<T: Float16>(c: &Case) -> Data<T> {
    let h = c.heads;
    let mut r = rng(c.seed);
    let nq: usize = c.reqs.iter().map(|r| r.0).sum();
    let nk: usize = c.reqs.iter().map(|r| r.1).sum();
    let (qrow, krow) = (h.num_qo_heads * h.head_dim, h.num_kv_heads * h.head_dim);
    let (q, qf) = random_values::<T>(&mut r, nq * qrow, 2.0);
    let (k, kf) = random_values::<T>(&mut r, nk * krow, 2.0);
    let (v, vf) = random_values::<T>(&mut r, nk * krow, 1.0);
    let (mut qo_indptr, mut kv_indptr) = (vec![0i32], vec![0i32]);
    let (mut ref_o, mut ref_lse) = (Vec::new(), Vec::new());
    let (mut q0, mut k0) = (0, 0);
    for &(ql, kl) in &c.reqs {
        let rf = attention(
            &qf[q0 * qrow..(q0 + ql) * qrow],
            &kf[k0 * krow..(k0 + kl) * krow],
            &vf[k0 * krow..(k0 + kl) * krow],
            &h,
            ql,
            kl,
            &c.opts,
        )
        .unwrap();
        ref_o.extend_from_slice(&rf.o);
        ref_lse.extend_from_slice(&rf.lse);
        q0 += ql;
        k0 += kl;
        qo_indptr.push(q0 as i32);
        kv_indptr.push(k0 as i32);
    }
    Data {
        q,
        k,
        v,
        qo_indptr,
        kv_indptr,
        ref_o,
        ref_lse,
    }
}

/// A GPU pool holding every request's K/V at random pages, and its page tables.
fn paged_pool<T: Float16>(
    gpu: &Gpu,
    c: &Case,
    d: &Data<T>,
    page_size: usize,
    layout: KvLayout,
) -> (KvPool<T>, BatchPages) {
    let mut r = rng(c.seed ^ 0x5eed);
    let lens: Vec<usize> = c.reqs.iter().map(|r| r.1).collect();
    let (pages, num_pages) = shuffled_pages(&mut r, &lens, page_size, 2);
    let pool = gpu_pool(
        gpu, &c.heads, page_size, layout, &pages, num_pages, &lens, &d.k, &d.v,
    );
    (pool, pages)
}

fn run_gpu<T: Float16>(gpu: &Gpu, c: &Case) -> ErrorStats {
    let d = make::<T>(c);
    let h = c.heads;
    let mut op = BatchPrefill::new(gpu, h, T::DTYPE, c.opts).unwrap();
    op.set_fixed_split_size(c.fixed_split);
    // A tile this GPU's image lacks (the wgmma tile off compute capability 9.0) runs as the
    // 8-warp 128-row tile: the same rows per CTA, so the same plan shape.
    let tile = if PrefillTile::available(c.heads.head_dim, gpu.info().arch).contains(&c.tile) {
        c.tile
    } else {
        PrefillTile::Rows128
    };
    op.set_tile(Some(tile)).unwrap();
    op.set_tma(c.tma);
    let qd = gpu.upload(&d.q).unwrap();
    let mut od = gpu.upload(&vec![T::nan(); d.q.len()]).unwrap();
    let nq = *d.qo_indptr.last().unwrap() as usize;
    let mut ld = gpu.upload(&vec![f32::NAN; nq * h.num_qo_heads]).unwrap();
    match c.paged {
        None => {
            let plan = op.plan_ragged(&d.qo_indptr, &d.kv_indptr).unwrap();
            let (kd, vd) = (gpu.upload(&d.k).unwrap(), gpu.upload(&d.v).unwrap());
            op.run_ragged(&plan, &qd, &kd, &vd, &mut od, Some(&mut ld))
                .unwrap();
        }
        Some((ps, layout)) => {
            let (pool, pages) = paged_pool(gpu, c, &d, ps, layout);
            let plan = op.plan_paged(&d.qo_indptr, &pages, pool.config()).unwrap();
            op.run_paged(&plan, &qd, &pool, &mut od, Some(&mut ld))
                .unwrap();
        }
    }
    let o = to_f64(&gpu.download(&od).unwrap());
    let l: Vec<f64> = gpu
        .download(&ld)
        .unwrap()
        .iter()
        .map(|&x| x as f64)
        .collect();
    ErrorStats::compare(&o, &d.ref_o, Some((&l, &d.ref_lse)))
}

fn arb_case(max_batch: usize, max_len: usize) -> impl Strategy<Value = (Case, bool)> {
    // qo_len: tile edges, short and medium lengths, and now and then up to 2048 (the issue's
    // range; rare because the f64 oracle of a 2048-token request costs seconds).
    let req = (
        prop_oneof![
            8 => prop_oneof![
                Just(1usize),
                Just(15),
                Just(16),
                Just(17),
                Just(63),
                Just(64),
                Just(65),
                1usize..max_len
            ],
            1 => 1usize..=2048,
        ],
        prop_oneof![Just(0usize), Just(1), 0usize..max_len],
    );
    (
        prop::sample::select(vec![64usize, 128, 256]),
        prop::sample::select(vec![1usize, 2, 3, 4, 5, 8, 16, 32]),
        1usize..=2,
        prop::collection::vec(req, 1..max_batch),
        prop_oneof![
            Just(None),
            (prop::sample::select(vec![1usize, 5, 16]), any::<bool>())
                .prop_map(|(p, hnd)| Some((p, if hnd { KvLayout::Hnd } else { KvLayout::Nhd })))
        ],
        any::<bool>(),
        prop_oneof![Just(None), (1.0f32..50.0).prop_map(Some)],
        prop_oneof![Just(None), (0usize..600).prop_map(Some)],
        prop_oneof![Just(None), Just(Some(64usize)), Just(Some(200))],
        (any::<u64>(), any::<bool>(), 0u8..4, any::<bool>()),
    )
        .prop_map(
            |(d, g, hkv, reqs, paged, causal, cap, win, split, (seed, bf, tile_ix, tma))| {
                let case = Case {
                    heads: HeadConfig::new(hkv * g, hkv, d).unwrap(),
                    reqs: reqs.into_iter().map(|(q, extra)| (q, q + extra)).collect(),
                    paged,
                    opts: AttentionOptions {
                        soft_cap: cap,
                        window_left: win,
                        causal,
                        ..Default::default()
                    },
                    fixed_split: split,
                    // D = 256 has only the 64-row tile.
                    tile: if d == 256 {
                        PrefillTile::Rows64
                    } else {
                        PrefillTile::ALL[tile_ix as usize]
                    },
                    // A third of the cases leave the producer to the plan.
                    tma: (seed % 3 != 0).then_some(tma),
                    seed,
                };
                (case, bf)
            },
        )
}

fn check(s: ErrorStats, dtype: DType, c: &Case) {
    s.assert_within(dtype, c);
}

/// A ragged case again with the Hopper tile's other K/V load path (`cp.async` instead of TMA),
/// bf16, checked; its errors. `None` for paged cases (they have one path).
fn cp_async_form(gpu: &Gpu, c: &Case) -> Option<ErrorStats> {
    c.paged.is_none().then(|| {
        let c = Case {
            tma: Some(false),
            ..c.clone()
        };
        let s = run_gpu::<bf16>(gpu, &c);
        check(s, DType::Bf16, &c);
        s
    })
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_batch_prefill_random_matches_oracle() {
    let Some(gpu) = gpu_or_skip("gpu_batch_prefill_random_matches_oracle") else {
        return;
    };
    let cases = proptest_cases(48);
    let worst = std::cell::Cell::new(ErrorStats::default());
    TestRunner::new(ProptestConfig::with_cases(cases))
        .run(&arb_case(16, 600), |(c, bf)| {
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
    println!(
        "gpu batch prefill: {cases} random cases, worst {:?}",
        worst.get()
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_batch_prefill_long_and_split_shapes() {
    let Some(gpu) = gpu_or_skip("gpu_batch_prefill_long_and_split_shapes") else {
        return;
    };
    let heads = HeadConfig::new(8, 2, 128).unwrap();
    let causal = AttentionOptions {
        causal: true,
        ..Default::default()
    };
    let cases = [
        // One long request (not split), one short query over a long context (split by the
        // planner), a mixed batch, and a non-causal windowed append.
        (vec![(2048, 2048)], None, causal),
        (vec![(16, 8192)], Some((16, KvLayout::Nhd)), causal),
        (
            vec![(512, 4096), (1, 3000), (100, 100), (33, 700)],
            Some((16, KvLayout::Hnd)),
            causal,
        ),
        (
            vec![(300, 5000), (7, 9)],
            None,
            AttentionOptions {
                window_left: Some(1000),
                ..Default::default()
            },
        ),
    ];
    for (i, (reqs, paged, opts)) in cases.into_iter().enumerate() {
        for &tile in PrefillTile::available(128, gpu.info().arch) {
            let c = Case {
                heads,
                reqs: reqs.clone(),
                paged,
                opts,
                fixed_split: None,
                tile,
                tma: Some(true),
                seed: 40 + i as u64,
            };
            let s = run_gpu::<bf16>(&gpu, &c);
            check(s, DType::Bf16, &c);
            println!("{c:?}: {s:?}");
        }
    }
}
