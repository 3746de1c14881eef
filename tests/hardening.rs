//! Regression tests of issue #15 ("No panic, no silent corruption"): one test per finding of the
//! issue (`f1_` … `f8_`), each failing on f830a21 (a wrong `Ok`, a panic or an abort there; the
//! size-wrap cases of finding 3 panic only with overflow checks on, which `scripts/test.sh`
//! builds them with) and passing now. Every bad input must come back as a typed error, and a
//! failed call must leave the cache as it was.
use ferrinfer::kernels::Arch;
use ferrinfer::kv::{
    BatchPages, KvLayout, KvPoolConfig, PageTable, PagedKvCache, PoolSize, RowStrides, Rows,
};
use ferrinfer::ops::single_decode::KvStrides;
use ferrinfer::ops::PrefillTile;
use ferrinfer::plan::prefill::tile_keys;
use ferrinfer::plan::{
    plan_decode, plan_prefill, schedule_units, DecodeProblem, PrefillProblem, UnitSchedule,
};
use ferrinfer::{cpu, reference, AttentionOptions, Error, HeadConfig};
use half::bf16;

const D: usize = 64;

fn cfg(page_size: usize) -> KvPoolConfig {
    KvPoolConfig {
        num_pages: 0,
        page_size,
        num_kv_heads: 1,
        head_dim: D,
        layout: KvLayout::Nhd,
    }
}

fn rows(n: usize, x: f32) -> Vec<bf16> {
    vec![bf16::from_f32(x); n * D]
}

fn strides() -> RowStrides {
    RowStrides::contiguous(1, D)
}

fn cpu_cache(page_size: usize, pages: usize) -> PagedKvCache<bf16> {
    PagedKvCache::new_cpu(cfg(page_size), PoolSize::Pages(pages)).unwrap()
}

/// Finding 1: a step made by another cache (same geometry, same generation) wrote into this
/// cache's pages; a stale step (tables changed since) must be refused too.
#[test]
fn f1_foreign_or_stale_append_step_is_refused() {
    let (mut a, mut b) = (cpu_cache(4, 4), cpu_cache(4, 4));
    let (sa, sb) = (a.add_sequence(), b.add_sequence());
    let s = strides();
    let one = rows(1, 1.0);
    a.append(&[(sa, 1)], Rows::Host(&one), s, Rows::Host(&one), s)
        .unwrap();
    // Both caches have made exactly one reservation: equal generations on f830a21.
    let step_b = b.begin_append(&[(sb, 1)]).unwrap();
    let two = rows(1, 2.0);
    let e = a
        .append_layer(0, &step_b, Rows::Host(&two), s, Rows::Host(&two), s)
        .unwrap_err();
    assert!(matches!(e, Error::StaleHandle { .. }), "{e}");
    assert_eq!(a.gather(0, sa).unwrap(), (one.clone(), one.clone()));
    // The step is still good for the cache that made it.
    b.append_layer(0, &step_b, Rows::Host(&two), s, Rows::Host(&two), s)
        .unwrap();
    assert_eq!(b.gather(0, sb).unwrap().0, two);

    // Stale: a fork between begin_append and append_layer.
    let step = a.begin_append(&[(sa, 1)]).unwrap();
    a.fork(sa).unwrap();
    let e = a
        .append_layer(0, &step, Rows::Host(&two), s, Rows::Host(&two), s)
        .unwrap_err();
    assert!(matches!(e, Error::StaleHandle { .. }), "{e}");
    assert_eq!(a.gather(0, sa).unwrap().0[..D], one[..]);
}

