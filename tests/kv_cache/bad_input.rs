//! Bad input to the cache and its raw pool: typed errors, state unchanged.
use super::*;

fn bad_inputs(w: Where) {
    let cfg = nhd16();
    let mut cache = match w {
        Where::Cpu => PagedKvCache::<bf16>::new_cpu(cfg, PoolSize::Pages(4)).unwrap(),
        Where::Gpu(g) => PagedKvCache::<bf16>::new_gpu(g, cfg, PoolSize::Pages(4)).unwrap(),
    };
    let a = cache.add_sequence();
    let s = RowStrides::contiguous(HEADS, D);
    let rows: Vec<bf16> = (0..100 * ROW)
        .map(|i| bf16::from_f32((i % 13) as f32 + 1.0))
        .collect();
    let dev = match w {
        Where::Gpu(g) => Some(g.upload(&rows).unwrap()),
        Where::Cpu => None,
    };
    let rows_of = |n: usize| -> Rows<'_, bf16> {
        match &dev {
            Some(d) => Rows::Device(d),
            None => Rows::Host(&rows[..n * ROW]),
        }
    };
    cache
        .append(&[(a, 20)], rows_of(20), s, rows_of(20), s)
        .unwrap();
    let snap = |c: &mut PagedKvCache<bf16>| {
        (
            c.batch_pages(&[a]).unwrap(),
            c.table().free_pages(),
            c.gather(0, a).unwrap(),
        )
    };
    let before = snap(&mut cache);

    // Unknown sequence.
    let e = cache
        .append(&[(SeqId(999), 1)], rows_of(1), s, rows_of(1), s)
        .unwrap_err();
    assert!(matches!(e, Error::UnknownSequence { .. }), "{e}");
    assert!(matches!(
        cache.fork(SeqId(999)),
        Err(Error::UnknownSequence { .. })
    ));
    assert!(matches!(
        cache.free(SeqId(999)),
        Err(Error::UnknownSequence { .. })
    ));
    // Out of pages (4 pages × 16 = 64 tokens; 20 used).
    let e = cache
        .append(&[(a, 45)], rows_of(45), s, rows_of(45), s)
        .unwrap_err();
    assert!(matches!(e, Error::OutOfPages { .. }), "{e}");
    // K/V rows shorter than the metadata asks for (host rows are cut to 5 rows; device rows hold
    // 100, so ask for 101).
    let (n_ok, n_bad) = if dev.is_some() { (100, 101) } else { (5, 6) };
    let e = cache
        .append(&[(a, n_bad)], rows_of(n_ok), s, rows_of(n_ok), s)
        .unwrap_err();
    assert!(
        matches!(e, Error::Shape { .. } | Error::OutOfPages { .. }),
        "{e}"
    );
    if dev.is_none() {
        assert!(matches!(e, Error::Shape { .. }), "{e}");
    }
    // Head count / head dim mismatch with the pool: rows laid out for 1 head of 128 give a head
    // stride the pool cannot use (or, for D=128 rows of 2 heads, rows that are too short).
    let e = cache
        .append(
            &[(a, 1)],
            rows_of(1),
            RowStrides {
                stride_n: 128,
                stride_h: 32,
            },
            rows_of(1),
            s,
        )
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    let wide = RowStrides {
        stride_n: 2 * 128,
        stride_h: 128,
    };
    let e = cache
        .append(&[(a, n_ok)], rows_of(n_ok), wide, rows_of(n_ok), wide)
        .unwrap_err();
    assert!(
        matches!(e, Error::Shape { .. } | Error::OutOfPages { .. }),
        "{e}"
    );
    // Hand-made metadata with a page index out of range.
    let pages = BatchPages {
        kv_indptr: vec![0, 2],
        kv_indices: vec![0, 7],
        kv_last_page_len: vec![4],
    };
    let meta = AppendMeta {
        batch_indices: &[0],
        positions: &[3],
        pages: &pages,
    };
    let before_pool = match &dev {
        Some(_) => None,
        None => Some(cache.pool(0).unwrap().host_buffers().unwrap().0.to_vec()),
    };
    let pool: &mut KvPool<bf16> = raw_pool(&mut cache);
    let e = pool
        .append(&meta, rows_of(1), s, rows_of(1), s)
        .unwrap_err();
    assert!(matches!(e, Error::PageOutOfRange { page: 7, .. }), "{e}");
    // Position outside the reserved length, and a batch index out of range.
    let pages = BatchPages {
        kv_indptr: vec![0, 1],
        kv_indices: vec![0],
        kv_last_page_len: vec![4],
    };
    let e = pool
        .append(
            &AppendMeta {
                batch_indices: &[0],
                positions: &[4],
                pages: &pages,
            },
            rows_of(1),
            s,
            rows_of(1),
            s,
        )
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    let e = pool
        .append(
            &AppendMeta {
                batch_indices: &[1],
                positions: &[0],
                pages: &pages,
            },
            rows_of(1),
            s,
            rows_of(1),
            s,
        )
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    if let Some(p) = before_pool {
        assert_eq!(p, cache.pool(0).unwrap().host_buffers().unwrap().0);
    }
    assert_eq!(
        before,
        snap(&mut cache),
        "a rejected call changed the cache"
    );
}

#[test]
fn bad_input_is_a_typed_error_cpu() {
    bad_inputs(Where::Cpu);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bad_input_is_a_typed_error_gpu() {
    let Some(gpu) = gpu_or_skip("bad_input_is_a_typed_error_gpu") else {
        return;
    };
    bad_inputs(Where::Gpu(&gpu));
}
