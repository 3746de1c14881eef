//! fp8 prefill benchmark: bf16 q/out, D = 128, 32 query / 8 KV heads, causal, paged (page 16,
//! random page order) at the prefill bench's paged shapes. Per shape, in the same run: bf16 K/V
//! on the 64-row tile (the tile the fp8 kernels use) and on the plan's choice, then e4m3 and
//! e5m2 K/V (`BatchPrefill::run_paged_fp8`, the 64-row `_fp8` kernels). Same method as
//! `benches/prefill.rs`: CUDA events, 5 warm-up calls, median of 50, L2 flushed and a 100 µs
//! spin before each call. Prefill is compute-bound at these shapes, so fp8 is expected to save
//! little time here (it halves the cache's bytes, not the products).
use ferrinfer::fp8::{E4m3, E5m2, Fp8, Fp8Format, KvScales};
use ferrinfer::kv::{BatchPages, KvLayout, KvPool, KvPoolConfig, PoolSize};
use ferrinfer::ops::{BatchPrefill, PrefillTile};
use ferrinfer::runtime::TimeOpts;
use ferrinfer::{AttentionOptions, DType, DeviceBuffer, Gpu, HeadConfig};
use half::bf16;

const OPTS: TimeOpts = TimeOpts {
    warmup: 5,
    iters: 50,
    flush_bytes: 100 << 20,
    spin_us: 100,
};

const CFG: KvPoolConfig = KvPoolConfig {
    num_pages: 0,
    page_size: 16,
    num_kv_heads: 8,
    head_dim: 128,
    layout: KvLayout::Nhd,
};

fn pattern(n: usize, salt: usize) -> Vec<bf16> {
    (0..n)
        .map(|i| bf16::from_f32((((i + salt) * 7919) % 2001) as f32 / 1000.0 - 1.0))
        .collect()
}

/// Median time of the fp8 prefill of format `F` over a pool of the pattern's codes.
#[allow(clippy::too_many_arguments)]
fn time_fp8<F: Fp8Format>(
    gpu: &Gpu,
    heads: HeadConfig,
    opts: AttentionOptions,
    qo_indptr: &[i32],
    pages: &BatchPages,
    num_pages: usize,
    q: &DeviceBuffer<bf16>,
    o: &mut DeviceBuffer<bf16>,
) -> ferrinfer::Result<f64> {
    let scales = KvScales { k: 0.01, v: 0.01 };
    let codes = |salt| -> Vec<Fp8<F>> {
        pattern(4096 * 3, salt)
            .iter()
            .map(|x| Fp8::quantize(x.to_f32(), 0.01))
            .collect()
    };
    let mut pool = KvPool::<bf16, Fp8<F>>::new_gpu(gpu, CFG, PoolSize::Pages(num_pages))?;
    pool.fill_tiled(&codes(2), &codes(3))?;
    let mut op = BatchPrefill::new(gpu, heads, DType::Bf16, opts)?;
    op.set_kv_dtype(<Fp8<F> as ferrinfer::dtype::KvElem>::KV_DTYPE)?;
    let plan = op.plan_paged(qo_indptr, pages, pool.config())?;
    Ok(gpu
        .time_with(OPTS, |_| op.run_paged_fp8(&plan, q, &pool, scales, o, None))?
        .median_us)
}

fn run(gpu: &Gpu) -> ferrinfer::Result<()> {
    println!("device: {}", gpu.info().name);
    let heads = HeadConfig::new(32, 8, 128)?;
    let opts = AttentionOptions::default().with_causal(true);
    let qrow = 32 * 128;
    println!("\n| batch × qo / kv | bf16 64-row us | bf16 plan's choice us | e4m3 64-row us | e5m2 64-row us | e4m3 TFLOP/s | e4m3 / bf16 64-row |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (batch, qo, kv) in [
        (1usize, 4096usize, 4096usize),
        (8, 2048, 2048),
        (16, 1024, 1024),
        (8, 512, 4096),
        (64, 16, 2048),
    ] {
        let pairs = (qo * (kv - qo) + qo * (qo + 1) / 2) * batch;
        let flops = 4.0 * 128.0 * 32.0 * pairs as f64;
        let qo_indptr: Vec<i32> = (0..=batch).map(|b| (b * qo) as i32).collect();
        let q = gpu.upload(&pattern(batch * qo * qrow, 1))?;
        let mut o = gpu.alloc::<bf16>(batch * qo * qrow)?;
        let (pages, num_pages) =
            ferrinfer_harness::random_page_tables(batch, kv, 16, 0x9e37 + batch as u64);
        let mut pool = KvPool::<bf16>::new_gpu(gpu, CFG, PoolSize::Pages(num_pages))?;
        pool.fill_tiled(&pattern(4096 * 3, 2), &pattern(4096 * 3, 3))?;
        let mut bf = [0.0; 2];
        for (i, tile) in [Some(PrefillTile::Rows64), None].into_iter().enumerate() {
            let mut op = BatchPrefill::new(gpu, heads, DType::Bf16, opts)?;
            op.set_tile(tile)?;
            let plan = op.plan_paged(&qo_indptr, &pages, pool.config())?;
            bf[i] = gpu
                .time_with(OPTS, |_| op.run_paged(&plan, &q, &pool, &mut o, None))?
                .median_us;
        }
        drop(pool);
        let (ix, np) = (&qo_indptr, num_pages);
        let e4 = time_fp8::<E4m3>(gpu, heads, opts, ix, &pages, np, &q, &mut o)?;
        let e5 = time_fp8::<E5m2>(gpu, heads, opts, ix, &pages, np, &q, &mut o)?;
        println!(
            "| {batch} × {qo} / {kv} | {:.1} | {:.1} | {e4:.1} | {e5:.1} | {:.1} | {:.2} |",
            bf[0],
            bf[1],
            flops / (e4 * 1e-6) / 1e12,
            e4 / bf[0]
        );
    }
    Ok(())
}

fn main() {
    ferrinfer_harness::bench_main("fp8 prefill", run);
}
