//! Plan objects: CUDA-graph mode re-planning, bad input before any launch, growth outside graph
//! mode and foreign plans.
use super::*;

/// CUDA-graph mode: one plan object re-planned for different batches keeps its buffers and
/// stays correct.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_graph_mode_reuses_plan_buffers() {
    let Some(gpu) = gpu_or_skip("gpu_graph_mode_reuses_plan_buffers") else {
        return;
    };
    let heads = HeadConfig::new(16, 4, 128).unwrap();
    let limits = GraphLimits {
        max_batch: 16,
        max_pages: 4096,
    };
    let op = BatchDecode::new_graph(
        &gpu,
        heads,
        DType::Bf16,
        AttentionOptions::default(),
        limits,
    )
    .unwrap();
    let batches = [
        vec![3000usize, 17, 1],
        vec![5; 16],
        vec![0, 4096, 200, 9000],
        vec![1],
    ];
    let mut plan = None;
    let mut addrs = None;
    for (i, lens) in batches.iter().enumerate() {
        let c = Case {
            heads,
            page_size: 16,
            layout: KvLayout::Hnd,
            lens: lens.clone(),
            opts: AttentionOptions::default(),
            seed: i as u64,
        };
        let d = make::<bf16>(&c);
        let mut pool = KvPool::<bf16>::new_gpu(&gpu, pool_cfg(&c), PoolSize::Pages(1024)).unwrap();
        let rs = RowStrides::contiguous(4, 128);
        if !d.batch_indices.is_empty() {
            let (kd, vd) = (
                gpu.upload(&d.rows_k).unwrap(),
                gpu.upload(&d.rows_v).unwrap(),
            );
            pool.append(
                &AppendMeta {
                    batch_indices: &d.batch_indices,
                    positions: &d.positions,
                    pages: &d.pages,
                },
                Rows::Device(&kd),
                rs,
                Rows::Device(&vd),
                rs,
            )
            .unwrap();
        }
        match plan.as_mut() {
            None => plan = Some(op.plan(&d.pages, pool.config()).unwrap()),
            Some(p) => op.plan_into(&d.pages, pool.config(), p).unwrap(),
        }
        let p = plan.as_ref().unwrap();
        let a = p.buffer_addresses();
        assert_eq!(*addrs.get_or_insert(a), a, "graph-mode plan reallocated");
        // Graph mode: q/out sized for the maximum batch.
        let mut q = d.q.clone();
        q.resize(16 * 16 * 128, bf16::ONE);
        let qd = gpu.upload(&q).unwrap();
        let mut od = gpu.upload(&vec![bf16::NAN; 16 * 16 * 128]).unwrap();
        let mut ld = gpu.upload(&vec![f32::NAN; 16 * 16]).unwrap();
        op.run(p, &qd, &pool, &mut od, Some(&mut ld)).unwrap();
        let s = compare(
            &c,
            &d,
            &gpu.download(&od).unwrap(),
            &gpu.download(&ld).unwrap(),
        );
        check(s, DType::Bf16, &c);
    }
    // Beyond the limits is a typed error.
    let big = BatchPages {
        kv_indptr: vec![0; 18],
        kv_indices: vec![],
        kv_last_page_len: vec![0; 17],
    };
    let cfg = KvPoolConfig {
        num_pages: 1024,
        page_size: 16,
        num_kv_heads: 4,
        head_dim: 128,
        layout: KvLayout::Hnd,
    };
    assert!(matches!(
        op.plan_into(&big, &cfg, plan.as_mut().unwrap()),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_bad_input_is_a_typed_error() {
    let Some(gpu) = gpu_or_skip("gpu_bad_input_is_a_typed_error") else {
        return;
    };
    let heads = HeadConfig::new(8, 2, 64).unwrap();
    let cfg = KvPoolConfig {
        num_pages: 0,
        page_size: 16,
        num_kv_heads: 2,
        head_dim: 64,
        layout: KvLayout::Nhd,
    };
    let pool = KvPool::<f16>::new_gpu(&gpu, cfg, PoolSize::Pages(8)).unwrap();
    let op = BatchDecode::new(&gpu, heads, DType::F16, AttentionOptions::default()).unwrap();
    let good = BatchPages {
        kv_indptr: vec![0, 2, 3],
        kv_indices: vec![4, 1, 7],
        kv_last_page_len: vec![3, 16],
    };
    let pc = pool.config();
    // Metadata inconsistent with the cache.
    let bad_indptr = BatchPages {
        kv_indptr: vec![0, 2, 1],
        ..good.clone()
    };
    assert!(matches!(
        op.plan(&bad_indptr, pc),
        Err(Error::InvalidArgument { .. })
    ));
    let bad_last = BatchPages {
        kv_last_page_len: vec![0, 16],
        ..good.clone()
    };
    assert!(matches!(
        op.plan(&bad_last, pc),
        Err(Error::InvalidArgument { .. })
    ));
    let bad_count = BatchPages {
        kv_indices: vec![4, 1],
        ..good.clone()
    };
    assert!(matches!(op.plan(&bad_count, pc), Err(Error::Shape { .. })));
    // Page index out of range.
    let oob = BatchPages {
        kv_indices: vec![4, 1, 8],
        ..good.clone()
    };
    assert!(matches!(
        op.plan(&oob, pc),
        Err(Error::PageOutOfRange { page: 8, .. })
    ));
    // q shape mismatch / plan used with a different batch.
    let plan = op.plan(&good, pc).unwrap();
    let q3 = gpu.upload(&vec![f16::ONE; 3 * 8 * 64]).unwrap();
    let q2 = gpu.upload(&vec![f16::ONE; 2 * 8 * 64]).unwrap();
    let mut o2 = gpu.upload(&vec![f16::from_f32(7.0); 2 * 8 * 64]).unwrap();
    let mut o3 = gpu.upload(&vec![f16::ONE; 3 * 8 * 64]).unwrap();
    assert!(matches!(
        op.run(&plan, &q3, &pool, &mut o3, None),
        Err(Error::Shape { .. })
    ));
    let mut short_lse = gpu.upload(&[0.0f32; 3]).unwrap();
    assert!(matches!(
        op.run(&plan, &q2, &pool, &mut o2, Some(&mut short_lse)),
        Err(Error::Shape { .. })
    ));
    // A pool of another geometry.
    let other = KvPool::<f16>::new_gpu(
        &gpu,
        KvPoolConfig {
            page_size: 8,
            ..cfg
        },
        PoolSize::Pages(8),
    )
    .unwrap();
    assert!(matches!(
        op.run(&plan, &q2, &other, &mut o2, None),
        Err(Error::InvalidArgument { .. })
    ));
    // Wrong dtype for the op.
    let op_bf = BatchDecode::new(&gpu, heads, DType::Bf16, AttentionOptions::default()).unwrap();
    assert!(matches!(
        op_bf.run(&plan, &q2, &pool, &mut o2, None),
        Err(Error::Shape { .. })
    ));
    // Nothing was written.
    assert!(gpu.download(&o2).unwrap().iter().all(|x| x.to_f32() == 7.0));
}

/// Outside graph mode a plan object is re-planned for bigger batches (growing its buffers), and
/// a plan of another op is refused before any launch.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_plan_into_grows_and_rejects_foreign_plans() {
    let Some(gpu) = gpu_or_skip("gpu_plan_into_grows_and_rejects_foreign_plans") else {
        return;
    };
    let heads = HeadConfig::new(16, 4, 128).unwrap();
    let op = BatchDecode::new(&gpu, heads, DType::Bf16, AttentionOptions::default()).unwrap();
    let mut plan = None;
    for (i, lens) in [vec![0usize], vec![17, 1], vec![3000, 40, 5000, 1, 16]]
        .iter()
        .enumerate()
    {
        let c = Case {
            heads,
            page_size: 16,
            layout: KvLayout::Nhd,
            lens: lens.clone(),
            opts: AttentionOptions::default(),
            seed: 50 + i as u64,
        };
        let d = make::<bf16>(&c);
        let mut pool =
            KvPool::<bf16>::new_gpu(&gpu, pool_cfg(&c), PoolSize::Pages(d.num_pages)).unwrap();
        let rs = RowStrides::contiguous(4, 128);
        if !d.batch_indices.is_empty() {
            let (kd, vd) = (
                gpu.upload(&d.rows_k).unwrap(),
                gpu.upload(&d.rows_v).unwrap(),
            );
            pool.append(
                &AppendMeta {
                    batch_indices: &d.batch_indices,
                    positions: &d.positions,
                    pages: &d.pages,
                },
                Rows::Device(&kd),
                rs,
                Rows::Device(&vd),
                rs,
            )
            .unwrap();
        }
        match plan.as_mut() {
            None => plan = Some(op.plan(&d.pages, pool.config()).unwrap()),
            Some(p) => op.plan_into(&d.pages, pool.config(), p).unwrap(),
        }
        let p = plan.as_ref().unwrap();
        let n = lens.len() * 16 * 128;
        let qd = gpu.upload(&d.q).unwrap();
        let mut od = gpu.upload(&vec![bf16::NAN; n]).unwrap();
        let mut ld = gpu.upload(&vec![f32::NAN; lens.len() * 16]).unwrap();
        op.run(p, &qd, &pool, &mut od, Some(&mut ld)).unwrap();
        check(
            compare(
                &c,
                &d,
                &gpu.download(&od).unwrap(),
                &gpu.download(&ld).unwrap(),
            ),
            DType::Bf16,
            &c,
        );
        // Another op (other head geometry) refuses this plan.
        let other = BatchDecode::new(
            &gpu,
            HeadConfig::new(16, 2, 128).unwrap(),
            DType::Bf16,
            AttentionOptions::default(),
        )
        .unwrap();
        assert!(matches!(
            other.run(p, &qd, &pool, &mut od, None),
            Err(Error::InvalidArgument { .. }) | Err(Error::Shape { .. })
        ));
    }
}
