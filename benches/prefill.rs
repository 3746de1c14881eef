//! Prefill benchmark, the shapes: bf16, D = 128, 32 query / 8 KV heads, causal.
//! Ragged (contiguous K/V) and paged (page size 16, random page order) batches with
//! qo_len = kv_len ∈ {(1, 4096), (1, 16384), (8, 2048), (16, 1024)}, and paged appends
//! (batch, qo_len, kv_len) ∈ {(8, 512, 4096), (64, 16, 2048)}; each with every CTA tile.
//!
//! Per row: median GPU time of one `run` (CUDA events, 5 warm-up calls, median of 50, L2
//! flushed and a 100 µs spin before each call — FlashInfer's method), plan excluded and
//! reported separately (host time of a re-plan into the existing plan).
//! FLOPs = 4 · D · Hq · Σ pairs, pairs = the causal (query, key) pairs incl. the diagonal:
//! `qo · (kv − qo) + qo (qo + 1) / 2` per request (FlashInfer's formula for qo = kv).
use ferrinfer::kv::{BatchPages, KvLayout, KvPool, KvPoolConfig, PoolSize};
use ferrinfer::ops::{BatchPrefill, PrefillTile};
use ferrinfer::runtime::TimeOpts;
use ferrinfer::{AttentionOptions, DType, Gpu, HeadConfig};
use ferrinfer_harness::record;
use half::bf16;

fn pattern(n: usize, salt: usize) -> Vec<bf16> {
    (0..n)
        .map(|i| bf16::from_f32((((i + salt) * 7919) % 2001) as f32 / 1000.0 - 1.0))
        .collect()
}

const OPTS: TimeOpts = TimeOpts {
    warmup: 5,
    iters: 50,
    flush_bytes: 100 << 20,
    spin_us: 100,
};

/// `batch` requests of `kv` keys in a page-16 NHD pool (8 KV heads, D 128), pages in random
/// order, filled with the bench pattern.
fn paged_kv(gpu: &Gpu, batch: usize, kv: usize) -> ferrinfer::Result<(BatchPages, KvPool<bf16>)> {
    let (pages, num_pages) =
        ferrinfer_harness::random_page_tables(batch, kv, 16, 0x9e37 + batch as u64);
    let cfg = KvPoolConfig {
        num_pages: 0,
        page_size: 16,
        num_kv_heads: 8,
        head_dim: 128,
        layout: KvLayout::Nhd,
    };
    let mut pool = KvPool::<bf16>::new_gpu(gpu, cfg, PoolSize::Pages(num_pages))?;
    pool.fill_tiled(&pattern(4096 * 3, 2), &pattern(4096 * 3, 3))?;
    Ok((pages, pool))
}

