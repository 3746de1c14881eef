//! Batch decode benchmark, the shapes: bf16, D = 128, 32 query heads, 8 KV heads, page
//! size 16, pages in random order; (batch, kv_len) = (1, 4096), (16, 4096), (64, 4096),
//! (128, 2048), (32, 32768), (256, 1024). Per shape: median GPU time of one `run` (CUDA events,
//! 10 warm-up calls, median of 100, L2 flushed and a 100 µs spin before each call — FlashInfer's
//! benchmark method), bytes = K+V read + q read + o written, TB/s and % of the device-to-device
//! copy measured in the same run; launch overhead (host time to enqueue one `run`). The
//! planner's host time: `benches/planners.rs`.
use std::time::Instant;

use ferrinfer::kv::{KvLayout, KvPool, KvPoolConfig, PoolSize};
use ferrinfer::ops::{BatchDecode, DecodeKernel};
use ferrinfer::runtime::TimeOpts;
use ferrinfer::{AttentionOptions, DType, Gpu, HeadConfig};
use ferrinfer_harness::record;
use half::bf16;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn run(gpu: &Gpu) -> ferrinfer::Result<()> {
    let (copy_tbps, ct) = gpu.copy_bandwidth(1 << 30, 20)?;
    println!(
        "device: {}; roofline: D2D copy 1 GiB {:.1} us = {copy_tbps:.3} TB/s (read+write)",
        gpu.info().name,
        ct.median_us
    );
    record::emit_copy(&gpu.info().name, copy_tbps, ct.median_us);
    let heads = HeadConfig::new(32, 8, 128)?;
    let mut op = BatchDecode::new(gpu, heads, DType::Bf16, AttentionOptions::default())?;
    let default_kind = op.kernel_kind();
    println!("default kernel for group 4: {:?}", default_kind);
    println!("\n| kernel | batch | kv_len | KV MiB | items | median us | p10 | p90 | TB/s | % copy | host run() us |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let pattern: Vec<bf16> = (0u64..(1 << 22))
        .map(|i| bf16::from_f32(((i * 7919) % 2001) as f32 / 1000.0 - 1.0))
        .collect();
    // FERRINFER_BENCH_SHAPES="1x4096,16x4096" limits the shapes (profiling runs).
    let shapes: Vec<(usize, usize)> = match std::env::var("FERRINFER_BENCH_SHAPES") {
        Ok(v) => v
            .split(',')
            .filter_map(|s| {
                let (b, l) = s.split_once('x')?;
                Some((b.trim().parse().ok()?, l.trim().parse().ok()?))
            })
            .collect(),
        Err(_) => vec![
            (1, 4096),
            (16, 4096),
            (64, 4096),
            (128, 2048),
            (32, 32768),
            (256, 1024),
        ],
    };
    let iters: usize = std::env::var("FERRINFER_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    // (kernel, fixed split): the planner's choice for both families, then the tensor-core
    // kernel with splitting off, to check the planner's wave model.
    for (kind, fixed) in [
        (DecodeKernel::TensorCore, None),
        (DecodeKernel::CudaCore, None),
        (DecodeKernel::TensorCore, Some(usize::MAX)),
    ] {
        op.set_kernel(kind)?;
        op.set_fixed_split_size(fixed);
        for &(batch, len) in &shapes {
            let (pages, num_pages) =
                ferrinfer_harness::random_page_tables(batch, len, 16, 0x2545_f491 + batch as u64);
            let cfg = KvPoolConfig {
                num_pages: 0,
                page_size: 16,
                num_kv_heads: 8,
                head_dim: 128,
                layout: KvLayout::Nhd,
            };
            let mut pool = KvPool::<bf16>::new_gpu(gpu, cfg, PoolSize::Pages(num_pages))?;
            pool.fill_tiled(
                &pattern,
                &pattern[1..]
                    .iter()
                    .chain(&pattern[..1])
                    .copied()
                    .collect::<Vec<_>>(),
            )?;
            let plan = op.plan(&pages, pool.config())?;
            let n = batch * 32 * 128;
            let q = gpu.upload(&pattern[..n])?;
            let mut o = gpu.alloc::<bf16>(n)?;
            let mut lse = gpu.alloc::<f32>(batch * 32)?;
            let t = gpu.time_with(
                TimeOpts {
                    warmup: 10,
                    iters,
                    flush_bytes: 100 << 20,
                    spin_us: 100,
                },
                |_| op.run(&plan, &q, &pool, &mut o, Some(&mut lse)),
            )?;
            // Host time to enqueue one run (launch overhead), median of 50.
            let mut host = Vec::new();
            for _ in 0..50 {
                let t0 = Instant::now();
                op.run(&plan, &q, &pool, &mut o, Some(&mut lse))?;
                host.push(t0.elapsed().as_secs_f64() * 1e6);
            }
            gpu.synchronize()?;
            let kv = (batch * len * 8 * 128 * 2 * 2) as f64;
            let bytes = kv + (2 * n * 2) as f64;
            let tbps = bytes / (t.median_us * 1e-6) / 1e12;
            let variant = format!(
                "{}{}",
                op.kernel_name(),
                if fixed.is_some() { " (no split)" } else { "" }
            );
            record::emit(&record::Row {
                section: record::Section::Decode,
                shape: format!("decode {batch}x{len}"),
                variant,
                picked: kind == default_kind && fixed.is_none(),
                median_us: t.median_us,
                bytes: Some(bytes),
                flops: None,
                copy_tb_s: None,
                device: gpu.info().name.clone(),
            });
            println!(
            "| {}{} | {batch} | {len} | {:.0} | {} | {:.1} | {:.1} | {:.1} | {:.3} | {:.0} | {:.1} |",
            op.kernel_name(),
            if fixed.is_some() { " (no split)" } else { "" },
            kv / (1 << 20) as f64,
            plan.partition().num_items(),
            t.median_us,
            t.p10_us,
            t.p90_us,
            tbps,
            100.0 * tbps / copy_tbps,
            median(host)
        );
        }
    }
    op.set_kernel(default_kind)?;
    op.set_fixed_split_size(None);

    // Where the tensor-core path starts to win: groups 1–4 at 64 × 4096 (8 KV heads, D = 128).
    println!("\n| group | kernel | median us | TB/s |");
    println!("| ---: | --- | ---: | ---: |");
    let (pages, num_pages) = ferrinfer_harness::random_page_tables(64, 4096, 16, 3);
    let cfg = KvPoolConfig {
        num_pages: 0,
        page_size: 16,
        num_kv_heads: 8,
        head_dim: 128,
        layout: KvLayout::Nhd,
    };
    let mut pool = KvPool::<bf16>::new_gpu(gpu, cfg, PoolSize::Pages(num_pages))?;
    pool.fill_tiled(&pattern, &pattern)?;
    for g in [1usize, 2, 3, 4] {
        let heads = HeadConfig::new(8 * g, 8, 128)?;
        let mut op = BatchDecode::new(gpu, heads, DType::Bf16, AttentionOptions::default())?;
        let n = 64 * 8 * g * 128;
        let q = gpu.upload(&pattern[..n])?;
        let mut o = gpu.alloc::<bf16>(n)?;
        for kind in [DecodeKernel::CudaCore, DecodeKernel::TensorCore] {
            op.set_kernel(kind)?;
            let plan = op.plan(&pages, pool.config())?;
            let t = gpu.time_with(
                TimeOpts {
                    warmup: 10,
                    iters: 50,
                    flush_bytes: 100 << 20,
                    spin_us: 100,
                },
                |_| op.run(&plan, &q, &pool, &mut o, None),
            )?;
            let bytes = (64 * 4096 * 8 * 128 * 2 * 2 + 2 * n * 2) as f64;
            println!(
                "| {g} | {} | {:.1} | {:.3} |",
                op.kernel_name(),
                t.median_us,
                bytes / (t.median_us * 1e-6) / 1e12
            );
        }
    }
    Ok(())
}

fn main() {
    ferrinfer_harness::bench_main("batch decode", run);
}
