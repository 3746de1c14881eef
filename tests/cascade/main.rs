//! Multi-level cascade attention (CPU backend here, GPU in `gpu.rs`) against the f64 oracle
//! over each request's concatenated context: random cascades of 1–3 levels (a prefix all
//! requests share, per-group prefixes, each request's own tokens; groups with more queries than
//! prefix keys), page sizes, layouts, groups, head dims, causal or not, soft-cap; levels that
//! do not nest and other bad input as typed errors.
use ferrinfer::kv::{BatchPages, KvLayout, KvPool};
use ferrinfer::plan::CascadeLevel;
use ferrinfer::reference::attention;
use ferrinfer::{cpu, AttentionOptions, DType, Error, Float16, HeadConfig};
use ferrinfer_harness::paged::{host_pool, shuffled_pages};
use ferrinfer_harness::{proptest_cases, random_values, rng, tolerance, ErrorStats};
use half::bf16;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

mod gpu;

/// A cascade: `prefix` keys shared by every request, then per group its own prefix keys
/// (`None`: no middle level), then per request `(qo_len, own keys ≥ qo_len)`.
#[derive(Clone, Debug)]
struct Case {
    heads: HeadConfig,
    /// `None`: one level (plain batch prefill through the cascade op).
    prefix: Option<usize>,
    /// Per group: its prefix length (ignored without a middle level) and its requests.
    groups: Vec<(usize, Vec<(usize, usize)>)>,
    middle: bool,
    page_size: usize,
    layout: KvLayout,
    opts: AttentionOptions,
    seed: u64,
}

/// A case's data: q, the K/V of every segment (prefix, group prefixes, own tokens) packed, the
/// page tables of every level, and the oracle's o/lse per query token.
struct Data<T> {
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    /// Segment lengths in the packed K/V and their pages (one table entry per segment).
    seg_lens: Vec<usize>,
    seg_pages: BatchPages,
    num_pages: usize,
    /// Per level: qo_indptr and the segment of each group.
    levels: Vec<(Vec<i32>, Vec<usize>)>,
    ref_o: Vec<f64>,
    ref_lse: Vec<f64>,
}

impl Case {
    fn requests(&self) -> impl Iterator<Item = (usize, (usize, usize))> + '_ {
        self.groups
            .iter()
            .enumerate()
            .flat_map(|(g, (_, reqs))| reqs.iter().map(move |&r| (g, r)))
    }
}

/// The sub-table of `pages` with entries `ids`, in that order.
fn select(pages: &BatchPages, ids: &[usize]) -> BatchPages {
    let mut out = BatchPages {
        kv_indptr: vec![0],
        ..Default::default()
    };
    for &i in ids {
        let (a, b) = (pages.kv_indptr[i] as usize, pages.kv_indptr[i + 1] as usize);
        out.kv_indices.extend_from_slice(&pages.kv_indices[a..b]);
        out.kv_indptr.push(out.kv_indices.len() as i32);
        out.kv_last_page_len.push(pages.kv_last_page_len[i]);
    }
    out
}

