//! fp8 batch decode benchmark at the README's decode shapes: bf16 q/out, D = 128, 32 query
//! heads, 8 KV heads, page size 16, pages in random order; (batch, kv_len) = (1, 4096),
//! (16, 4096), (64, 4096), (128, 2048), (32, 32768), (256, 1024). Per shape, in the same run:
//! bf16 K/V on the default (tensor-core) kernel and on the CUDA-core kernel, then e4m3 and e5m2
//! K/V (`BatchDecode::run_fp8`) on the CUDA-core `decode_fp8_*` and the tensor-core
//! `decode_tc_fp8_*` kernels. Same method as
//! `benches/batch_decode.rs`: CUDA events, 10 warm-up calls, median of 100 (override with
//! `FERRINFER_BENCH_ITERS`), L2 flushed and a 100 µs spin before each call; bytes = K+V read +
//! q read + o written; TB/s and % of the device-to-device copy of the same run. The issue's
//! target: ≥ 1.8× the bf16 decode on the large shapes (half the KV bytes).
use ferrinfer::dtype::KvDtype;
use ferrinfer::fp8::{E4m3, E5m2, Fp8, Fp8Format, KvScales};
use ferrinfer::kv::{BatchPages, KvLayout, KvPool, KvPoolConfig, PoolSize};
use ferrinfer::ops::{BatchDecode, DecodeKernel};
use ferrinfer::runtime::{TimeOpts, Timing};
use ferrinfer::{AttentionOptions, DType, DeviceBuffer, Float16, Gpu, HeadConfig};
use half::{bf16, f16};

const CFG: KvPoolConfig = KvPoolConfig {
    num_pages: 0,
    page_size: 16,
    num_kv_heads: 8,
    head_dim: 128,
    layout: KvLayout::Nhd,
};

fn opts(iters: usize) -> TimeOpts {
    TimeOpts {
        warmup: 10,
        iters,
        flush_bytes: 100 << 20,
        spin_us: 100,
    }
}

/// Median time of the fp8 decode of format `F` with `T` queries on kernel family `kind` over a
/// pool filled with `pattern`'s codes.
#[allow(clippy::too_many_arguments)]
fn time_fp8<T: Float16, F: Fp8Format>(
    gpu: &Gpu,
    heads: HeadConfig,
    kv: KvDtype,
    kind: DecodeKernel,
    pages: &BatchPages,
    num_pages: usize,
    pattern: &[bf16],
    q: &DeviceBuffer<T>,
    o: &mut DeviceBuffer<T>,
    iters: usize,
    split: Option<usize>,
) -> ferrinfer::Result<Timing> {
    let scales = KvScales { k: 0.01, v: 0.01 };
    let codes: Vec<Fp8<F>> = pattern
        .iter()
        .map(|x| Fp8::quantize(x.to_f32(), scales.k))
        .collect();
    let mut pool = KvPool::<T, Fp8<F>>::new_gpu(gpu, CFG, PoolSize::Pages(num_pages))?;
    pool.fill_tiled(&codes, &codes)?;
    let mut op = BatchDecode::new(gpu, heads, T::DTYPE, AttentionOptions::default())?;
    op.set_kv_dtype(kv)?;
    op.set_kernel(kind)?;
    op.set_fixed_split_size(split);
    let plan = op.plan(pages, pool.config())?;
    gpu.time_with(opts(iters), |_| {
        op.run_fp8(&plan, q, &pool, scales, o, None)
    })
}

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
    let pattern: Vec<bf16> = (0u64..(1 << 22))
        .map(|i| bf16::from_f32(((i * 7919) % 2001) as f32 / 1000.0 - 1.0))
        .collect();
    println!("\n| batch × kv_len | bf16 tc us | bf16 cuda-core us | e4m3 cuda-core us | e5m2 cuda-core us | e4m3 tc us | e5m2 tc us | best fp8 TB/s | best fp8 % copy | bf16 tc / best fp8 |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
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
        // bf16 K/V, both kernel families.
        let mut pool = KvPool::<bf16>::new_gpu(gpu, CFG, PoolSize::Pages(num_pages))?;
        pool.fill_tiled(&pattern, &pattern)?;
        let mut op = BatchDecode::new(gpu, heads, DType::Bf16, AttentionOptions::default())?;
        let mut bf = [0.0; 2];
        for (i, kind) in [DecodeKernel::TensorCore, DecodeKernel::CudaCore]
            .into_iter()
            .enumerate()
        {
            op.set_kernel(kind)?;
            let plan = op.plan(&pages, pool.config())?;
            bf[i] = gpu
                .time_with(opts(iters), |_| op.run(&plan, &q, &pool, &mut o, None))?
                .median_us;
        }
        drop(pool);
        let (p, np, it) = (&pages, num_pages, iters);
        let (cc, tc) = (DecodeKernel::CudaCore, DecodeKernel::TensorCore);
        let mut fp8 = [0.0; 4];
        for (i, kind) in [cc, tc].into_iter().enumerate() {
            let e4 = time_fp8::<bf16, E4m3>(
                gpu,
                heads,
                KvDtype::E4m3,
                kind,
                p,
                np,
                &pattern,
                &q,
                &mut o,
                it,
                None,
            )?;
            let e5 = time_fp8::<bf16, E5m2>(
                gpu,
                heads,
                KvDtype::E5m2,
                kind,
                p,
                np,
                &pattern,
                &q,
                &mut o,
                it,
                None,
            )?;
            fp8[2 * i] = e4.median_us;
            fp8[2 * i + 1] = e5.median_us;
        }
        let best = fp8.iter().copied().fold(f64::INFINITY, f64::min);
        let bytes = (batch * len * 8 * 128 * 2) as f64 + (2 * n * 2) as f64;
        let tbps = bytes / (best * 1e-6) / 1e12;
        println!(
            "| {batch} × {len} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {tbps:.3} | {:.0} | {:.2} |",
            bf[0],
            bf[1],
            fp8[0],
            fp8[1],
            fp8[2],
            fp8[3],
            100.0 * tbps / copy_tbps,
            bf[0] / best
        );
    }
    group_sweep(gpu, &pattern, iters)?;
    split_sweep(gpu, &pattern, iters)
}

