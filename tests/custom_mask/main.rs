//! Prefill under a custom mask (FlashInfer's packed layout, `ferrinfer::mask`) on the CPU
//! backend: random batches and masks against the f64 oracle (ragged, paged and single);
//! an all-ones mask equals non-causal attention, the causal mask written as bits equals the
//! causal flag; tree attention for speculative decoding (each draft token of a token tree sees
//! the context and its ancestors) equals plain attention over each token's own path; masks of
//! the wrong length are typed errors.
use ferrinfer::kv::{BatchPages, KvLayout};
use ferrinfer::mask::{segment_packbits, PackedMask};
use ferrinfer::reference::attention_masked;
use ferrinfer::{cpu, AttentionOptions, DType, Error, HeadConfig};
use ferrinfer_harness::paged::{host_pool, shuffled_pages};
use ferrinfer_harness::{proptest_cases, random_values, rng, to_f64, tolerance, ErrorStats};
use half::bf16;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use rand::Rng;

mod gpu;

/// A batch: per request `(qo_len, kv_len)` and the density of its random mask.
#[derive(Clone, Debug)]
struct Case {
    heads: HeadConfig,
    reqs: Vec<(usize, usize)>,
    /// Probability that a mask entry is set (1.0: all ones).
    density: f64,
    opts: AttentionOptions,
    page_size: usize,
    seed: u64,
}

/// Random data, the unpacked masks request after request, their packed form and the oracle.
struct Data {
    q: Vec<bf16>,
    k: Vec<bf16>,
    v: Vec<bf16>,
    qo_indptr: Vec<i32>,
    kv_indptr: Vec<i32>,
    mask: PackedMask,
    ref_o: Vec<f64>,
    ref_lse: Vec<f64>,
}

fn make(c: &Case) -> Data {
    let h = c.heads;
    let mut r = rng(c.seed);
    let (qrow, krow) = (h.num_qo_heads * h.head_dim, h.num_kv_heads * h.head_dim);
    let nq: usize = c.reqs.iter().map(|r| r.0).sum();
    let nk: usize = c.reqs.iter().map(|r| r.1).sum();
    let (q, qf) = random_values::<bf16>(&mut r, nq * qrow, 2.0);
    let (k, kf) = random_values::<bf16>(&mut r, nk * krow, 2.0);
    let (v, vf) = random_values::<bf16>(&mut r, nk * krow, 1.0);
    let (mut qo_indptr, mut kv_indptr, mut bits_indptr) = (vec![0i32], vec![0i32], vec![0i32]);
    let mut flat = Vec::new();
    let (mut ref_o, mut ref_lse) = (Vec::new(), Vec::new());
    let (mut q0, mut k0) = (0, 0);
    for &(ql, kl) in &c.reqs {
        let m: Vec<bool> = (0..ql * kl).map(|_| r.random_bool(c.density)).collect();
        let rf = attention_masked(
            &qf[q0 * qrow..(q0 + ql) * qrow],
            &kf[k0 * krow..(k0 + kl) * krow],
            &vf[k0 * krow..(k0 + kl) * krow],
            &h,
            ql,
            kl,
            &c.opts,
            Some(&m),
        )
        .unwrap();
        ref_o.extend_from_slice(&rf.o);
        ref_lse.extend_from_slice(&rf.lse);
        flat.extend_from_slice(&m);
        q0 += ql;
        k0 += kl;
        qo_indptr.push(q0 as i32);
        kv_indptr.push(k0 as i32);
        bits_indptr.push(flat.len() as i32);
    }
    Data {
        q,
        k,
        v,
        qo_indptr,
        kv_indptr,
        mask: segment_packbits(&flat, &bits_indptr).unwrap(),
        ref_o,
        ref_lse,
    }
}

fn arb_case() -> impl Strategy<Value = Case> {
    (
        prop::sample::select(vec![64usize, 128]),
        prop::sample::select(vec![1usize, 2, 4]),
        1usize..=2,
        prop::collection::vec((1usize..40, 0usize..120), 1..5),
        prop::sample::select(vec![0.0f64, 0.05, 0.5, 0.95, 1.0]),
        any::<bool>(),
        prop_oneof![3 => Just(None), 1 => (0usize..60).prop_map(Some)],
        prop::sample::select(vec![1usize, 5, 16]),
        any::<u64>(),
    )
        .prop_map(
            |(d, g, hkv, reqs, density, causal, win, page_size, seed)| Case {
                heads: HeadConfig::new(hkv * g, hkv, d).unwrap(),
                reqs: reqs.into_iter().map(|(q, e)| (q, q + e)).collect(),
                density,
                opts: AttentionOptions {
                    causal,
                    window_left: win,
                    ..Default::default()
                },
                page_size,
                seed,
            },
        )
}

/// The ragged CPU op under the mask; out and lse as f64.
fn ragged(c: &Case, d: &Data, mask: &PackedMask, opts: &AttentionOptions) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![bf16::NAN; d.q.len()];
    let mut lse = vec![f32::NAN; d.ref_lse.len()];
    cpu::batch_prefill_ragged_masked(
        &c.heads,
        opts,
        &d.q,
        &d.qo_indptr,
        &d.k,
        &d.v,
        &d.kv_indptr,
        mask,
        &mut out,
        Some(&mut lse),
    )
    .unwrap();
    (to_f64(&out), lse.iter().map(|&x| x as f64).collect())
}