fn make<T: Float16>(c: &Case) -> Data<T> {
    let h = c.heads;
    let mut r = rng(c.seed);
    let (qrow, krow) = (h.num_qo_heads * h.head_dim, h.num_kv_heads * h.head_dim);
    // Segments: [prefix], [group prefixes], own tokens per request.
    let mut seg_lens = Vec::new();
    let prefix_seg = c.prefix.map(|p| {
        seg_lens.push(p);
        seg_lens.len() - 1
    });
    let group_seg: Vec<Option<usize>> = c
        .groups
        .iter()
        .map(|&(p, _)| {
            c.middle.then(|| {
                seg_lens.push(p);
                seg_lens.len() - 1
            })
        })
        .collect();
    let own_seg: Vec<usize> = c
        .requests()
        .map(|(_, (_, own))| {
            seg_lens.push(own);
            seg_lens.len() - 1
        })
        .collect();
    let nq: usize = c.requests().map(|(_, (q, _))| q).sum();
    let nk: usize = seg_lens.iter().sum();
    let (q, qf) = random_values::<T>(&mut r, nq * qrow, 2.0);
    let (k, kf) = random_values::<T>(&mut r, nk * krow, 2.0);
    let (v, vf) = random_values::<T>(&mut r, nk * krow, 1.0);
    let (seg_pages, num_pages) = shuffled_pages(&mut r, &seg_lens, c.page_size, 3);
    let seg_start: Vec<usize> = seg_lens
        .iter()
        .scan(0, |s, &l| {
            *s += l;
            Some(*s - l)
        })
        .collect();
    // Levels: one group of all queries, the groups, the requests.
    let mut levels = Vec::new();
    let group_q: Vec<usize> = c
        .groups
        .iter()
        .map(|(_, reqs)| reqs.iter().map(|r| r.0).sum())
        .collect();
    if let Some(s) = prefix_seg {
        levels.push((vec![0, nq as i32], vec![s]));
    }
    if c.middle {
        let mut ind = vec![0i32];
        for &gq in &group_q {
            ind.push(ind.last().unwrap() + gq as i32);
        }
        levels.push((ind, group_seg.iter().map(|s| s.unwrap()).collect()));
    }
    let mut ind = vec![0i32];
    for (_, (ql, _)) in c.requests() {
        ind.push(ind.last().unwrap() + ql as i32);
    }
    levels.push((ind, own_seg.clone()));
    // The oracle: each request's segments concatenated.
    let (mut ref_o, mut ref_lse) = (Vec::new(), Vec::new());
    let mut q0 = 0;
    for (i, (g, (ql, _))) in c.requests().enumerate() {
        let segs = [prefix_seg, group_seg[g], Some(own_seg[i])];
        let (mut kk, mut vv) = (Vec::new(), Vec::new());
        for s in segs.into_iter().flatten() {
            let rows = seg_start[s] * krow..(seg_start[s] + seg_lens[s]) * krow;
            kk.extend_from_slice(&kf[rows.clone()]);
            vv.extend_from_slice(&vf[rows]);
        }
        let kl = kk.len() / krow;
        let rf = attention(
            &qf[q0 * qrow..(q0 + ql) * qrow],
            &kk,
            &vv,
            &h,
            ql,
            kl,
            &c.opts,
        )
        .unwrap();
        ref_o.extend_from_slice(&rf.o);
        ref_lse.extend_from_slice(&rf.lse);
        q0 += ql;
    }
    Data {
        q,
        k,
        v,
        seg_lens,
        seg_pages,
        num_pages,
        levels,
        ref_o,
        ref_lse,
    }
}

impl<T> Data<T> {
    /// Every level's page table (entries: its groups' segments).
    fn level_pages(&self) -> Vec<BatchPages> {
        self.levels
            .iter()
            .map(|(_, segs)| select(&self.seg_pages, segs))
            .collect()
    }
}

/// The borrowed levels of `d` over `pages` (from [`Data::level_pages`]).
fn cascade_levels<'a, T>(d: &'a Data<T>, pages: &'a [BatchPages]) -> Vec<CascadeLevel<'a>> {
    d.levels
        .iter()
        .zip(pages)
        .map(|((ind, _), p)| CascadeLevel {
            qo_indptr: ind,
            pages: p,
        })
        .collect()
}

fn arb_case(max_groups: usize, max_len: usize) -> impl Strategy<Value = Case> {
    let req = (1usize..40, 0usize..max_len);
    let group = (1usize..max_len, prop::collection::vec(req, 1..5));
    (
        prop::sample::select(vec![64usize, 128, 256]),
        prop::sample::select(vec![1usize, 2, 4, 8]),
        1usize..=2,
        // A short prefix now and then, so groups hold more queries than prefix keys.
        prop_oneof![
            Just(None),
            (1usize..4).prop_map(Some),
            (1usize..max_len).prop_map(Some)
        ],
        prop::collection::vec(group, 1..max_groups),
        any::<bool>(),
        prop::sample::select(vec![1usize, 5, 16]),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(None), (1.0f32..50.0).prop_map(Some)],
        any::<u64>(),
    )
        .prop_map(
            |(d, g, hkv, prefix, groups, middle, page_size, hnd, causal, cap, seed)| Case {
                heads: HeadConfig::new(hkv * g, hkv, d).unwrap(),
                prefix,
                groups: groups
                    .into_iter()
                    .map(|(p, reqs)| (p, reqs.into_iter().map(|(q, e)| (q, q + e)).collect()))
                    .collect(),
                middle,
                page_size,
                layout: if hnd { KvLayout::Hnd } else { KvLayout::Nhd },
                opts: AttentionOptions {
                    causal,
                    soft_cap: cap,
                    ..Default::default()
                },
                seed,
            },
        )
}

fn cpu_pool<T: Float16>(c: &Case, d: &Data<T>) -> KvPool<T> {
    host_pool(
        &c.heads,
        c.page_size,
        c.layout,
        &d.seg_pages,
        d.num_pages,
        &d.seg_lens,
        &d.k,
        &d.v,
    )
}

