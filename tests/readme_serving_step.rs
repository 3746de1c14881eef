//! The README's serving-step example, compiled and run (GPU when present), so the documented
//! API cannot drift from the real one.
#![allow(clippy::too_many_arguments)]
use ferrinfer::kv::{PagedKvCache, RowStrides, Rows, SeqId};
use ferrinfer::ops::{BatchDecode, BatchPrefill};
use ferrinfer::DeviceBuffer;
use half::bf16;

fn step(
    cache: &mut PagedKvCache<bf16>, // PagedKvCache::new_gpu_layers(gpu, cfg, size, 30)
    decode: &BatchDecode,           // BatchDecode::new(gpu, heads, DType::Bf16, opts)
    seqs: &[ferrinfer::kv::SeqId],
    new_kv: &[(DeviceBuffer<bf16>, DeviceBuffer<bf16>)], // per layer: [batch, kv_heads, D]
    q: &[DeviceBuffer<bf16>],                            // per layer: [batch, q_heads, D]
    out: &mut [DeviceBuffer<bf16>],
) -> ferrinfer::Result<()> {
    let reqs: Vec<_> = seqs.iter().map(|&s| (s, 1)).collect();
    let appended = cache.begin_append(&reqs)?; // pages reserved + metadata uploaded, once
    let c = *cache.config();
    let rows = RowStrides::contiguous(c.num_kv_heads, c.head_dim);
    for (layer, (k, v)) in new_kv.iter().enumerate() {
        cache.append_layer(
            layer,
            &appended,
            Rows::Device(k),
            rows,
            Rows::Device(v),
            rows,
        )?;
    }
    let plan = decode.plan(&cache.batch_pages(seqs)?, &c)?; // host planner, once per step
    for (layer, o) in out.iter_mut().enumerate() {
        decode.run(&plan, &q[layer], cache.pool(layer)?, o, None)?; // launch only
    }
    Ok(())
}

fn prefill_step(
    cache: &PagedKvCache<bf16>, // the new tokens' K/V already appended (begin_append/append_layer)
    prefill: &BatchPrefill, // BatchPrefill::new(gpu, heads, DType::Bf16, opts.with_causal(true))
    seqs: &[SeqId],
    qo_indptr: &[i32],        // [0, n0, n0 + n1, ...]: new tokens per request
    q: &[DeviceBuffer<bf16>], // per layer: [Σ n, q_heads, D]
    out: &mut [DeviceBuffer<bf16>],
) -> ferrinfer::Result<()> {
    let plan = prefill.plan_paged(qo_indptr, &cache.batch_pages(seqs)?, cache.config())?;
    for (layer, o) in out.iter_mut().enumerate() {
        prefill.run_paged(&plan, &q[layer], cache.pool(layer)?, o, None)?; // launch only
    }
    Ok(())
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn readme_serving_step_runs() {
    use ferrinfer::kv::{KvLayout, KvPoolConfig, PoolSize};
    use ferrinfer::{AttentionOptions, DType, HeadConfig};
    let Some(gpu) = ferrinfer_harness::gpu_or_skip("readme_serving_step_runs") else {
        return;
    };
    let heads = HeadConfig::new(9, 3, 64).unwrap();
    let cfg = KvPoolConfig {
        num_pages: 0,
        page_size: 16,
        num_kv_heads: 3,
        head_dim: 64,
        layout: KvLayout::Nhd,
    };
    let mut cache =
        PagedKvCache::<bf16>::new_gpu_layers(&gpu, cfg, PoolSize::Pages(64), 2).unwrap();
    let decode = BatchDecode::new(&gpu, heads, DType::Bf16, AttentionOptions::default()).unwrap();
    let seqs: Vec<_> = (0..4).map(|_| cache.add_sequence()).collect();
    let kv: Vec<_> = (0..2)
        .map(|_| {
            (
                gpu.upload(&vec![bf16::ONE; 4 * 192]).unwrap(),
                gpu.upload(&vec![bf16::ONE; 4 * 192]).unwrap(),
            )
        })
        .collect();
    let q: Vec<_> = (0..2)
        .map(|_| gpu.upload(&vec![bf16::ONE; 4 * 576]).unwrap())
        .collect();
    let mut out: Vec<_> = (0..2)
        .map(|_| gpu.alloc::<bf16>(4 * 576).unwrap())
        .collect();
    for _ in 0..3 {
        step(&mut cache, &decode, &seqs, &kv, &q, &mut out).unwrap();
    }
    // V rows are all ones, so every output is one.
    for o in &out {
        assert!(gpu.download(o).unwrap().iter().all(|x| x.to_f32() == 1.0));
    }
    // The last appended token of each sequence as a one-token causal prefill.
    let prefill = BatchPrefill::new(
        &gpu,
        heads,
        DType::Bf16,
        AttentionOptions::default().with_causal(true),
    )
    .unwrap();
    for o in out.iter_mut() {
        gpu.write(o, &vec![bf16::NAN; 4 * 576]).unwrap();
    }
    prefill_step(&cache, &prefill, &seqs, &[0, 1, 2, 3, 4], &q, &mut out).unwrap();
    for o in &out {
        assert!(gpu.download(o).unwrap().iter().all(|x| x.to_f32() == 1.0));
    }
}
