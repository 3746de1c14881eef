//! The Hopper (`wgmma`) tile on small shapes (sanitizer-sized) and persistent CTAs with many
//! units.
use super::*;

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
            tma: Some(true),
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
            tma: Some(true),
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
        max_mask_bytes: 0,
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
            tma: None,
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
