//! fp8 batch decode benchmark at the README's decode shapes: bf16 q/out, D = 128, 32 query
//! heads, 8 KV heads, page size 16, pages in random order; (batch, kv_len) = (1, 4096),
//! (16, 4096), (64, 4096), (128, 2048), (32, 32768), (256, 1024). Per shape, in the same run:
//! bf16 K/V on the default (tensor-core) kernel and on the CUDA-core kernel, then e4m3 and e5m2
//! K/V (`BatchDecode::run_fp8`) on the CUDA-core `decode_fp8_*` kernels and e4m3 on the
//! tensor-core `decode_tc_fp8_*` kernel. Same method as
//! `benches/batch_decode.rs`: CUDA events, 10 warm-up calls, median of 100 (override with
//! `FERRINFER_BENCH_ITERS`), L2 flushed and a 100 µs spin before each call; bytes = K+V read +
//! q read + o written; TB/s and % of the device-to-device copy of the same run. The issue's
//! target: ≥ 1.8× the bf16 decode on the large shapes (half the KV bytes).
use ferrinfer::dtype::KvDtype;
use ferrinfer::fp8::{E4m3, E5m2, Fp8, Fp8Format, KvScales};
use ferrinfer::kv::{BatchPages, KvLayout, KvPool, KvPoolConfig, PoolSize};
use ferrinfer::ops::{BatchDecode, DecodeKernel};
use ferrinfer::runtime::{Discovery, TimeOpts, Timing};
use ferrinfer::{AttentionOptions, DType, DeviceBuffer, Gpu, HeadConfig};
use half::bf16;

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

/// Median time of the fp8 decode of format `F` on kernel family `kind` over a pool filled with
/// `pattern`'s codes.
#[allow(clippy::too_many_arguments)]
fn time_fp8<F: Fp8Format>(
    gpu: &Gpu,
    heads: HeadConfig,
    kv: KvDtype,
    kind: DecodeKernel,
    pages: &BatchPages,
    num_pages: usize,
    pattern: &[bf16],
    q: &DeviceBuffer<bf16>,
    o: &mut DeviceBuffer<bf16>,
    iters: usize,
) -> ferrinfer::Result<Timing> {
    let scales = KvScales { k: 0.01, v: 0.01 };
    let codes: Vec<Fp8<F>> = pattern
        .iter()
        .map(|x| Fp8::quantize(x.to_f32(), scales.k))
        .collect();
    let mut pool = KvPool::<bf16, Fp8<F>>::new_gpu(gpu, CFG, PoolSize::Pages(num_pages))?;
    pool.fill_tiled(&codes, &codes)?;
    let mut op = BatchDecode::new(gpu, heads, DType::Bf16, AttentionOptions::default())?;
    op.set_kv_dtype(kv)?;
    op.set_kernel(kind)?;
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
    println!("\n| batch × kv_len | bf16 tc us | bf16 cuda-core us | e4m3 us | e5m2 us | e4m3 tc us | e4m3 TB/s | e4m3 % copy | bf16 tc / e4m3 |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
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
        let cc = DecodeKernel::CudaCore;
        let e4 = time_fp8::<E4m3>(
            gpu,
            heads,
            KvDtype::E4m3,
            cc,
            p,
            np,
            &pattern,
            &q,
            &mut o,
            it,
        )?;
        let e5 = time_fp8::<E5m2>(
            gpu,
            heads,
            KvDtype::E5m2,
            cc,
            p,
            np,
            &pattern,
            &q,
            &mut o,
            it,
        )?;
        let tc = DecodeKernel::TensorCore;
        let e4tc = time_fp8::<E4m3>(
            gpu,
            heads,
            KvDtype::E4m3,
            tc,
            p,
            np,
            &pattern,
            &q,
            &mut o,
            it,
        )?;
        let bytes = (batch * len * 8 * 128 * 2) as f64 + (2 * n * 2) as f64;
        let tbps = bytes / (e4.median_us * 1e-6) / 1e12;
        println!(
            "| {batch} × {len} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {tbps:.3} | {:.0} | {:.2} |",
            bf[0],
            bf[1],
            e4.median_us,
            e5.median_us,
            e4tc.median_us,
            100.0 * tbps / copy_tbps,
            bf[0] / e4.median_us
        );
    }
    Ok(())
}

fn main() {
    match Gpu::discover(0) {
        Ok(Discovery::Found(g)) => {
            if let Err(e) = run(&g) {
                eprintln!("fp8 decode bench failed: {e}");
                std::process::exit(1);
            }
        }
        Ok(Discovery::NotFound(why)) => {
            println!("fp8 decode bench: skipped: no CUDA device ({why})");
            if std::env::var("FERRINFER_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("fp8 decode bench: GPU discovery failed: {e}");
            std::process::exit(1);
        }
    }
}