/// Finding 2: `rollback` was unchecked: out of order it left a sequence of length 1 without
/// pages (the next reserve panicked), and a foreign plan left "1 page for 40 tokens".
#[test]
fn f2_rollback_refuses_stale_foreign_and_out_of_order_plans() {
    let mut t = PageTable::new(16, 4).unwrap();
    let a = t.add_sequence();
    let p1 = t.plan_append(&[(a, 1)]).unwrap();
    let p2 = t.plan_append(&[(a, 40)]).unwrap();
    let snapshot = |t: &PageTable| {
        (
            t.len(a).unwrap(),
            t.pages(a).unwrap().to_vec(),
            t.free_pages(),
        )
    };
    let before = snapshot(&t);
    assert!(matches!(t.rollback(&p1), Err(Error::StaleHandle { .. })));
    assert_eq!(snapshot(&t), before);
    // Newest first is fine, and returns the table to each earlier state.
    t.rollback(&p2).unwrap();
    assert_eq!((t.len(a).unwrap(), t.pages(a).unwrap().len()), (1, 1));
    t.rollback(&p1).unwrap();
    assert_eq!((t.len(a).unwrap(), t.free_pages()), (0, 16));
    // Twice is refused.
    assert!(matches!(t.rollback(&p1), Err(Error::StaleHandle { .. })));
    t.check_invariants().unwrap();
    t.reserve(a, 5).unwrap(); // panicked at page_table.rs:255 on f830a21
    t.check_invariants().unwrap();

    // A plan of another table (same sequence id 0) is foreign.
    let mut u = PageTable::new(16, 4).unwrap();
    let x = u.add_sequence();
    assert_eq!(x, a);
    let pu = u.plan_append(&[(x, 40)]).unwrap();
    let before = snapshot(&t);
    assert!(matches!(t.rollback(&pu), Err(Error::StaleHandle { .. })));
    assert_eq!(snapshot(&t), before);
    t.check_invariants().unwrap();
    // So is one of a clone, and a plan followed by any other change is stale.
    let pt = t.plan_append(&[(a, 2)]).unwrap();
    let mut c = t.clone();
    assert!(matches!(c.rollback(&pt), Err(Error::StaleHandle { .. })));
    t.fork(a).unwrap();
    assert!(matches!(t.rollback(&pt), Err(Error::StaleHandle { .. })));
    assert!(matches!(
        t.rollback(&Default::default()),
        Err(Error::StaleHandle { .. })
    ));
    t.check_invariants().unwrap();
}

/// Finding 3: size products wrapped (release) or panicked (overflow checks) — head configs of
/// 2^32 heads, page sizes of 2^58, and the helpers and planners fed extreme values.
#[test]
fn f3_size_products_do_not_wrap() {
    assert!(HeadConfig::new(1 << 32, 1 << 32, 1 << 32).is_err());
    assert!(HeadConfig::new(1 << 16, 1, 1 << 16).is_err()); // 2^32 elements per token
    assert!(HeadConfig::new(32, 8, 128).is_ok());
    // The fields are public: every op re-validates a head config built without `new`.
    let h = HeadConfig {
        num_qo_heads: 1 << 32,
        num_kv_heads: 1 << 32,
        head_dim: 1 << 32,
    };
    let o = AttentionOptions::default();
    let mut out = vec![bf16::ZERO; 4 * D];
    let e = cpu::single_prefill(&h, &o, &[], &[], &[], 0, 0, &mut out, None).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    assert!(
        cpu::batch_prefill_ragged(&h, &o, &[], &[0, 0], &[], &[], &[0, 0], &mut out, None).is_err()
    );
    assert!(cpu::single_decode_contiguous(&h, &o, &[], &[], &[], 1, &mut out, None).is_err());
    let pool = PagedKvCache::<bf16>::new_cpu(cfg(4), PoolSize::Pages(2)).unwrap();
    let pages = pool.batch_pages(&[]).unwrap();
    assert!(cpu::batch_decode(&h, &o, &[], pool.pool(0).unwrap(), &pages, &mut out, None).is_err());
    assert!(reference::attention(&[], &[], &[], &h, 1, 1, &o).is_err());

    // A page of 2^58 tokens: refused where it enters, not by a panic in append.
    for size in [PoolSize::Pages(1), PoolSize::Bytes(1 << 40)] {
        let e = PagedKvCache::<bf16>::new_cpu(cfg(1 << 58), size)
            .err()
            .expect("page size 2^58 accepted");
        assert!(
            matches!(e, Error::InvalidArgument { .. } | Error::Overflow { .. }),
            "{e}"
        );
    }
    // Infallible helpers saturate instead of wrapping.
    let huge = KvPoolConfig {
        num_pages: usize::MAX,
        ..cfg(1 << 58)
    };
    assert_eq!(huge.page_bytes(), usize::MAX);
    assert_eq!(huge.capacity_tokens(), usize::MAX);
    assert_eq!(KvStrides::contiguous(&h).stride_n, usize::MAX);
    assert_eq!(
        RowStrides::contiguous(1 << 40, 1 << 40).stride_n,
        usize::MAX
    );
    assert_eq!(tile_keys(10, 5, 0, 4, true, Some(3)), (0, 4)); // qo > kv: no wrap
    assert_eq!(
        tile_keys(1, usize::MAX, usize::MAX, usize::MAX, true, None).1,
        usize::MAX
    );
    assert_eq!(PrefillTile::Rows64.smem_bytes(usize::MAX), u32::MAX);
    let _ = PrefillTile::auto(
        usize::MAX,
        usize::MAX,
        usize::MAX,
        usize::MAX,
        128,
        Arch::Sm90a,
    );
    // Planners: extreme but well-formed problems plan or fail with a typed error.
    let lens = [i32::MAX as usize; 3];
    let r = plan_decode(&DecodeProblem {
        kv_lens: &lens,
        num_kv_heads: usize::MAX,
        max_ctas: usize::MAX,
        min_chunk: usize::MAX,
        chunk_align: usize::MAX,
        fixed_chunk: None,
        graph_items: None,
    })
    .unwrap();
    // The chunk alignment saturates to "never split": one item per request.
    assert_eq!((r.num_items(), r.split), (3, false));
    let r = plan_prefill(&PrefillProblem {
        qo_lens: &[1 << 20],
        kv_lens: &[i32::MAX as usize],
        tile_tokens: usize::MAX,
        causal: true,
        window_left: Some(usize::MAX),
        num_kv_heads: usize::MAX,
        max_ctas: usize::MAX,
        min_chunk: usize::MAX,
        chunk_align: usize::MAX,
        fixed_chunk: None,
        max_items: None,
        max_slots: None,
    });
    assert!(r.is_ok(), "{r:?}");
}