/// The tensor-core e4m3 decode (bf16 q, 32/8 heads, D 128) at the planner's split and at fixed
/// split sizes: whether the planner's wave model, tuned on 16-bit K/V, also picks well for fp8.
fn split_sweep(gpu: &Gpu, pattern: &[bf16], iters: usize) -> ferrinfer::Result<()> {
    let sizes = [
        None,
        Some(512),
        Some(1024),
        Some(2048),
        Some(4096),
        Some(usize::MAX),
    ];
    println!("\ne4m3 tc by split size (us; \"none\" never splits):");
    println!("\n| batch × kv_len | plan | 512 | 1024 | 2048 | 4096 | none |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let heads = HeadConfig::new(32, 8, 128)?;
    for (batch, len) in [(16usize, 4096usize), (64, 4096), (128, 2048), (256, 1024)] {
        let (pages, num_pages) =
            ferrinfer_harness::random_page_tables(batch, len, 16, 0x5917 + batch as u64);
        let n = batch * 32 * 128;
        let q = gpu.upload(&pattern[..n])?;
        let mut o = gpu.alloc::<bf16>(n)?;
        let mut row = format!("| {batch} × {len} |");
        for split in sizes {
            let t = time_fp8::<bf16, E4m3>(
                gpu,
                heads,
                KvDtype::E4m3,
                DecodeKernel::TensorCore,
                &pages,
                num_pages,
                pattern,
                &q,
                &mut o,
                iters,
                split,
            )?;
            row += &format!(" {:.1} |", t.median_us);
        }
        println!("{row}");
    }
    Ok(())
}

/// Query groups 1–16 at 64 × 4096 (8 KV heads, D 128): which family fp8 K/V should default to,
/// and what the bf16 queries' extra K conversion (f16 → bf16) costs against f16 queries.
fn group_sweep(gpu: &Gpu, pattern: &[bf16], iters: usize) -> ferrinfer::Result<()> {
    let (batch, len) = (64usize, 4096usize);
    println!("\n64 × 4096, 8 KV heads, D 128, by query group (e4m3 K/V; cuda-core: groups ≤ 8):");
    println!("\n| group | bf16 tc us | bf16 cuda-core us | e4m3 cuda-core us | e4m3 tc us (bf16 q) | e4m3 tc us (f16 q) | bf16 tc / e4m3 tc |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let (pages, num_pages) = ferrinfer_harness::random_page_tables(batch, len, 16, 0x5eed);
    for g in [1usize, 2, 4, 8, 16] {
        let heads = HeadConfig::new(8 * g, 8, 128)?;
        let n = batch * 8 * g * 128;
        let q = gpu.upload(&pattern[..n])?;
        let mut o = gpu.alloc::<bf16>(n)?;
        let qh: Vec<f16> = pattern[..n]
            .iter()
            .map(|x| f16::from_f32(x.to_f32()))
            .collect();
        let qh = gpu.upload(&qh)?;
        let mut oh = gpu.alloc::<f16>(n)?;
        let mut pool = KvPool::<bf16>::new_gpu(gpu, CFG, PoolSize::Pages(num_pages))?;
        pool.fill_tiled(pattern, pattern)?;
        let mut op = BatchDecode::new(gpu, heads, DType::Bf16, AttentionOptions::default())?;
        let mut bf = [f64::NAN; 2];
        for (i, kind) in [DecodeKernel::TensorCore, DecodeKernel::CudaCore]
            .into_iter()
            .enumerate()
        {
            if kind == DecodeKernel::CudaCore && g > 8 {
                continue;
            }
            op.set_kernel(kind)?;
            let plan = op.plan(&pages, pool.config())?;
            bf[i] = gpu
                .time_with(opts(iters), |_| op.run(&plan, &q, &pool, &mut o, None))?
                .median_us;
        }
        drop(pool);
        let (p, np, it) = (&pages, num_pages, iters);
        let (cc, tc, kv) = (
            DecodeKernel::CudaCore,
            DecodeKernel::TensorCore,
            KvDtype::E4m3,
        );
        let e4cc = if g <= 8 {
            time_fp8::<bf16, E4m3>(gpu, heads, kv, cc, p, np, pattern, &q, &mut o, it, None)?
                .median_us
        } else {
            f64::NAN
        };
        let e4tc =
            time_fp8::<bf16, E4m3>(gpu, heads, kv, tc, p, np, pattern, &q, &mut o, it, None)?;
        let e4tch =
            time_fp8::<f16, E4m3>(gpu, heads, kv, tc, p, np, pattern, &qh, &mut oh, it, None)?;
        println!(
            "| {g} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} |",
            bf[0],
            bf[1],
            e4cc,
            e4tc.median_us,
            e4tch.median_us,
            bf[0] / e4tc.median_us
        );
    }
    Ok(())
}

fn main() {
    ferrinfer_harness::bench_main("fp8 decode", run);
}
