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
    /// Ragged K/V of the Hopper tile by TMA (else `cp.async`; see `BatchPrefill::set_tma`).
    tma: bool,
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
        prop::sample::select(vec![1usize, 2, 3, 4, 5, 8]),
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
                    tma,
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
            tma: false,
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
                tma: true,
                seed: 40 + i as u64,
            };
            let s = run_gpu::<bf16>(&gpu, &c);
            check(s, DType::Bf16, &c);
            println!("{c:?}: {s:?}");
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_prefill_of_one_token_equals_decode() {
    let Some(gpu) = gpu_or_skip("gpu_prefill_of_one_token_equals_decode") else {
        return;
    };
    let heads = HeadConfig::new(32, 8, 128).unwrap();
    let c = Case {
        heads,
        reqs: vec![(1, 1000), (1, 1), (1, 4097), (1, 64)],
        paged: Some((16, KvLayout::Nhd)),
        opts: AttentionOptions {
            causal: true,
            ..Default::default()
        },
        fixed_split: None,
        tile: PrefillTile::default(),
        tma: true,
        seed: 7,
    };
    let d = make::<bf16>(&c);
    let (pool, pages) = paged_pool(&gpu, &c, &d, 16, KvLayout::Nhd);
    let qd = gpu.upload(&d.q).unwrap();
    let n = d.q.len();
    let prefill = BatchPrefill::new(&gpu, heads, DType::Bf16, c.opts).unwrap();
    let plan = prefill
        .plan_paged(&d.qo_indptr, &pages, pool.config())
        .unwrap();
    let mut op = gpu.upload(&vec![bf16::NAN; n]).unwrap();
    prefill.run_paged(&plan, &qd, &pool, &mut op, None).unwrap();
    let decode = BatchDecode::new(&gpu, heads, DType::Bf16, c.opts).unwrap();
    let dplan = decode.plan(&pages, pool.config()).unwrap();
    let mut od = gpu.upload(&vec![bf16::NAN; n]).unwrap();
    decode.run(&dplan, &qd, &pool, &mut od, None).unwrap();
    let (a, b) = (
        to_f64(&gpu.download(&op).unwrap()),
        to_f64(&gpu.download(&od).unwrap()),
    );
    let s = ErrorStats::compare(&a, &b, None);
    println!("prefill(qo=1) vs decode: {s:?}");
    assert!(!s.has_nan && s.rel_l2 < 4e-3, "{s:?}");
    let s = ErrorStats::compare(&a, &d.ref_o, None);
    check(s, DType::Bf16, &c);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_chunked_prefill_equals_one_prefill() {
    let Some(gpu) = gpu_or_skip("gpu_chunked_prefill_equals_one_prefill") else {
        return;
    };
    // Two requests with cached contexts of 300 and 50 tokens; their 200 and 90 new tokens
    // arrive in two chunks (append then prefill each), compared with one prefill of all of them.
    let heads = HeadConfig::new(12, 4, 64).unwrap();
    let opts = AttentionOptions {
        causal: true,
        ..Default::default()
    };
    let full = Case {
        heads,
        reqs: vec![(200, 500), (90, 140)],
        paged: Some((16, KvLayout::Nhd)),
        opts,
        fixed_split: None,
        tile: PrefillTile::default(),
        tma: true,
        seed: 11,
    };
    let d = make::<f16>(&full);
    let (pool, pages) = paged_pool(&gpu, &full, &d, 16, KvLayout::Nhd);
    let op = BatchPrefill::new(&gpu, heads, DType::F16, opts).unwrap();
    let qrow = heads.num_qo_heads * heads.head_dim;
    let nq = d.q.len() / qrow;
    let mut one = gpu.upload(&vec![f16::NAN; d.q.len()]).unwrap();
    let plan = op.plan_paged(&d.qo_indptr, &pages, pool.config()).unwrap();
    let qd = gpu.upload(&d.q).unwrap();
    op.run_paged(&plan, &qd, &pool, &mut one, None).unwrap();
    let one = to_f64(&gpu.download(&one).unwrap());
    // Chunk 1: the first 120 / 40 new tokens over contexts of 420 / 90 (the truncated page
    // tables see only the keys appended so far); chunk 2: the rest over the whole contexts.
    let split = [120usize, 40];
    let mut chunked = vec![f64::NAN; nq * qrow];
    for part in 0..2 {
        let mut qo_indptr = vec![0i32];
        let mut qs = Vec::new();
        let mut sub = BatchPages {
            kv_indptr: vec![0],
            ..Default::default()
        };
        let mut rows = Vec::new();
        for (b, &(ql, kl)) in full.reqs.iter().enumerate() {
            let (t0, t1) = if part == 0 {
                (0, split[b])
            } else {
                (split[b], ql)
            };
            let kv = kl - ql + t1;
            let q0 = d.qo_indptr[b] as usize + t0;
            qs.extend_from_slice(&d.q[q0 * qrow..(q0 + t1 - t0) * qrow]);
            rows.push((q0, t1 - t0));
            qo_indptr.push(qo_indptr.last().unwrap() + (t1 - t0) as i32);
            let p0 = pages.kv_indptr[b] as usize;
            let np = kv.div_ceil(16);
            sub.kv_indices
                .extend_from_slice(&pages.kv_indices[p0..p0 + np]);
            sub.kv_indptr.push(sub.kv_indices.len() as i32);
            sub.kv_last_page_len.push(((kv - 1) % 16 + 1) as i32);
        }
        let plan = op.plan_paged(&qo_indptr, &sub, pool.config()).unwrap();
        let qd = gpu.upload(&qs).unwrap();
        let mut od = gpu.upload(&vec![f16::NAN; qs.len()]).unwrap();
        op.run_paged(&plan, &qd, &pool, &mut od, None).unwrap();
        let o = to_f64(&gpu.download(&od).unwrap());
        let mut at = 0;
        for (q0, n) in rows {
            chunked[q0 * qrow..(q0 + n) * qrow].copy_from_slice(&o[at..at + n * qrow]);
            at += n * qrow;
        }
    }
    let s = ErrorStats::compare(&chunked, &one, None);
    println!("chunked vs one prefill: {s:?}");
    assert!(!s.has_nan && s.rel_l2 < 2e-3, "{s:?}");
    check(ErrorStats::compare(&one, &d.ref_o, None), DType::F16, &full);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_graph_mode_plan_reuse() {
    let Some(gpu) = gpu_or_skip("gpu_graph_mode_plan_reuse") else {
        return;
    };
    let heads = HeadConfig::new(8, 2, 128).unwrap();
    let opts = AttentionOptions {
        causal: true,
        ..Default::default()
    };
    let limits = PrefillGraphLimits {
        max_batch: 8,
        max_qo_tokens: 1024,
        max_pages: 1024,
    };
    let op = BatchPrefill::new_graph(&gpu, heads, DType::Bf16, opts, limits).unwrap();
    let qrow = heads.num_qo_heads * heads.head_dim;
    let mut qd = gpu.alloc::<bf16>(limits.max_qo_tokens * qrow).unwrap();
    let mut od = gpu.alloc::<bf16>(limits.max_qo_tokens * qrow).unwrap();
    let mut plan = None;
    let mut addrs = None;
    let batches = [
        vec![(16, 3000)],
        vec![(500, 500), (3, 2000), (64, 64)],
        vec![(1, 1); 8],
        vec![(200, 1000), (17, 4000)],
    ];
    for (i, reqs) in batches.into_iter().enumerate() {
        let c = Case {
            heads,
            reqs,
            paged: Some((16, KvLayout::Nhd)),
            opts,
            fixed_split: None,
            tile: PrefillTile::default(),
            tma: true,
            seed: 100 + i as u64,
        };
        let d = make::<bf16>(&c);
        let (pool, pages) = paged_pool(&gpu, &c, &d, 16, KvLayout::Nhd);
        // Same pool geometry across steps is what a serving loop has; here each step builds
        // its own pool, so the plan is made fresh for the first and re-planned after.
        let p = match plan.as_mut() {
            None => plan.insert(op.plan_paged(&d.qo_indptr, &pages, pool.config()).unwrap()),
            Some(p) => {
                op.plan_paged_into(&d.qo_indptr, &pages, pool.config(), p)
                    .unwrap();
                p
            }
        };
        let a = p.buffer_addresses();
        assert_eq!(*addrs.get_or_insert(a), a, "graph-mode buffers moved");
        gpu.write_prefix(&mut qd, &d.q).unwrap();
        gpu.write(&mut od, &vec![bf16::NAN; limits.max_qo_tokens * qrow])
            .unwrap();
        op.run_paged(p, &qd, &pool, &mut od, None).unwrap();
        let o = gpu.download(&od).unwrap();
        let s = ErrorStats::compare(&to_f64(&o[..d.q.len()]), &d.ref_o, None);
        check(s, DType::Bf16, &c);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bad_input_is_a_typed_error() {
    let Some(gpu) = gpu_or_skip("bad_input_is_a_typed_error") else {
        return;
    };
    let heads = HeadConfig::new(8, 2, 64).unwrap();
    let opts = AttentionOptions {
        causal: true,
        ..Default::default()
    };
    assert!(matches!(
        BatchPrefill::new(&gpu, HeadConfig::new(8, 2, 96).unwrap(), DType::F16, opts),
        Err(Error::Unsupported { .. })
    ));
    assert!(matches!(
        BatchPrefill::new(&gpu, HeadConfig::new(16, 1, 64).unwrap(), DType::F16, opts),
        Err(Error::Unsupported { .. })
    ));
    let mut op = BatchPrefill::new(&gpu, heads, DType::F16, opts).unwrap();
    let mut wide =
        BatchPrefill::new(&gpu, HeadConfig::new(8, 2, 256).unwrap(), DType::F16, opts).unwrap();
    assert!(matches!(
        wide.set_tile(Some(PrefillTile::Rows128Wide)),
        Err(Error::Unsupported { .. })
    ));
    op.set_tile(None).unwrap();
    // qo_len > kv_len, indptr not monotone, lengths inconsistent.
    assert!(op.plan_ragged(&[0, 5], &[0, 4]).is_err());
    assert!(op.plan_ragged(&[0, 5, 3], &[0, 5, 9]).is_err());
    assert!(op.plan_ragged(&[0, 5], &[0, 5, 9]).is_err());
    assert!(op.plan_ragged(&[1, 5], &[0, 5]).is_err());
    let plan = op.plan_ragged(&[0, 5, 9], &[0, 8, 20]).unwrap();
    let qrow = heads.num_qo_heads * heads.head_dim;
    let krow = heads.num_kv_heads * heads.head_dim;
    let q = gpu.alloc::<f16>(9 * qrow).unwrap();
    let k = gpu.alloc::<f16>(20 * krow).unwrap();
    let mut o = gpu.alloc::<f16>(9 * qrow).unwrap();
    // q of another batch, short k/v, wrong dtype, paged run of a ragged plan.
    let q_other = gpu.alloc::<f16>(10 * qrow).unwrap();
    assert!(matches!(
        op.run_ragged(&plan, &q_other, &k, &k, &mut o, None),
        Err(Error::Shape { .. })
    ));
    let k_short = gpu.alloc::<f16>(19 * krow).unwrap();
    assert!(matches!(
        op.run_ragged(&plan, &q, &k_short, &k, &mut o, None),
        Err(Error::Shape { .. })
    ));
    let qb = gpu.alloc::<bf16>(9 * qrow).unwrap();
    let kb = gpu.alloc::<bf16>(20 * krow).unwrap();
    let mut ob = gpu.alloc::<bf16>(9 * qrow).unwrap();
    assert!(op.run_ragged(&plan, &qb, &kb, &kb, &mut ob, None).is_err());
    let cfg = KvPoolConfig {
        num_pages: 0,
        page_size: 16,
        num_kv_heads: 2,
        head_dim: 64,
        layout: KvLayout::Nhd,
    };
    let pool = KvPool::<f16>::new_gpu(&gpu, cfg, PoolSize::Pages(4)).unwrap();
    assert!(op.run_paged(&plan, &q, &pool, &mut o, None).is_err());
    // Page index out of range, q longer than the context.
    let pages = BatchPages {
        kv_indptr: vec![0, 1],
        kv_indices: vec![4],
        kv_last_page_len: vec![3],
    };
    assert!(op.plan_paged(&[0, 3], &pages, pool.config()).is_err());
    let pages = BatchPages {
        kv_indices: vec![3],
        ..pages
    };
    assert!(op.plan_paged(&[0, 4], &pages, pool.config()).is_err());
    // A plan of another head configuration.
    let other =
        BatchPrefill::new(&gpu, HeadConfig::new(4, 2, 64).unwrap(), DType::F16, opts).unwrap();
    let plan_p = op.plan_paged(&[0, 3], &pages, pool.config()).unwrap();
    assert!(other.run_paged(&plan_p, &q, &pool, &mut o, None).is_err());
    // The valid call works (nothing above corrupted state).
    let mut o3 = gpu.alloc::<f16>(3 * qrow).unwrap();
    let q3 = gpu.alloc::<f16>(3 * qrow).unwrap();
    op.run_paged(&plan_p, &q3, &pool, &mut o3, None).unwrap();
    op.run_ragged(&plan, &q, &k, &k, &mut o, None).unwrap();
}

/// The Hopper tile on its own, with shapes small enough for `compute-sanitizer --tool
/// racecheck` (its producer/consumer stages and turn barriers are the kernel's only
/// synchronisation): both head dims, f16 and bf16, ragged and paged (both layouts), causal,
/// windowed, soft-capped and split-KV, several tiles per CTA so every stage is refilled. On a GPU
/// without the `wgmma` image it runs the same cases on the 8-warp 128-row tile.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_wgmma_tile_small_shapes() {
    let Some(gpu) = gpu_or_skip("gpu_wgmma_tile_small_shapes") else {
        return;
    };
    let causal = AttentionOptions {
        causal: true,
        ..Default::default()
    };
    let cases = [
        (64, vec![(300, 700), (5, 900)], None, causal, None),
        (
            128,
            vec![(200, 600)],
            Some((16, KvLayout::Nhd)),
            causal,
            Some(256),
        ),
        (
            128,
            vec![(130, 520), (1, 1)],
            Some((5, KvLayout::Hnd)),
            AttentionOptions {
                soft_cap: Some(30.0),
                window_left: Some(300),
                ..causal
            },
            None,
        ),
        (
            64,
            vec![(257, 257)],
            Some((16, KvLayout::Hnd)),
            AttentionOptions::default(),
            None,
        ),
    ];
    let mut worst = ErrorStats::default();
    for (i, (d, reqs, paged, opts, split)) in cases.into_iter().enumerate() {
        let c = Case {
            heads: HeadConfig::new(8, 2, d).unwrap(),
            reqs,
            paged,
            opts,
            fixed_split: split,
            tile: PrefillTile::Rows128Wgmma,
            tma: true,
            seed: 90 + i as u64,
        };
        if let Some(s) = cp_async_form(&gpu, &c) {
            worst = worst.worst(s);
        }
        let s = if i % 2 == 0 {
            run_gpu::<bf16>(&gpu, &c)
        } else {
            run_gpu::<f16>(&gpu, &c)
        };
        check(s, if i % 2 == 0 { DType::Bf16 } else { DType::F16 }, &c);
        worst = worst.worst(s);
    }
    println!("wgmma tile, 4 small cases: worst {worst:?}");
}

/// The Hopper tile's persistent CTAs with several units each: more (item, KV head) units than
/// the GPU runs CTAs, so every CTA works through a list and its producer loads the next
/// unit's first K/V tiles and Q while the consumers finish the current one (the stage ring,
/// the Q barriers and the turn barriers run on across units). Ragged and paged, split and not,
/// both head dims, and a CUDA-graph-mode op (fixed persistent grid, most CTAs' lists empty or
/// short) re-planned over different batches. On a GPU without the `wgmma` image the same cases
/// run on the 8-warp 128-row tile.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_wgmma_persistent_many_units() {
    let Some(gpu) = gpu_or_skip("gpu_wgmma_persistent_many_units") else {
        return;
    };
    let causal = AttentionOptions {
        causal: true,
        ..Default::default()
    };
    // 96 requests × 2 query tiles × 2 KV heads = 384 units at D 64; 48 × 3 tiles × 2 chunks
    // × 2 heads ≈ 576 at D 128 (split), on ~132 CTAs.
    let varied: Vec<(usize, usize)> = (0..96).map(|i| (64, 64 + (i * 37) % 340)).collect();
    let cases = [
        (64, varied, None, None),
        (
            128,
            vec![(70, 300); 48],
            Some((16, KvLayout::Nhd)),
            Some(192),
        ),
    ];
    let mut worst = ErrorStats::default();
    for (i, (d, reqs, paged, split)) in cases.into_iter().enumerate() {
        let c = Case {
            heads: HeadConfig::new(8, 2, d).unwrap(),
            reqs,
            paged,
            opts: causal,
            fixed_split: split,
            tile: PrefillTile::Rows128Wgmma,
            tma: true,
            seed: 120 + i as u64,
        };
        if let Some(s) = cp_async_form(&gpu, &c) {
            worst = worst.worst(s);
        }
        let s = run_gpu::<bf16>(&gpu, &c);
        check(s, DType::Bf16, &c);
        worst = worst.worst(s);
    }
    println!("wgmma tile, persistent CTAs with several units: worst {worst:?}");

    // Graph mode: one op, plans of different batches into the same buffers and grid.
    let heads = HeadConfig::new(8, 2, 128).unwrap();
    let limits = PrefillGraphLimits {
        max_batch: 64,
        max_qo_tokens: 4096,
        max_pages: 4096,
    };
    let mut op = BatchPrefill::new_graph(&gpu, heads, DType::Bf16, causal, limits).unwrap();
    let tile = if PrefillTile::available(128, gpu.info().arch).contains(&PrefillTile::Rows128Wgmma)
    {
        PrefillTile::Rows128Wgmma
    } else {
        PrefillTile::Rows128
    };
    op.set_tile(Some(tile)).unwrap();
    let qrow = heads.num_qo_heads * heads.head_dim;
    let mut qd = gpu.alloc::<bf16>(limits.max_qo_tokens * qrow).unwrap();
    let mut od = gpu.alloc::<bf16>(limits.max_qo_tokens * qrow).unwrap();
    let mut plan = None;
    let batches = [
        vec![(40, 200); 64],
        vec![(5, 900), (300, 300)],
        vec![(100, 700); 30],
    ];
    for (i, reqs) in batches.into_iter().enumerate() {
        let c = Case {
            heads,
            reqs,
            paged: Some((16, KvLayout::Nhd)),
            opts: causal,
            fixed_split: None,
            tile,
            tma: true,
            seed: 130 + i as u64,
        };
        let d = make::<bf16>(&c);
        let (pool, pages) = paged_pool(&gpu, &c, &d, 16, KvLayout::Nhd);
        let p = match plan.as_mut() {
            None => plan.insert(op.plan_paged(&d.qo_indptr, &pages, pool.config()).unwrap()),
            Some(p) => {
                op.plan_paged_into(&d.qo_indptr, &pages, pool.config(), p)
                    .unwrap();
                p
            }
        };
        gpu.write_prefix(&mut qd, &d.q).unwrap();
        gpu.write(&mut od, &vec![bf16::NAN; limits.max_qo_tokens * qrow])
            .unwrap();
        op.run_paged(p, &qd, &pool, &mut od, None).unwrap();
        let o = gpu.download(&od).unwrap();
        let s = ErrorStats::compare(&to_f64(&o[..d.q.len()]), &d.ref_o, None);
        check(s, DType::Bf16, &c);
    }
}