/// The same K/V in a host page pool (pages in random order) and its tables.
fn paged(c: &Case, d: &Data) -> (ferrinfer::kv::KvPool<bf16>, BatchPages) {
    let lens: Vec<usize> = c.reqs.iter().map(|r| r.1).collect();
    let (pages, num_pages) = shuffled_pages(&mut rng(c.seed ^ 1), &lens, c.page_size, 2);
    let pool = host_pool(
        &c.heads,
        c.page_size,
        KvLayout::Nhd,
        &pages,
        num_pages,
        &lens,
        &d.k,
        &d.v,
    );
    (pool, pages)
}

#[test]
fn cpu_masked_prefill_matches_oracle() {
    let cases = proptest_cases(32);
    TestRunner::new(ProptestConfig::with_cases(cases))
        .run(&arb_case(), |c| {
            let d = make(&c);
            let (o, l) = ragged(&c, &d, &d.mask, &c.opts);
            let s = ErrorStats::compare(&o, &d.ref_o, Some((&l, &d.ref_lse)));
            prop_assert!(s.within(tolerance(DType::Bf16)), "{c:?}: {s:?}");
            // Paged: the same values from a page pool.
            let (pool, pages) = paged(&c, &d);
            let mut out = vec![bf16::NAN; d.q.len()];
            cpu::batch_prefill_paged_masked(
                &c.heads,
                &c.opts,
                &d.q,
                &d.qo_indptr,
                &pool,
                &pages,
                &d.mask,
                &mut out,
                None,
            )
            .unwrap();
            prop_assert!(to_f64(&out) == o, "paged and ragged differ");
            // Single: the first request alone, its mask re-packed from offset 0.
            let (ql, kl) = c.reqs[0];
            let qrow = c.heads.num_qo_heads * c.heads.head_dim;
            let krow = c.heads.num_kv_heads * c.heads.head_dim;
            let first: Vec<bool> = (0..ql * kl)
                .map(|i| d.mask.allows(0, i / kl, i % kl, kl))
                .collect();
            let mut out = vec![bf16::NAN; ql * qrow];
            cpu::single_prefill_masked(
                &c.heads,
                &c.opts,
                &d.q[..ql * qrow],
                &d.k[..kl * krow],
                &d.v[..kl * krow],
                ql,
                kl,
                &PackedMask::single(&first).unwrap(),
                &mut out,
                None,
            )
            .unwrap();
            prop_assert!(to_f64(&out) == o[..ql * qrow], "single and batch differ");
            Ok(())
        })
        .unwrap();
    println!("cpu masked prefill: {cases} random cases");
}

/// All-ones equals no mask (non-causal); the causal mask as bits equals the causal flag.
#[test]
fn cpu_all_ones_and_causal_masks_equal_the_flags() {
    let c = Case {
        heads: HeadConfig::new(8, 2, 128).unwrap(),
        reqs: vec![(37, 100), (64, 64), (1, 300), (20, 21)],
        density: 1.0,
        opts: AttentionOptions::default(),
        page_size: 16,
        seed: 9,
    };
    let d = make(&c);
    let plain = |opts: &AttentionOptions| {
        let mut out = vec![bf16::NAN; d.q.len()];
        cpu::batch_prefill_ragged(
            &c.heads,
            opts,
            &d.q,
            &d.qo_indptr,
            &d.k,
            &d.v,
            &d.kv_indptr,
            &mut out,
            None,
        )
        .unwrap();
        to_f64(&out)
    };
    let tol = |a: &[f64], b: &[f64]| {
        let s = ErrorStats::compare(a, b, None);
        assert!(!s.has_nan && s.rel_l2 < 1e-6, "{s:?}");
    };
    let (ones, _) = ragged(&c, &d, &d.mask, &c.opts);
    tol(&ones, &plain(&c.opts));
    let causal: Vec<bool> = c
        .reqs
        .iter()
        .flat_map(|&(q, k)| (0..q * k).map(move |i| i % k <= k - q + i / k))
        .collect();
    let mut ind = vec![0i32];
    for &(q, k) in &c.reqs {
        ind.push(ind.last().unwrap() + (q * k) as i32);
    }
    let as_bits = segment_packbits(&causal, &ind).unwrap();
    let (o, _) = ragged(&c, &d, &as_bits, &c.opts);
    tol(&o, &plain(&c.opts.with_causal(true)));
    // And the flag on top of its own mask changes nothing.
    let (o2, _) = ragged(&c, &d, &as_bits, &c.opts.with_causal(true));
    tol(&o2, &o);
}

