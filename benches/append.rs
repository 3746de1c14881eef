//! KV-append benchmark (FlashInfer's `append_paged_kv_cache` shapes): a decode step (256
//! sequences × 1 token, 1023 cached each) and a prefill chunk (8 sequences × 2048 tokens into
//! empty sequences); D = 128, 8 KV heads, page size 16, bf16, NHD, pages in random order.
//! Metadata is uploaded once outside the timing (as FlashInfer computes `batch_indices` /
//! `positions` once); each timed call is one kernel launch. Cold L2 (flushed), 100 µs spin
//! before each call, 10 warm-up calls, median of 100. Bytes = 2 × tokens × 8 × 128 × 2 (K,V)
//! × 2 B (input read + cache written); the copy roofline is measured in the same run.
use ferrinfer::kv::{AppendMeta, BatchPages, KvLayout, KvPool, KvPoolConfig, PoolSize, RowStrides};
use ferrinfer::runtime::{Discovery, TimeOpts};
use ferrinfer::Gpu;
use ferrinfer_harness::record;
use half::bf16;

struct Shape {
    name: &'static str,
    seqs: usize,
    tokens: usize,
    cached: usize,
}

fn bench(
    gpu: &Gpu,
    s: &Shape,
    copy_tbps: f64,
    rows_per_thread: usize,
    streaming: bool,
) -> ferrinfer::Result<(f64, f64)> {
    let (heads, d, p) = (8usize, 128usize, 16usize);
    let len = s.cached + s.tokens;
    let pages_per = len.div_ceil(p);
    let num_pages = s.seqs * pages_per;
    let cfg = KvPoolConfig {
        num_pages: 0,
        page_size: p,
        num_kv_heads: heads,
        head_dim: d,
        layout: KvLayout::Nhd,
    };
    let mut pool = KvPool::<bf16>::new_gpu(gpu, cfg, PoolSize::Pages(num_pages))?;
    pool.set_append_variant(rows_per_thread, streaming)?;
    let mut ids: Vec<i32> = (0..num_pages as i32).collect();
    ferrinfer_harness::shuffle_pages(&mut ids, 0x9e37_79b9_7f4a_7c15);
    let pages = BatchPages {
        kv_indptr: (0..=s.seqs).map(|b| (b * pages_per) as i32).collect(),
        kv_indices: ids,
        kv_last_page_len: vec![((len - 1) % p + 1) as i32; s.seqs],
    };
    let mut bi = Vec::new();
    let mut pos = Vec::new();
    for b in 0..s.seqs {
        for t in 0..s.tokens {
            bi.push(b as i32);
            pos.push((s.cached + t) as i32);
        }
    }
    let meta = pool.upload_append_meta(&AppendMeta {
        batch_indices: &bi,
        positions: &pos,
        pages: &pages,
    })?;
    let n = s.seqs * s.tokens * heads * d;
    let host: Vec<bf16> = (0..n)
        .map(|i| bf16::from_f32(((i * 7919) % 1000) as f32 / 500.0 - 1.0))
        .collect();
    let k = gpu.upload(&host)?;
    let v = gpu.upload(&host)?;
    let rs = RowStrides::contiguous(heads, d);
    let t = gpu.time_with(
        TimeOpts {
            warmup: 10,
            iters: 100,
            flush_bytes: 100 << 20,
            spin_us: 100,
        },
        |_| pool.append_uploaded(&meta, &k, rs, &v, rs),
    )?;
    let bytes = (2 * n * 2 * 2) as f64;
    let gbps = bytes / (t.median_us * 1e-6) / 1e9;
    record::emit(&record::Row {
        section: record::Section::Append,
        shape: format!("append {}x{}", s.seqs, s.tokens),
        variant: format!("{rows_per_thread} rows, streaming {streaming}"),
        // The pool's default: one row per thread, ordinary stores (run first below).
        picked: rows_per_thread == 1 && !streaming,
        median_us: t.median_us,
        bytes: Some(bytes),
        flops: None,
        copy_tb_s: None,
        device: gpu.info().name.clone(),
    });
    println!(
        "| {} ({}{}) | {} x {} | {} | {:.1} | {:.2} | {:.2} | {:.0} | {:.0} |",
        s.name,
        if rows_per_thread > 100 {
            format!("cp.async, {} rows/thread", rows_per_thread - 100)
        } else {
            format!("{rows_per_thread} row(s)/thread")
        },
        if streaming { ", .cs stores" } else { "" },
        s.seqs,
        s.tokens,
        s.cached,
        bytes / (1 << 20) as f64,
        t.median_us,
        t.p90_us,
        gbps,
        100.0 * gbps / (copy_tbps * 1e3)
    );
    Ok((t.median_us, gbps))
}

fn main() {
    let gpu = match Gpu::discover(0) {
        Ok(Discovery::Found(g)) => g,
        Ok(Discovery::NotFound(why)) => {
            println!("append bench: skipped: no CUDA device ({why})");
            if std::env::var("FERRINFER_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                std::process::exit(1);
            }
            return;
        }
        Err(e) => {
            eprintln!("append bench: GPU discovery failed: {e}");
            std::process::exit(1);
        }
    };
    let run = || -> ferrinfer::Result<()> {
        let (copy_tbps, ct) = gpu.copy_bandwidth(1 << 30, 20)?;
        println!(
            "device: {}; roofline: D2D copy 1 GiB {:.1} us = {copy_tbps:.3} TB/s (read+write)",
            gpu.info().name,
            ct.median_us
        );
        record::emit_copy(&gpu.info().name, copy_tbps, ct.median_us);
        println!(
            "\n| shape | seqs x tokens | cached | MiB moved | median us | p90 us | GB/s | % copy |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        // FERRINFER_BENCH_ONLY=prefill|decode runs one shape (profiling runs).
        let only = std::env::var("FERRINFER_BENCH_ONLY").unwrap_or_default();
        let decode = Shape {
            name: "decode step",
            seqs: 256,
            tokens: 1,
            cached: 1023,
        };
        let prefill = Shape {
            name: "prefill chunk",
            seqs: 8,
            tokens: 2048,
            cached: 0,
        };
        // The default (1 row per thread) first, then the tuning variants.
        for (rows, streaming) in [
            (1, false),
            (102, false),
            (104, false),
            (1, true),
            (2, false),
            (4, false),
        ] {
            if !only.starts_with("prefill") {
                bench(&gpu, &decode, copy_tbps, rows, streaming)?;
            }
            if !only.starts_with("decode") {
                bench(&gpu, &prefill, copy_tbps, rows, streaming)?;
            }
        }
        Ok(())
    };
    if let Err(e) = run() {
        eprintln!("append bench failed: {e}");
        std::process::exit(1);
    }
}
