//! Bad input: a typed error before any launch, and nothing corrupted.
use super::*;

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
        BatchPrefill::new(&gpu, HeadConfig::new(64, 1, 64).unwrap(), DType::F16, opts),
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
