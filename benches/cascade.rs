//! Cascade benchmark, issue #17's shape: 64 requests sharing a 4096-token prefix, each with 256
//! tokens of its own; bf16, D = 128, 32 query / 8 KV heads, page size 16, NHD, pages in random
//! order; one query token per request (a decode step) and 16 (a short append), causal. Then the
//! engine's model geometry (SmolLM2-135M: D = 64, 9 query / 3 KV heads) with issue #19's shared
//! system prompt: 64 requests × (1024 shared + 256 own) tokens — whether a cascade pays there.
//!
//! Per row: median GPU time of one `run` (CUDA events, 5 warm-up calls, median of 50, L2
//! flushed and a 100 µs spin before each call — the method of every bench here), plan excluded:
//! - `cascade`: two levels (the prefix once for all 64 × qo queries, non-causal; each request's
//!   256 tokens, causal) and one state merge;
//! - `decode` / `prefill`, `prefix pages shared`: batch decode (qo = 1) or batch prefill over
//!   each request's full 4352-token context, the 256 prefix pages in every request's list (as
//!   a prefix cache shares them: the 16 MiB prefix can stay in L2 between requests);
//! - the same, `prefix copied`: every request has its own copy of the prefix (1.1 GiB of KV).
//!
//! `benches/flashinfer_cascade.py` times FlashInfer's wrappers on the same shapes.
use ferrinfer::kv::{BatchPages, KvLayout, KvPool, KvPoolConfig, PoolSize};
use ferrinfer::ops::{BatchDecode, BatchPrefill, CascadeAttention};
use ferrinfer::plan::CascadeLevel;
use ferrinfer::runtime::{TimeOpts, Timing};
use ferrinfer::{AttentionOptions, DType, Gpu, HeadConfig};
use half::bf16;

const PAGE: usize = 16;