fn run_cpu(c: &Case) -> ErrorStats {
    let d = make::<bf16>(c);
    let pool = cpu_pool(c, &d);
    let pages = d.level_pages();
    let levels = cascade_levels(&d, &pages);
    let mut out = vec![bf16::NAN; d.q.len()];
    let mut lse = vec![f32::NAN; d.ref_lse.len()];
    cpu::cascade_paged(
        &c.heads,
        &c.opts,
        &d.q,
        &levels,
        &pool,
        &mut out,
        Some(&mut lse),
    )
    .unwrap();
    let l: Vec<f64> = lse.iter().map(|&x| x as f64).collect();
    let o: Vec<f64> = out.iter().map(|x| x.to_f32() as f64).collect();
    ErrorStats::compare(&o, &d.ref_o, Some((&l, &d.ref_lse)))
}

#[test]
fn cpu_cascade_matches_oracle_over_concatenated_context() {
    let cases = proptest_cases(32);
    let worst = std::cell::Cell::new(ErrorStats::default());
    TestRunner::new(ProptestConfig::with_cases(cases))
        .run(&arb_case(4, 150), |c| {
            let s = run_cpu(&c);
            prop_assert!(s.within(tolerance(DType::Bf16)), "{c:?}: {s:?}");
            worst.set(worst.get().worst(s));
            Ok(())
        })
        .unwrap();
    println!("cpu cascade: {cases} random cases, worst {:?}", worst.get());
}

/// A fixed three-level case: 2 groups of 2 requests (2 and 3 queries each).
fn fixed_case() -> Case {
    Case {
        heads: HeadConfig::new(8, 2, 64).unwrap(),
        prefix: Some(40),
        groups: vec![(20, vec![(2, 5), (3, 9)]), (7, vec![(2, 2), (3, 30)])],
        middle: true,
        page_size: 16,
        layout: KvLayout::Nhd,
        opts: AttentionOptions::default().with_causal(true),
        seed: 3,
    }
}

#[test]
fn cpu_cascade_bad_levels_are_typed_errors() {
    let c = fixed_case();
    let d = make::<bf16>(&c);
    let pool = cpu_pool(&c, &d);
    let pages = d.level_pages();
    let mut out = vec![bf16::from_f32(7.0); d.q.len()];
    let run = |levels: &[CascadeLevel<'_>], opts: &AttentionOptions, out: &mut [bf16]| {
        cpu::cascade_paged(&c.heads, opts, &d.q, levels, &pool, out, None)
    };
    // Requests' queries: [0,2) [2,5) | [5,7) [7,10); groups [0,5) [5,10).
    let good = cascade_levels(&d, &pages);
    assert!(run(&good, &c.opts, &mut out).is_ok());
    out.fill(bf16::from_f32(7.0));
    // A middle level whose groups cross the requests' boundaries: [0,4) [4,10).
    let crossing = [0, 4, 10];
    let mut bad = good.clone();
    bad[1].qo_indptr = &crossing;
    let e = run(&bad, &c.opts, &mut out).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    // Levels of different query counts.
    let short = [0, 9];
    let mut bad = good.clone();
    bad[0].qo_indptr = &short;
    assert!(matches!(
        run(&bad, &c.opts, &mut out),
        Err(Error::Shape { .. })
    ));
    // A qo_indptr of the wrong length for its page table.
    let long = [0, 5, 10, 10];
    let mut bad = good.clone();
    bad[1].qo_indptr = &long;
    assert!(matches!(
        run(&bad, &c.opts, &mut out),
        Err(Error::Shape { .. })
    ));
    // No levels; a sliding window; a last-level request with more queries than keys.
    assert!(matches!(
        run(&[], &c.opts, &mut out),
        Err(Error::InvalidArgument { .. })
    ));
    let win = c.opts.with_window_left(8);
    assert!(matches!(
        run(&good, &win, &mut out),
        Err(Error::Unsupported { .. })
    ));
    let greedy = [0, 2, 5, 9, 10]; // request 2: 4 queries over 2 own keys
    let mut bad = good.clone();
    bad[2].qo_indptr = &greedy;
    assert!(matches!(
        run(&bad, &c.opts, &mut out),
        Err(Error::InvalidArgument { .. })
    ));
    // A shared group with queries and no keys.
    let empty = BatchPages {
        kv_indptr: vec![0, 0],
        kv_indices: vec![],
        kv_last_page_len: vec![0],
    };
    let mut bad = good.clone();
    bad[0].pages = &empty;
    assert!(matches!(
        run(&bad, &c.opts, &mut out),
        Err(Error::InvalidArgument { .. })
    ));
    // Short output.
    let mut small = vec![bf16::ZERO; d.q.len() - 1];
    assert!(matches!(
        run(&good, &c.opts, &mut small),
        Err(Error::Shape { .. })
    ));
    // Nothing was written by any failed call.
    assert!(out.iter().all(|&x| x == bf16::from_f32(7.0)));
}