/// Finding 4: sizes no allocator can serve aborted the process; they are errors now (and a
/// page table no longer allocates its whole bookkeeping up front).
#[test]
fn f4_impossible_allocations_are_errors_not_aborts() {
    // 2^28 pages of 2 KiB K + 2 KiB V: 512 GiB per pool.
    let e = PagedKvCache::<bf16>::new_cpu(cfg(16), PoolSize::Bytes(1 << 40))
        .err()
        .expect("a 1 TiB host pool was allocated");
    assert!(matches!(e, Error::OutOfMemory { .. }), "{e}");
    let e = PagedKvCache::<bf16>::new_cpu_layers(cfg(16), PoolSize::Pages(1), 1 << 40)
        .err()
        .expect("2^40 layers");
    assert!(matches!(e, Error::OutOfMemory { .. }), "{e}");
    let e = PagedKvCache::<bf16>::new_cpu(cfg(16), PoolSize::Pages(1 << 31))
        .err()
        .expect("2^31 pages");
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");

    // The largest table the i32 tables allow: no 16 GiB up front.
    let mut t = PageTable::new(i32::MAX as usize, 16).unwrap();
    assert_eq!(t.free_pages(), i32::MAX as usize);
    let a = t.add_sequence();
    t.reserve(a, 100).unwrap();
    assert_eq!(t.free_pages(), i32::MAX as usize - 7);
    assert_eq!(t.refcount(i32::MAX as u32 - 1), Some(0));
    t.free(a).unwrap();
    assert_eq!(t.free_pages(), i32::MAX as usize);
    t.check_invariants().unwrap();

    // A fixed split of one key over 2^31 − 1 keys: 2^31 work items.
    let lens = [i32::MAX as usize];
    let e = plan_decode(&DecodeProblem {
        kv_lens: &lens,
        num_kv_heads: 1,
        max_ctas: 132,
        min_chunk: 1,
        chunk_align: 1,
        fixed_chunk: Some(1),
        graph_items: None,
    })
    .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    let item = ferrinfer::kernels_abi::abi::PrefillItem {
        request: 0,
        t0: 0,
        kv_begin: 0,
        kv_end: 128,
        part: u32::MAX,
        chunk: 0,
        nchunks: 1,
        pad: 0,
    };
    assert!(schedule_units(&[item; 4], usize::MAX, 1, 128).is_err());
    assert!(schedule_units(&[item; 4], 1, usize::MAX, 128).is_err());
    assert_eq!(
        schedule_units(&[item; 4], 2, 3, 128).unwrap().units.len(),
        8
    );
}