fn run(gpu: &Gpu) -> ferrinfer::Result<()> {
    let heads = HeadConfig::new(32, 8, 128)?;
    let opts = AttentionOptions::default().with_causal(true);
    let (qrow, krow) = (32 * 128, 8 * 128);
    println!("| kv | tile | batch | qo_len | kv_len | TFLOP | median us | p10 | p90 | TFLOP/s | items | plan us |");
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let shapes: [(usize, usize, usize, bool); 10] = [
        (1, 4096, 4096, false),
        (1, 16384, 16384, false),
        (8, 2048, 2048, false),
        (16, 1024, 1024, false),
        (1, 4096, 4096, true),
        (1, 16384, 16384, true),
        (8, 2048, 2048, true),
        (16, 1024, 1024, true),
        (8, 512, 4096, true),
        (64, 16, 2048, true),
    ];
    for (batch, qo, kv, paged) in shapes {
        let pairs = (qo * (kv - qo) + qo * (qo + 1) / 2) * batch;
        let flops = 4.0 * 128.0 * 32.0 * pairs as f64;
        let qo_indptr: Vec<i32> = (0..=batch).map(|b| (b * qo) as i32).collect();
        let q = gpu.upload(&pattern(batch * qo * qrow, 1))?;
        let mut o = gpu.alloc::<bf16>(batch * qo * qrow)?;
        // The Hopper tile three times: the persistent kernel, the merged kernel (one CTA per
        // item), and the plan's own choice between them (`persistent_auto`) and of the
        // producer (`tma_auto`); the forced kernels with TMA and, for ragged K/V, also with the
        // `cp.async` producer. `None` first: the tile, persistence and producer the plan picks
        // by itself (the row compared with FlashInfer), then every tile forced.
        let variants: Vec<(Option<PrefillTile>, Option<bool>, Option<bool>)> =
            std::iter::once((None, None, None))
                .chain(
                    PrefillTile::available(128, gpu.info().arch)
                        .iter()
                        .flat_map(|&t| {
                            let t = Some(t);
                            if t != Some(PrefillTile::Rows128Wgmma) {
                                return vec![(t, None, None)];
                            }
                            let mut v = vec![
                                (t, Some(true), Some(true)),
                                (t, Some(false), Some(true)),
                                (t, None, None),
                            ];
                            if !paged {
                                v.extend([
                                    (t, Some(true), Some(false)),
                                    (t, Some(false), Some(false)),
                                ]);
                            }
                            v
                        }),
                )
                .collect();
        for (tile, persistent, tma) in variants {
            let mut op = BatchPrefill::new(gpu, heads, DType::Bf16, opts)?;
            op.set_tile(tile)?;
            op.set_persistent(persistent);
            op.set_tma(tma);
            let label = match (tile, persistent) {
                (None, _) => "plan's choice".to_string(),
                (Some(t), Some(true)) => format!("{t:?} persistent"),
                (Some(t), Some(false)) => format!("{t:?} merged"),
                (Some(t), None) if t == PrefillTile::Rows128Wgmma => format!("{t:?} auto"),
                (Some(t), None) => format!("{t:?}"),
            } + if tma == Some(false) { " cp.async" } else { "" };
            let (t, items, plan_us) = if paged {
                let (pages, pool) = paged_kv(gpu, batch, kv)?;
                let mut plan = op.plan_paged(&qo_indptr, &pages, pool.config())?;
                // Steady state: a re-plan into the step's existing plan (buffers and pinned
                // staging already allocated), as a serving loop does every step; the stream is
                // drained first so the figure does not include earlier uploads.
                gpu.synchronize()?;
                let t0 = std::time::Instant::now();
                op.plan_paged_into(&qo_indptr, &pages, pool.config(), &mut plan)?;
                let plan_us = t0.elapsed().as_secs_f64() * 1e6;
                let t = gpu.time_with(OPTS, |_| op.run_paged(&plan, &q, &pool, &mut o, None))?;
                (t, plan.partition().items.len(), plan_us)
            } else {
                let kv_indptr: Vec<i32> = (0..=batch).map(|b| (b * kv) as i32).collect();
                let k = gpu.upload(&pattern(batch * kv * krow, 2))?;
                let v = gpu.upload(&pattern(batch * kv * krow, 3))?;
                let mut plan = op.plan_ragged(&qo_indptr, &kv_indptr)?;
                gpu.synchronize()?;
                let t0 = std::time::Instant::now();
                op.plan_ragged_into(&qo_indptr, &kv_indptr, &mut plan)?;
                let plan_us = t0.elapsed().as_secs_f64() * 1e6;
                let t = gpu.time_with(OPTS, |_| op.run_ragged(&plan, &q, &k, &v, &mut o, None))?;
                (t, plan.partition().items.len(), plan_us)
            };
            let kind = if paged { "paged" } else { "ragged" };
            record::emit(&record::Row {
                section: record::Section::Prefill,
                shape: format!("prefill-{kind} {batch}x{qo}/{kv}"),
                variant: label.clone(),
                picked: tile.is_none(),
                median_us: t.median_us,
                bytes: None,
                flops: Some(flops),
                copy_tb_s: None,
                device: gpu.info().name.clone(),
            });
            println!(
                "| {} | {label} | {batch} | {qo} | {kv} | {:.3} | {:.1} | {:.1} | {:.1} | {:.1} | {items} | {plan_us:.0} |",
                if paged { "paged" } else { "ragged" },
                flops / 1e12,
                t.median_us,
                t.p10_us,
                t.p90_us,
                flops / (t.median_us * 1e-6) / 1e12
            );
        }
    }
    append_split_sweep(gpu, heads, opts)?;
    // SmolLM2-135M's attention geometry (9 query / 3 KV heads, D = 64): a batch of prompts.
    println!();
    println!("SmolLM2-135M geometry (Hq 9, Hkv 3, D 64), ragged causal, qo_len = kv_len:");
    println!("| tile | batch | len | median us | TFLOP/s |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let small = HeadConfig::new(9, 3, 64)?;
    for (batch, len) in [(8usize, 512usize), (1, 4096)] {
        let (qrow, krow) = (9 * 64, 3 * 64);
        let pairs = batch * len * (len + 1) / 2;
        let flops = 4.0 * 64.0 * 9.0 * pairs as f64;
        let indptr: Vec<i32> = (0..=batch).map(|b| (b * len) as i32).collect();
        let q = gpu.upload(&pattern(batch * len * qrow, 1))?;
        let k = gpu.upload(&pattern(batch * len * krow, 2))?;
        let v = gpu.upload(&pattern(batch * len * krow, 3))?;
        let mut o = gpu.alloc::<bf16>(batch * len * qrow)?;
        for &tile in PrefillTile::available(64, gpu.info().arch) {
            let mut op = BatchPrefill::new(gpu, small, DType::Bf16, opts)?;
            op.set_tile(Some(tile))?;
            let plan = op.plan_ragged(&indptr, &indptr)?;
            let t = gpu.time_with(OPTS, |_| op.run_ragged(&plan, &q, &k, &v, &mut o, None))?;
            println!(
                "| {tile:?} (auto persistence) | {batch} | {len} | {:.1} | {:.1} |",
                t.median_us,
                flops / (t.median_us * 1e-6) / 1e12
            );
        }
    }
    Ok(())
}

/// The short paged append (64 × 16 / 2048, the shape closest to FlashInfer's fa2) with the
/// split-KV chunk fixed, to see whether splitting the 2048 keys pays on the tiles that serve
/// it (the planner splits only when the batch leaves SMs idle; here 64 requests × 8 KV heads
/// already fill them).
fn append_split_sweep(
    gpu: &Gpu,
    heads: HeadConfig,
    opts: AttentionOptions,
) -> ferrinfer::Result<()> {
    let (batch, qo, kv) = (64usize, 16usize, 2048usize);
    let qrow = heads.num_qo_heads * heads.head_dim;
    let pairs = (qo * (kv - qo) + qo * (qo + 1) / 2) * batch;
    let flops = 4.0 * 128.0 * 32.0 * pairs as f64;
    let qo_indptr: Vec<i32> = (0..=batch).map(|b| (b * qo) as i32).collect();
    let q = gpu.upload(&pattern(batch * qo * qrow, 1))?;
    let mut o = gpu.alloc::<bf16>(batch * qo * qrow)?;
    let (pages, pool) = paged_kv(gpu, batch, kv)?;
    println!();
    println!("Paged append 64 × 16 / 2048 with a fixed split-KV chunk (keys; auto = the planner):");
    println!("| tile | split | median us | TFLOP/s | items |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let tiles: Vec<PrefillTile> = PrefillTile::available(128, gpu.info().arch)
        .iter()
        .copied()
        .filter(|t| matches!(t, PrefillTile::Rows64 | PrefillTile::Rows128Wgmma))
        .collect();
    for tile in tiles {
        for split in [None, Some(1024), Some(512), Some(256)] {
            let mut op = BatchPrefill::new(gpu, heads, DType::Bf16, opts)?;
            op.set_tile(Some(tile))?;
            op.set_fixed_split_size(split);
            let plan = op.plan_paged(&qo_indptr, &pages, pool.config())?;
            let t = gpu.time_with(OPTS, |_| op.run_paged(&plan, &q, &pool, &mut o, None))?;
            println!(
                "| {tile:?} | {} | {:.1} | {:.1} | {} |",
                split.map_or("auto".to_string(), |s| s.to_string()),
                t.median_us,
                flops / (t.median_us * 1e-6) / 1e12,
                plan.partition().items.len()
            );
        }
    }
    Ok(())
}

fn main() {
    ferrinfer_harness::bench_main("prefill", run);
}