/// One benchmarked geometry.
struct Shape {
    name: &'static str,
    batch: usize,
    prefix: usize,
    own: usize,
    q_heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

const SHAPES: [Shape; 2] = [
    Shape {
        name: "issue #17's shape",
        batch: 64,
        prefix: 4096,
        own: 256,
        q_heads: 32,
        kv_heads: 8,
        head_dim: 128,
    },
    // The engine's model with issue #19's shared system prompt: does a cascade pay there?
    Shape {
        name: "SmolLM2-135M geometry",
        batch: 64,
        prefix: 1024,
        own: 256,
        q_heads: 9,
        kv_heads: 3,
        head_dim: 64,
    },
];

const OPTS: TimeOpts = TimeOpts {
    warmup: 5,
    iters: 50,
    flush_bytes: 100 << 20,
    spin_us: 100,
};

fn pattern(n: usize, salt: usize) -> Vec<bf16> {
    (0..n)
        .map(|i| bf16::from_f32((((i + salt) * 7919) % 2001) as f32 / 1000.0 - 1.0))
        .collect()
}

/// Page tables of `lens[b]`-page sequences over ids `ids` (consumed in order).
fn tables(lens: &[usize], ids: &mut impl Iterator<Item = i32>) -> BatchPages {
    let mut t = BatchPages {
        kv_indptr: vec![0],
        ..Default::default()
    };
    for &n in lens {
        t.kv_indices.extend(ids.take(n));
        t.kv_indptr.push(t.kv_indices.len() as i32);
        t.kv_last_page_len.push(PAGE as i32);
    }
    t
}

/// Request `b`'s full context: `prefix[b]`'s pages then `own`'s entry `b`.
fn concat(prefix: &BatchPages, per_request_prefix: bool, own: &BatchPages) -> BatchPages {
    let mut t = BatchPages {
        kv_indptr: vec![0],
        ..Default::default()
    };
    for b in 0..own.batch_size() {
        let p = if per_request_prefix { b } else { 0 };
        let r = |x: &BatchPages, i: usize| x.kv_indptr[i] as usize..x.kv_indptr[i + 1] as usize;
        t.kv_indices
            .extend_from_slice(&prefix.kv_indices[r(prefix, p)]);
        t.kv_indices.extend_from_slice(&own.kv_indices[r(own, b)]);
        t.kv_indptr.push(t.kv_indices.len() as i32);
        t.kv_last_page_len.push(own.kv_last_page_len[b]);
    }
    t
}

/// One table row; `cascade_us`: the cascade's time, for the speed-up of the cascade over this.
fn row(what: &str, qo: usize, t: &Timing, cascade_us: Option<f64>) {
    let speedup = cascade_us.map_or(String::new(), |c| format!("{:.2}×", t.median_us / c));
    println!(
        "| {what} | {qo} | {:.1} | {:.1} | {:.1} | {speedup} |",
        t.median_us, t.p10_us, t.p90_us
    );
}

fn run(gpu: &Gpu, s: &Shape) -> ferrinfer::Result<()> {
    let Shape {
        batch,
        prefix,
        own: own_len,
        q_heads,
        kv_heads,
        head_dim: d,
        ..
    } = *s;
    let heads = HeadConfig::new(q_heads, kv_heads, d)?;
    let opts = AttentionOptions::default().with_causal(true);
    let (pp, op_) = (prefix / PAGE, own_len / PAGE);
    // Pool: one shared prefix, 64 prefix copies, 64 own parts; ids in random order.
    let num_pages = pp + batch * pp + batch * op_;
    let mut ids: Vec<i32> = (0..num_pages as i32).collect();
    ferrinfer_harness::shuffle_pages(&mut ids, 0x5ca1_ab1e);
    let mut it = ids.into_iter();
    let shared = tables(&[pp], &mut it);
    let copies = tables(&vec![pp; batch], &mut it);
    let own = tables(&vec![op_; batch], &mut it);
    let cfg = KvPoolConfig {
        num_pages: 0,
        page_size: PAGE,
        num_kv_heads: kv_heads,
        head_dim: d,
        layout: KvLayout::Nhd,
    };
    let mut pool = KvPool::<bf16>::new_gpu(gpu, cfg, PoolSize::Pages(num_pages))?;
    pool.fill_tiled(&pattern(4096 * 3, 2), &pattern(4096 * 3, 3))?;
    let full_shared = concat(&shared, false, &own);
    let full_copied = concat(&copies, true, &own);
    println!(
        "\ndevice: {}; {}: {batch} requests × ({prefix} shared + {own_len} own) tokens, bf16, D {d}, {q_heads}/{kv_heads} heads, page {PAGE}",
        gpu.info().name,
        s.name
    );
    println!("\n| op | qo per request | median us | p10 | p90 | cascade speed-up over it |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let cascade = CascadeAttention::new(gpu, heads, DType::Bf16, opts)?;
    let prefill = BatchPrefill::new(gpu, heads, DType::Bf16, opts)?;
    let decode = BatchDecode::new(gpu, heads, DType::Bf16, opts)?;
    for qo in [1usize, 16] {
        let n = batch * qo;
        let q = gpu.upload(&pattern(n * q_heads * d, 1))?;
        let mut o = gpu.alloc::<bf16>(n * q_heads * d)?;
        let mut lse = gpu.alloc::<f32>(n * q_heads)?;
        let all = [0, n as i32];
        let per: Vec<i32> = (0..=batch as i32).map(|b| b * qo as i32).collect();
        let levels = [
            CascadeLevel {
                qo_indptr: &all,
                pages: &shared,
            },
            CascadeLevel {
                qo_indptr: &per,
                pages: &own,
            },
        ];
        let mut plan = cascade.plan(&levels, pool.config())?;
        let tc = gpu.time_with(OPTS, |_| {
            cascade.run(&mut plan, &q, &pool, &mut o, Some(&mut lse))
        })?;
        let mut plain = Vec::new();
        for (what, full) in [("shared", &full_shared), ("copied", &full_copied)] {
            let pplan = prefill.plan_paged(&per, full, pool.config())?;
            let t = gpu.time_with(OPTS, |_| {
                prefill.run_paged(&pplan, &q, &pool, &mut o, Some(&mut lse))
            })?;
            plain.push((format!("prefill, prefix pages {what}"), t));
            if qo == 1 {
                let dplan = decode.plan(full, pool.config())?;
                let t = gpu.time_with(OPTS, |_| {
                    decode.run(&dplan, &q, &pool, &mut o, Some(&mut lse))
                })?;
                plain.push((
                    format!("decode ({}), prefix pages {what}", decode.kernel_name()),
                    t,
                ));
            }
        }
        row("cascade (2 levels)", qo, &tc, None);
        for (what, t) in &plain {
            row(what, qo, t, Some(tc.median_us));
        }
    }
    Ok(())
}

fn main() {
    ferrinfer_harness::bench_main("cascade", |g| {
        for s in &SHAPES {
            run(g, s).map_err(|e| format!("{}: {e}", s.name))?;
        }
        Ok::<(), String>(())
    });
}