/// Finding 5: counts above `i32::MAX` were accepted and came out of `batch_pages` negative.
#[test]
fn f5_i32_limits_are_enforced_where_values_enter() {
    assert!(matches!(
        PageTable::new(4, 1 << 31),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(PageTable::new((1 << 31) + 1, 1).is_err());
    let mut t = PageTable::new(1, i32::MAX as usize).unwrap();
    let a = t.add_sequence();
    t.reserve(a, i32::MAX as usize).unwrap();
    let b = t.batch_pages(&[a]).unwrap();
    assert_eq!(b.kv_last_page_len, vec![i32::MAX]);
    b.validate("test", i32::MAX as usize, Some(1)).unwrap();
    // One more token would be position 2^31.
    let free = t.free_pages();
    assert!(t.reserve(a, 1).is_err());
    assert!(t.plan_append(&[(a, 1)]).is_err());
    assert_eq!(
        (t.len(a).unwrap(), t.free_pages()),
        (i32::MAX as usize, free)
    );
    // Pool pages of 2^31 tokens are refused too.
    assert!(PagedKvCache::<bf16>::new_cpu(cfg(1 << 31), PoolSize::Pages(1)).is_err());
}

/// Finding 6: helpers divided by zero or indexed out of bounds.
#[test]
fn f6_helpers_do_not_panic() {
    assert_eq!(PrefillTile::Rows64.tokens(0), 0);
    assert_eq!(PrefillTile::Rows64.tokens(1 << 32), 0);
    assert_eq!(PrefillTile::Rows64.tokens(4), 16);
    let b = BatchPages {
        kv_indptr: vec![0, 2],
        kv_indices: vec![0, 1],
        kv_last_page_len: vec![3],
    };
    assert_eq!(b.kv_len(0, 16).unwrap(), 19);
    assert!(b.kv_len(1, 16).is_err());
    assert!(b.kv_len(usize::MAX, 16).is_err());
    assert!(BatchPages::default().kv_len(0, 16).is_err());
    let bad = BatchPages {
        kv_indptr: vec![0, -5],
        kv_indices: vec![],
        kv_last_page_len: vec![-1],
    };
    assert!(bad.kv_len(0, 16).is_err());
    assert!(UnitSchedule::default().of_cta(3).is_empty());
}

/// Finding 7: options that pass validation overflowed once scaled by log2(e) (NaN outputs,
/// lse −inf). The scaled values are what is validated now.
#[test]
fn f7_options_that_overflow_once_scaled_are_refused() {
    let h = HeadConfig::new(2, 1, D).unwrap();
    let q = rows(2, 0.5);
    let kv = rows(3, 0.25);
    let bad = [
        AttentionOptions::default().with_soft_cap(f32::MAX),
        AttentionOptions::default().with_sm_scale(f32::MAX),
        AttentionOptions::default().with_sm_scale(-f32::MAX),
        AttentionOptions::default()
            .with_sm_scale(1e38)
            .with_soft_cap(1e-3),
        AttentionOptions::default().with_soft_cap(1e-45),
    ];
    for o in bad {
        assert!(o.validate("test").is_err(), "{o:?}");
        let mut out = rows(2, 7.0);
        let e = cpu::single_decode_contiguous(&h, &o, &q, &kv, &kv, 3, &mut out, None).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        assert_eq!(out, rows(2, 7.0), "a failed call wrote its output");
    }
    // Large but representable scales still run, with finite results.
    for o in [
        AttentionOptions::default().with_sm_scale(1e30),
        AttentionOptions::default().with_soft_cap(1e30),
    ] {
        let mut out = rows(2, 7.0);
        let mut lse = [0.0f32; 2];
        cpu::single_decode_contiguous(&h, &o, &q, &kv, &kv, 3, &mut out, Some(&mut lse)).unwrap();
        assert!(out.iter().all(|x| x.to_f32().is_finite()), "{o:?}");
        assert!(lse.iter().all(|x| x.is_finite()), "{o:?}");
    }
}

/// Finding 8a: an empty ragged/paged prefill batch returned `Ok` with options decode rejects.
#[test]
fn f8_empty_prefill_batch_validates_options() {
    let h = HeadConfig::new(2, 1, D).unwrap();
    let cache = cpu_cache(4, 2);
    let pages = cache.batch_pages(&[]).unwrap();
    for o in [
        AttentionOptions::default().with_sm_scale(f32::NAN),
        AttentionOptions::default().with_soft_cap(0.0),
    ] {
        let mut out: Vec<bf16> = vec![];
        let e = cpu::batch_prefill_ragged(&h, &o, &[], &[0], &[], &[], &[0], &mut out, None)
            .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        let e = cpu::batch_prefill_paged(
            &h,
            &o,
            &[],
            &[0],
            cache.pool(0).unwrap(),
            &pages,
            &mut out,
            None,
        )
        .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    }
}

/// Finding 8b: `single_prefill` with `qo_len = 0` accepted a `kv_len` whose K/V size wraps.
#[test]
fn f8_single_prefill_kv_size_does_not_wrap() {
    let h = HeadConfig::new(1, 1, D).unwrap();
    let o = AttentionOptions::default();
    let mut out: Vec<bf16> = vec![];
    // (2^58) · 64 = 2^64 wrapped to 0 elements: "k/v long enough".
    let e = cpu::single_prefill(&h, &o, &[], &[], &[], 0, 1 << 58, &mut out, None).unwrap_err();
    assert!(matches!(e, Error::Overflow { .. }), "{e}");
}

/// Finding 8c: reserving two forks that share a partial last page in one `reserve_many`
/// counted two copies (`OutOfPages`, need 2, free 1); the first fork's copy leaves the page
/// to the second alone, exactly as one at a time.
#[test]
fn f8_reserve_many_of_forks_sharing_a_partial_page() {
    let mut t = PageTable::new(2, 4).unwrap();
    let a = t.add_sequence();
    t.reserve(a, 2).unwrap();
    let b = t.fork(a).unwrap();
    let mut one_at_a_time = t.clone();
    let copies = t.reserve_many(&[(a, 1), (b, 1)]).unwrap();
    assert_eq!(copies.len(), 1);
    assert_eq!(t.free_pages(), 0);
    t.check_invariants().unwrap();
    one_at_a_time.reserve(a, 1).unwrap();
    one_at_a_time.reserve(b, 1).unwrap();
    assert_eq!(t.pages(a).unwrap(), one_at_a_time.pages(a).unwrap());
    assert_eq!(t.pages(b).unwrap(), one_at_a_time.pages(b).unwrap());
    // And through the cache, with contents: both forks keep the shared prefix.
    let mut c = cpu_cache(4, 2);
    let a = c.add_sequence();
    let s = strides();
    let r = rows(2, 3.0);
    c.append(&[(a, 2)], Rows::Host(&r), s, Rows::Host(&r), s)
        .unwrap();
    let b = c.fork(a).unwrap();
    let new = [rows(1, 4.0), rows(1, 5.0)].concat();
    c.append(&[(a, 1), (b, 1)], Rows::Host(&new), s, Rows::Host(&new), s)
        .unwrap();
    assert_eq!(
        c.gather(0, a).unwrap().0,
        [rows(2, 3.0), rows(1, 4.0)].concat()
    );
    assert_eq!(
        c.gather(0, b).unwrap().0,
        [rows(2, 3.0), rows(1, 5.0)].concat()
    );
}

/// Finding 8d: `append` on a multi-layer cache reserved the tokens and wrote layer 0 only.
#[test]
fn f8_append_on_a_multi_layer_cache_is_refused() {
    let mut c = PagedKvCache::<bf16>::new_cpu_layers(cfg(4), PoolSize::Pages(4), 2).unwrap();
    let a = c.add_sequence();
    let s = strides();
    let r = rows(3, 1.0);
    let e = c
        .append(&[(a, 3)], Rows::Host(&r), s, Rows::Host(&r), s)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    assert_eq!((c.len(a).unwrap(), c.table().free_pages()), (0, 4));
    // The per-layer path writes both layers.
    let step = c.begin_append(&[(a, 3)]).unwrap();
    for layer in 0..2 {
        let r = rows(3, layer as f32 + 1.0);
        c.append_layer(layer, &step, Rows::Host(&r), s, Rows::Host(&r), s)
            .unwrap();
    }
    assert_eq!(c.gather(1, a).unwrap().0, rows(3, 2.0));
}

/// Finding 8e: the oracle cast `window_left ≥ 2^63` to a negative i64 and masked every key.
#[test]
fn f8_oracle_window_of_2_63_masks_nothing() {
    for w in [1usize << 63, usize::MAX] {
        let o = AttentionOptions::default().with_window_left(w);
        assert!(reference::allowed(0, 0, 1, 1, &o));
        assert!(reference::allowed(3, 0, 4, 4, &o.with_causal(true)));
    }
    let h = HeadConfig::new(1, 1, 2).unwrap();
    let (q, k, v) = ([1.0, 0.5], [0.5, 1.0, 1.0, 0.0], [1.0, 2.0, 3.0, 4.0]);
    let plain = reference::attention(&q, &k, &v, &h, 1, 2, &AttentionOptions::default()).unwrap();
    let wide = AttentionOptions::default().with_window_left(usize::MAX);
    let windowed = reference::attention(&q, &k, &v, &h, 1, 2, &wide).unwrap();
    assert_eq!(plain.o, windowed.o);
    assert!(windowed.lse[0].is_finite());
}