/// A token tree of draft tokens after a context: node `i`'s parent `parent[i] < i` (`None`:
/// a child of the last context token). Returns the `[n, ctx + n]` ancestor mask (context
/// keys, then the ancestors and the node itself) and each node's path (tree node ids, root
/// first).
fn tree_mask(ctx: usize, parent: &[Option<usize>]) -> (Vec<bool>, Vec<Vec<usize>>) {
    let n = parent.len();
    let mut mask = vec![false; n * (ctx + n)];
    let mut paths = Vec::new();
    for i in 0..n {
        let mut path = vec![i];
        while let Some(p) = parent[*path.last().unwrap()] {
            path.push(p);
        }
        path.reverse();
        let row = &mut mask[i * (ctx + n)..(i + 1) * (ctx + n)];
        row[..ctx].fill(true);
        for &a in &path {
            row[ctx + a] = true;
        }
        paths.push(path);
    }
    (mask, paths)
}

/// Speculative decoding's verification step: the draft tree's tokens, appended after the
/// context, attend under their ancestor mask in one prefill; each must equal a causal prefill
/// of just its own path (the sequence that token would continue if accepted).
#[test]
fn cpu_token_tree_verification_equals_per_path_attention() {
    let h = HeadConfig::new(8, 2, 64).unwrap();
    // A tree of 11 draft tokens: two candidates for the next token, each with children.
    let parent = [
        None,
        None,
        Some(0),
        Some(0),
        Some(1),
        Some(2),
        Some(2),
        Some(3),
        Some(4),
        Some(6),
        Some(9),
    ];
    let (ctx, n) = (45usize, parent.len());
    let (mask, paths) = tree_mask(ctx, &parent);
    let (qrow, krow) = (h.num_qo_heads * h.head_dim, h.num_kv_heads * h.head_dim);
    let mut r = rng(5);
    let (q, _) = random_values::<bf16>(&mut r, n * qrow, 2.0);
    let (k, _) = random_values::<bf16>(&mut r, (ctx + n) * krow, 2.0);
    let (v, _) = random_values::<bf16>(&mut r, (ctx + n) * krow, 1.0);
    let opts = AttentionOptions::default();
    let mut out = vec![bf16::NAN; n * qrow];
    cpu::single_prefill_masked(
        &h,
        &opts,
        &q,
        &k,
        &v,
        n,
        ctx + n,
        &PackedMask::single(&mask).unwrap(),
        &mut out,
        None,
    )
    .unwrap();
    for (i, path) in paths.iter().enumerate() {
        // The path's keys: the context, then the ancestors' K/V rows; the node is the last
        // query of a causal prefill over them.
        let rows = (0..ctx).chain(path.iter().map(|&a| ctx + a));
        let (mut kp, mut vp) = (Vec::new(), Vec::new());
        for t in rows {
            kp.extend_from_slice(&k[t * krow..(t + 1) * krow]);
            vp.extend_from_slice(&v[t * krow..(t + 1) * krow]);
        }
        let len = ctx + path.len();
        let mut one = vec![bf16::NAN; qrow];
        cpu::single_prefill(
            &h,
            &opts.with_causal(true),
            &q[i * qrow..(i + 1) * qrow],
            &kp,
            &vp,
            1,
            len,
            &mut one,
            None,
        )
        .unwrap();
        let s = ErrorStats::compare(&to_f64(&out[i * qrow..(i + 1) * qrow]), &to_f64(&one), None);
        assert!(
            !s.has_nan && s.rel_l2 < 1e-6,
            "node {i} path {path:?}: {s:?}"
        );
    }
}

#[test]
fn cpu_mask_of_the_wrong_length_is_a_typed_error() {
    let c = Case {
        heads: HeadConfig::new(4, 2, 64).unwrap(),
        reqs: vec![(3, 10), (5, 5)],
        density: 0.5,
        opts: AttentionOptions::default(),
        page_size: 16,
        seed: 2,
    };
    let d = make(&c);
    let mut out = vec![bf16::from_f32(7.0); d.q.len()];
    let mut run = |m: &PackedMask| {
        cpu::batch_prefill_ragged_masked(
            &c.heads,
            &c.opts,
            &d.q,
            &d.qo_indptr,
            &d.k,
            &d.v,
            &d.kv_indptr,
            m,
            &mut out,
            None,
        )
    };
    // Request 0 needs ⌈30 / 8⌉ = 4 bytes: packed for 3 × 9 it has 4 too, but 3 × 11 gives 5.
    let wrong = segment_packbits(&[true; 33 + 25], &[0, 33, 58]).unwrap();
    assert!(matches!(run(&wrong), Err(Error::Shape { .. })));
    // One request's offsets for a two-request batch; bits shorter than the offsets.
    let one = PackedMask::single(&[true; 30]).unwrap();
    assert!(matches!(run(&one), Err(Error::Shape { .. })));
    let mut short = d.mask.clone();
    short.bits.pop();
    assert!(matches!(run(&short), Err(Error::Shape { .. })));
    assert!(run(&d.mask).is_ok());
    // Paged: the same rule, checked before the K/V gather.
    let (pool, pages) = paged(&c, &d);
    let e = cpu::batch_prefill_paged_masked(
        &c.heads,
        &c.opts,
        &d.q,
        &d.qo_indptr,
        &pool,
        &pages,
        &wrong,
        &mut vec![bf16::ZERO; d.q.len()],
        None,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
}
