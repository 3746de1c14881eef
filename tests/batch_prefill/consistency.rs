//! Prefill agrees with itself: one token equals decode, chunked equals one prefill, and a
//! graph-mode plan re-planned for other batches stays correct.
use super::*;

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
        tma: None,
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
        tma: None,
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
        max_mask_bytes: 0,
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
            tma: None,
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
