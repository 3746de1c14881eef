//! Single-request causal prefill benchmark (bf16, D = 128, 32 query / 8 KV heads): median GPU
//! time of one call (CUDA events, L2 flushed, 100 µs spin, 5 warm-up calls, median of 30),
//! TFLOP/s with FLOPs = 4 · D · Hq · L(L+1)/2 (the causal (q, k) pairs incl. the diagonal, two
//! GEMMs of 2 FLOPs each — FlashInfer's benchmark formula).
use ferrinfer::ops::SinglePrefill;
use ferrinfer::runtime::{Discovery, TimeOpts};
use ferrinfer::{AttentionOptions, DType, Gpu, HeadConfig};
use half::bf16;

fn run(gpu: &Gpu) -> ferrinfer::Result<()> {
    let heads = HeadConfig::new(32, 8, 128)?;
    let op = SinglePrefill::new(
        gpu,
        heads,
        DType::Bf16,
        AttentionOptions::default().with_causal(true),
    )?;
    println!("| len | median us | p10 | p90 | TFLOP/s |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for &len in &[4096usize, 16384] {
        let nq = len * 32 * 128;
        let nkv = len * 8 * 128;
        let host: Vec<bf16> = (0..nq)
            .map(|i| bf16::from_f32(((i * 7919) % 2001) as f32 / 1000.0 - 1.0))
            .collect();
        let q = gpu.upload(&host)?;
        let k = gpu.upload(&host[..nkv])?;
        let v = gpu.upload(&host[nkv..2 * nkv])?;
        let mut o = gpu.alloc::<bf16>(nq)?;
        let t = gpu.time_with(
            TimeOpts {
                warmup: 5,
                iters: 30,
                flush_bytes: 100 << 20,
                spin_us: 100,
            },
            |_| op.run(&q, &k, &v, len, len, &mut o, None),
        )?;
        let flops = 4.0 * 128.0 * 32.0 * (len as f64) * (len as f64 + 1.0) / 2.0;
        println!(
            "| {len} | {:.1} | {:.1} | {:.1} | {:.1} |",
            t.median_us,
            t.p10_us,
            t.p90_us,
            flops / (t.median_us * 1e-6) / 1e12
        );
    }
    Ok(())
}

fn main() {
    match Gpu::discover(0) {
        Ok(Discovery::Found(g)) => {
            if let Err(e) = run(&g) {
                eprintln!("prefill bench failed: {e}");
                std::process::exit(1);
            }
        }
        Ok(Discovery::NotFound(why)) => {
            println!("prefill bench: skipped: no CUDA device ({why})");
            if std::env::var("FERRINFER_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("prefill bench: GPU discovery failed: {e}");
            std::process::exit(1);
        }
    }
}
