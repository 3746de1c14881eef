//! Single-request decode benchmark: median GPU time of one call (CUDA events, 10 warm-up calls,
//! median of 200, L2 flushed and a 100 µs spin queued before each call so host launch gaps stay
//! out — FlashInfer's benchmark method), KV bytes read, achieved TB/s, and the device-to-device
//! copy roofline measured in the same run.
//!
//! Run: `cargo bench --bench decode` (or the stripped executable from gpu-bundle/ on the GPU
//! machine). `--json PATH` also writes the rows as JSON.
use std::io::Write;

use ferrinfer::ops::single_decode::SingleDecode;
use ferrinfer::runtime::{Discovery, TimeOpts};
use ferrinfer::{AttentionOptions, DType, Float16, Gpu, HeadConfig};
use half::{bf16, f16};

struct Row {
    name: String,
    dtype: DType,
    heads: HeadConfig,
    kv_len: usize,
    chunks: usize,
    median_us: f64,
    p10_us: f64,
    p90_us: f64,
    bytes: f64,
    tbps: f64,
}

fn bench_one<T: Float16>(
    gpu: &Gpu,
    name: &str,
    heads: HeadConfig,
    kv_len: usize,
    iters: usize,
) -> ferrinfer::Result<Row> {
    let d = heads.head_dim;
    let kv_elems = kv_len * heads.num_kv_heads * d;
    let kv_bytes = 2 * kv_elems * 2;
    // Two K/V copies alternate, and the L2 is flushed before every timed call (cold L2, as
    // FlashInfer's benchmark measures).
    let copies = 2;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        T::from_f32(((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
    };
    let host: Vec<T> = (0..kv_elems).map(|_| next()).collect();
    let mut ks = Vec::new();
    let mut vs = Vec::new();
    for _ in 0..copies {
        ks.push(gpu.upload(&host)?);
        vs.push(gpu.upload(&host)?);
    }
    let q = gpu.upload(
        &(0..heads.num_qo_heads * d)
            .map(|_| next())
            .collect::<Vec<T>>(),
    )?;
    let mut o = gpu.alloc::<T>(heads.num_qo_heads * d)?;
    let mut lse = gpu.alloc::<f32>(heads.num_qo_heads)?;
    let mut op = SingleDecode::new(gpu, heads, T::DTYPE, AttentionOptions::default())?;
    let opts = TimeOpts {
        warmup: 10,
        iters,
        flush_bytes: 100 << 20,
        spin_us: 100,
    };
    let t = gpu.time_with(opts, |i| {
        let c = i % copies;
        op.run(&q, &ks[c], &vs[c], kv_len, &mut o, Some(&mut lse))
    })?;
    let chunks = op.last_plan().map_or(1, |p| p.num_items());
    let bytes = (kv_bytes + 2 * heads.num_qo_heads * d * 2) as f64;
    Ok(Row {
        name: name.to_string(),
        dtype: T::DTYPE,
        heads,
        kv_len,
        chunks,
        median_us: t.median_us,
        p10_us: t.p10_us,
        p90_us: t.p90_us,
        bytes,
        tbps: bytes / (t.median_us * 1e-6) / 1e12,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let json = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let gpu = match Gpu::discover(0) {
        Ok(Discovery::Found(g)) => g,
        Ok(Discovery::NotFound(why)) => {
            println!("decode bench: skipped: no CUDA device ({why})");
            if std::env::var("FERRINFER_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                std::process::exit(1);
            }
            return;
        }
        Err(e) => {
            eprintln!("decode bench: GPU discovery failed: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = run(&gpu, json) {
        eprintln!("decode bench failed: {e}");
        std::process::exit(1);
    }
}

fn run(gpu: &Gpu, json: Option<String>) -> ferrinfer::Result<()> {
    let info = gpu.info();
    println!(
        "device: {} (cc {}.{}, {} SMs), kernels: {} from {:?}, module load {:.1} ms",
        info.name,
        info.compute_capability.0,
        info.compute_capability.1,
        info.sm_count,
        info.arch.name(),
        info.image,
        info.module_load.as_secs_f64() * 1e3
    );
    let (copy_tbps, copy_t) = gpu.copy_bandwidth(1 << 30, 20)?;
    println!(
        "roofline: D2D copy 1 GiB: {:.1} us, {copy_tbps:.3} TB/s (read+write)",
        copy_t.median_us
    );

    let gqa = HeadConfig::new(32, 8, 128)?;
    let mha = HeadConfig::new(32, 32, 128)?;
    let smol = HeadConfig::new(9, 3, 64)?;
    let mut rows = Vec::new();
    for &l in &[4096usize, 16384, 32768, 131_072] {
        rows.push(bench_one::<bf16>(gpu, "gqa32/8", gqa, l, 200)?);
    }
    for &l in &[4096usize, 32768] {
        rows.push(bench_one::<f16>(gpu, "mha32", mha, l, 200)?);
    }
    for &l in &[4096usize, 32768] {
        rows.push(bench_one::<bf16>(gpu, "smollm2-9/3", smol, l, 200)?);
    }

    println!("\n| shape | dtype | Hq/Hkv/D | kv_len | chunks | median us | p10 | p90 | KV+q+o MB | TB/s | % copy |");
    println!("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in &rows {
        println!(
            "| {} | {} | {}/{}/{} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.3} | {:.0} |",
            r.name,
            r.dtype,
            r.heads.num_qo_heads,
            r.heads.num_kv_heads,
            r.heads.head_dim,
            r.kv_len,
            r.chunks,
            r.median_us,
            r.p10_us,
            r.p90_us,
            r.bytes / 1e6,
            r.tbps,
            100.0 * r.tbps / copy_tbps
        );
    }
    if let Some(path) = json {
        let mut s = format!(
            "{{\"device\":\"{}\",\"copy_tbps\":{copy_tbps:.4},\"rows\":[",
            info.name
        );
        for (i, r) in rows.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&format!(
                "{{\"shape\":\"{}\",\"dtype\":\"{}\",\"hq\":{},\"hkv\":{},\"d\":{},\"kv_len\":{},\"chunks\":{},\"median_us\":{:.3},\"p10_us\":{:.3},\"p90_us\":{:.3},\"bytes\":{},\"tbps\":{:.4}}}",
                r.name, r.dtype, r.heads.num_qo_heads, r.heads.num_kv_heads, r.heads.head_dim, r.kv_len, r.chunks, r.median_us, r.p10_us, r.p90_us, r.bytes, r.tbps
            ));
        }
        s.push_str("]}\n");
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(s.as_bytes()))
            .map_err(|e| ferrinfer::Error::invalid("bench", "json path", e))?;
    }
    Ok(())
}
