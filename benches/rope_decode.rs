//! RoPE-inside-attention decode benchmark (issue #17 item 2's target: within 3 % of plain
//! attention) at the README's decode shapes: bf16, D = 128, 32 query heads, 8 KV heads, page
//! size 16, pages in random order; (batch, kv_len) = (1, 4096), (16, 4096), (64, 4096),
//! (128, 2048), (32, 32768), (256, 1024). Per shape, in the same run: the default plain decode
//! (tensor cores at group 4), the plain CUDA-core kernel (the one RoPE runs on) and the RoPE
//! kernel (`rotate_half`, θ = 10⁴, full rotary dim — FlashInfer's `ROPE_LLAMA`) with positions
//! offset by 10⁴. Same method as `benches/batch_decode.rs`: CUDA events, 10 warm-up calls,
//! median of 100 (`FERRINFER_BENCH_ITERS`), L2 flushed and a 100 µs spin before each call.
//! Then causal ragged prefill (bf16, D 128, 32/8 heads) at (batch, len) = (1, 4096),
//! (8, 2048), (16, 1024): the plan's own tile, the plain 64-row tile and its `_rope` form.
use ferrinfer::kv::{KvLayout, KvPool, KvPoolConfig, PoolSize};
use ferrinfer::ops::{BatchDecode, BatchPrefill, DecodeKernel, PrefillTile};
use ferrinfer::rope::{RopeConfig, RopeScaling, RopeStyle};
use ferrinfer::runtime::TimeOpts;
use ferrinfer::{AttentionOptions, DType, Gpu, HeadConfig};
use half::bf16;

const CFG: KvPoolConfig = KvPoolConfig {
    num_pages: 0,
    page_size: 16,
    num_kv_heads: 8,
    head_dim: 128,
    layout: KvLayout::Nhd,
};

fn run(gpu: &Gpu) -> ferrinfer::Result<()> {
    let (copy_tbps, ct) = gpu.copy_bandwidth(1 << 30, 20)?;
    println!(
        "device: {}; roofline: D2D copy 1 GiB {:.1} us = {copy_tbps:.3} TB/s (read+write)",
        gpu.info().name,
        ct.median_us
    );
    let heads = HeadConfig::new(32, 8, 128)?;
    let iters: usize = std::env::var("FERRINFER_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let opts = TimeOpts {
        warmup: 10,
        iters,
        flush_bytes: 100 << 20,
        spin_us: 100,
    };
    let rope = RopeConfig {
        theta: 10_000.0,
        rotary_dim: 128,
        scaling: RopeScaling::None,
        style: RopeStyle::Half,
    };
    let pattern: Vec<bf16> = (0u64..(1 << 22))
        .map(|i| bf16::from_f32(((i * 7919) % 2001) as f32 / 1000.0 - 1.0))
        .collect();
    println!("\n| batch × kv_len | plain default us | plain cuda-core us | rope us | rope TB/s | rope % copy | rope / cuda-core | rope / default |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (batch, len) in [
        (1usize, 4096usize),
        (16, 4096),
        (64, 4096),
        (128, 2048),
        (32, 32768),
        (256, 1024),
    ] {
        let (pages, num_pages) =
            ferrinfer_harness::random_page_tables(batch, len, 16, 0x2545_f491 + batch as u64);
        let n = batch * 32 * 128;
        let q = gpu.upload(&pattern[..n])?;
        let mut o = gpu.alloc::<bf16>(n)?;
        let mut pool = KvPool::<bf16>::new_gpu(gpu, CFG, PoolSize::Pages(num_pages))?;
        pool.fill_tiled(&pattern, &pattern)?;
        let mut op = BatchDecode::new(gpu, heads, DType::Bf16, AttentionOptions::default())?;
        let mut t = [0.0f64; 3];
        for (i, step) in ["default", "cuda-core", "rope"].into_iter().enumerate() {
            match step {
                "cuda-core" => op.set_kernel(DecodeKernel::CudaCore)?,
                "rope" => op.set_rope(Some(rope))?,
                _ => {}
            }
            let mut plan = op.plan(&pages, pool.config())?;
            if step == "rope" {
                let offsets = vec![10_000; batch];
                op.plan_into_with_offsets(&pages, pool.config(), &offsets, &mut plan)?;
            }
            t[i] = gpu
                .time_with(opts, |_| op.run(&plan, &q, &pool, &mut o, None))?
                .median_us;
        }
        let bytes = (batch * len * 8 * 128 * 2 * 2) as f64 + (2 * n * 2) as f64;
        let tbps = bytes / (t[2] * 1e-6) / 1e12;
        println!(
            "| {batch} × {len} | {:.1} | {:.1} | {:.1} | {tbps:.3} | {:.0} | {:.3} | {:.3} |",
            t[0],
            t[1],
            t[2],
            100.0 * tbps / copy_tbps,
            t[2] / t[1],
            t[2] / t[0]
        );
    }
    prefill(gpu, heads, rope, &pattern, opts)
}

/// Causal ragged prefill with and without RoPE (same shapes' plan choice beside).
fn prefill(
    gpu: &Gpu,
    heads: HeadConfig,
    rope: RopeConfig,
    pattern: &[bf16],
    opts: TimeOpts,
) -> ferrinfer::Result<()> {
    println!("\n| prefill ragged causal | plan's choice us | 64-row tile us | 64-row rope us | rope / 64-row | rope / plan's |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let causal = AttentionOptions::default().with_causal(true);
    for (batch, len) in [(1usize, 4096usize), (8, 2048), (16, 1024)] {
        let n = batch * len;
        let take = |m: usize, off: usize| -> Vec<bf16> {
            (0..m)
                .map(|i| pattern[(i * 7 + off) % pattern.len()])
                .collect()
        };
        let q = gpu.upload(&take(n * 32 * 128, 1))?;
        let k = gpu.upload(&take(n * 8 * 128, 2))?;
        let v = gpu.upload(&take(n * 8 * 128, 3))?;
        let mut o = gpu.alloc::<bf16>(n * 32 * 128)?;
        let indptr: Vec<i32> = (0..=batch).map(|b| (b * len) as i32).collect();
        let mut t = [0.0f64; 3];
        for (i, (tile, with_rope)) in [
            (None, false),
            (Some(PrefillTile::Rows64), false),
            (None, true),
        ]
        .into_iter()
        .enumerate()
        {
            let mut op = BatchPrefill::new(gpu, heads, DType::Bf16, causal)?;
            op.set_tile(tile)?;
            if with_rope {
                op.set_rope(Some(rope))?;
            }
            let plan = op.plan_ragged(&indptr, &indptr)?;
            t[i] = gpu
                .time_with(opts, |_| op.run_ragged(&plan, &q, &k, &v, &mut o, None))?
                .median_us;
        }
        println!(
            "| {batch} × {len} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} |",
            t[0],
            t[1],
            t[2],
            t[2] / t[1],
            t[2] / t[0]
        );
    }
    Ok(())
}

fn main() {
    ferrinfer_harness::bench_main("rope decode", run);
}
