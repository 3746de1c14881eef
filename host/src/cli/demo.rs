//! `ferrinfer demo`, the main job: a multi-request serving loop through the paged KV cache with
//! the attention geometry of SmolLM2-135M (9 query heads, 3 KV heads, head dim 64, 30 layers) by
//! default — the attention side of generating text for many concurrent requests.
//!
//! 1. Prefill: every request's prompt (`context` tokens) is appended to the cache (one
//!    `begin_append`, one append per layer) and attended causally with `BatchPrefill` (one plan,
//!    one launch per layer).
//! 2. Decode: `steps` times, every request appends one token per layer and attends to its whole
//!    context with `BatchDecode` (one plan per step, one launch per layer).
//!
//! The projections and MLP of a real model are not part of it (random q/K/V rows stand in for
//! them), so the figures are the attention + KV-cache share of a step. Runs on the GPU, or on
//! the CPU backend (saying so) when there is none.
use std::time::Instant;

use cudarc::driver::sys::CUevent_flags;
use half::bf16;

use super::rand::XorShift;
use crate::error::Result;
use crate::heads::HeadConfig;
use crate::kv::{KvLayout, KvPoolConfig, PagedKvCache, PoolSize, RowStrides, Rows, SeqId};
use crate::ops::{BatchDecode, BatchPrefill};
use crate::options::AttentionOptions;
use crate::runtime::Gpu;

/// Tokens per KV page in the demo's cache.
const PAGE_SIZE: usize = 16;

/// Demo workload shape.
#[derive(Clone, Copy, Debug)]
pub struct DemoConfig {
    /// Concurrent requests.
    pub requests: usize,
    /// Prompt tokens per request (prefilled first).
    pub context: usize,
    /// Decode steps (tokens generated per request).
    pub steps: usize,
    /// Transformer layers (one attention call per layer per step).
    pub layers: usize,
    /// Head geometry.
    pub heads: HeadConfig,
    /// Fixed split-KV chunk for decode (tokens); `None`: the planner decides.
    pub decode_split: Option<usize>,
    /// Decode kernel family; `None`: the op's default for the group size.
    pub decode_kernel: Option<crate::ops::DecodeKernel>,
}

/// Measured phases.
struct Times {
    /// Prefill of all prompts, all layers (append + attention), seconds.
    prefill: f64,
    /// All decode steps, seconds (GPU time on the GPU).
    decode: f64,
    /// Host time of all decode steps (page tables, plans, launches), seconds; GPU runs only
    /// (on the CPU backend it is the decode time itself).
    decode_host: Option<f64>,
}

fn random_host(n: usize, seed: u64) -> Vec<bf16> {
    let mut r = XorShift::new(seed);
    (0..n)
        .map(|_| bf16::from_f32(r.uniform(-1.0, 1.0)))
        .collect()
}

/// Random stand-ins for one phase's projections: q, K and V rows for `tokens` tokens.
struct Rows3 {
    q: Vec<bf16>,
    k: Vec<bf16>,
    v: Vec<bf16>,
}

fn rows3(h: &HeadConfig, tokens: usize, seed: u64) -> Rows3 {
    let kv = tokens * h.num_kv_heads * h.head_dim;
    Rows3 {
        q: random_host(tokens * h.num_qo_heads * h.head_dim, seed),
        k: random_host(kv, seed + 1),
        v: random_host(kv, seed + 2),
    }
}

/// Runs the demo on `gpu`, or on the CPU backend when `None`; returns decode tokens/s.
pub fn run(gpu: Option<Gpu>, cfg: DemoConfig) -> Result<f64> {
    let h = cfg.heads;
    println!(
        "workload: {} requests, prompt {} tokens, then {} decode steps ({} -> {} tokens of context), \
         {} layers, heads {}q/{}kv, head_dim {}, bf16, paged KV (page {PAGE_SIZE})",
        cfg.requests,
        cfg.context,
        cfg.steps,
        cfg.context,
        cfg.context + cfg.steps,
        cfg.layers,
        h.num_qo_heads,
        h.num_kv_heads,
        h.head_dim
    );
    let t = match gpu {
        Some(gpu) => {
            println!(
                "backend: GPU {} ({} SMs)",
                gpu.info().name,
                gpu.info().sm_count
            );
            run_gpu(&gpu, &cfg)?
        }
        None => {
            println!(
                "backend: CPU (rayon) -- no GPU found, running the embedded CPU backend instead"
            );
            run_cpu(&cfg)?
        }
    };
    let prompt_tokens = (cfg.requests * cfg.context) as f64;
    let new_tokens = (cfg.requests * cfg.steps) as f64;
    println!(
        "prefill: {} prompt tokens x {} layers in {:.3} ms: {:.0} tokens/s",
        prompt_tokens,
        cfg.layers,
        t.prefill * 1e3,
        prompt_tokens / t.prefill.max(1e-12)
    );
    let tps = new_tokens / t.decode.max(1e-12);
    let per_step = |s: f64| s * 1e6 / cfg.steps.max(1) as f64;
    println!(
        "decode: {} steps x {} requests x {} layers in {:.3} ms: {:.1} tokens/s ({:.1} us per step{})",
        cfg.steps,
        cfg.requests,
        cfg.layers,
        t.decode * 1e3,
        tps,
        per_step(t.decode),
        t.decode_host.map_or(String::new(), |hs| format!(
            "; host {:.1} us per step for page tables, plans and launches",
            per_step(hs)
        ))
    );
    Ok(tps)
}

fn cache_config(h: &HeadConfig) -> KvPoolConfig {
    KvPoolConfig {
        num_pages: 0,
        page_size: PAGE_SIZE,
        num_kv_heads: h.num_kv_heads,
        head_dim: h.head_dim,
        layout: KvLayout::Nhd,
    }
}

/// Pages for every request's whole context (plus one spare each).
fn pages_needed(cfg: &DemoConfig) -> usize {
    cfg.requests * ((cfg.context + cfg.steps).div_ceil(PAGE_SIZE) + 1)
}

fn prompt_indptr(cfg: &DemoConfig) -> Vec<i32> {
    (0..=cfg.requests)
        .map(|b| (b * cfg.context) as i32)
        .collect()
}

fn run_gpu(gpu: &Gpu, cfg: &DemoConfig) -> Result<Times> {
    let h = cfg.heads;
    let rows = RowStrides::contiguous(h.num_kv_heads, h.head_dim);
    let mut cache = PagedKvCache::<bf16>::new_gpu_layers(
        gpu,
        cache_config(&h),
        PoolSize::Pages(pages_needed(cfg)),
        cfg.layers,
    )?;
    let seqs: Vec<SeqId> = (0..cfg.requests).map(|_| cache.add_sequence()).collect();
    let prefill = BatchPrefill::new(
        gpu,
        h,
        crate::DType::Bf16,
        AttentionOptions::default().with_causal(true),
    )?;
    let mut decode = BatchDecode::new(gpu, h, crate::DType::Bf16, AttentionOptions::default())?;
    decode.set_fixed_split_size(cfg.decode_split);
    if let Some(k) = cfg.decode_kernel {
        decode.set_kernel(k)?;
    }
    println!("decode kernel: {}", decode.kernel_name());
    let p = rows3(&h, cfg.requests * cfg.context, 7);
    let d = rows3(&h, cfg.requests, 11);
    let (qp, kp, vp) = (gpu.upload(&p.q)?, gpu.upload(&p.k)?, gpu.upload(&p.v)?);
    let (qd, kd, vd) = (gpu.upload(&d.q)?, gpu.upload(&d.k)?, gpu.upload(&d.v)?);
    let mut op = gpu.alloc::<bf16>(p.q.len().max(1))?;
    let mut od = gpu.alloc::<bf16>(d.q.len())?;
    let event = || {
        gpu.context()
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
    };
    let (e0, e1, e2) = (event()?, event()?, event()?);
    gpu.synchronize()?;

    // Prefill: all prompts in one step.
    e0.record(gpu.stream())?;
    if cfg.context > 0 {
        let reqs: Vec<_> = seqs.iter().map(|&s| (s, cfg.context)).collect();
        let step = cache.begin_append(&reqs)?;
        for layer in 0..cfg.layers {
            cache.append_layer(
                layer,
                &step,
                Rows::Device(&kp),
                rows,
                Rows::Device(&vp),
                rows,
            )?;
        }
        let plan = prefill.plan_paged(
            &prompt_indptr(cfg),
            &cache.batch_pages(&seqs)?,
            cache.config(),
        )?;
        for layer in 0..cfg.layers {
            prefill.run_paged(&plan, &qp, cache.pool(layer)?, &mut op, None)?;
        }
    }
    e1.record(gpu.stream())?;

    // Decode: one token per request per step.
    let host = Instant::now();
    let reqs: Vec<_> = seqs.iter().map(|&s| (s, 1)).collect();
    let mut plan = None;
    for _ in 0..cfg.steps {
        let step = cache.begin_append(&reqs)?;
        for layer in 0..cfg.layers {
            cache.append_layer(
                layer,
                &step,
                Rows::Device(&kd),
                rows,
                Rows::Device(&vd),
                rows,
            )?;
        }
        let pages = cache.batch_pages(&seqs)?;
        let plan = match plan.as_mut() {
            None => plan.insert(decode.plan(&pages, cache.config())?),
            Some(p) => {
                decode.plan_into(&pages, cache.config(), p)?;
                p
            }
        };
        for layer in 0..cfg.layers {
            decode.run(plan, &qd, cache.pool(layer)?, &mut od, None)?;
        }
    }
    let decode_host = host.elapsed().as_secs_f64();
    e2.record(gpu.stream())?;
    Ok(Times {
        prefill: e0.elapsed_ms(&e1)? as f64 / 1e3,
        decode: e1.elapsed_ms(&e2)? as f64 / 1e3,
        decode_host: Some(decode_host),
    })
}

fn run_cpu(cfg: &DemoConfig) -> Result<Times> {
    let h = cfg.heads;
    let opts = AttentionOptions::default();
    let rows = RowStrides::contiguous(h.num_kv_heads, h.head_dim);
    let mut cache = PagedKvCache::<bf16>::new_cpu_layers(
        cache_config(&h),
        PoolSize::Pages(pages_needed(cfg)),
        cfg.layers,
    )?;
    let seqs: Vec<SeqId> = (0..cfg.requests).map(|_| cache.add_sequence()).collect();
    let p = rows3(&h, cfg.requests * cfg.context, 7);
    let d = rows3(&h, cfg.requests, 11);
    let mut op = vec![bf16::ZERO; p.q.len()];
    let mut od = vec![bf16::ZERO; d.q.len()];

    let t0 = Instant::now();
    if cfg.context > 0 {
        let reqs: Vec<_> = seqs.iter().map(|&s| (s, cfg.context)).collect();
        let step = cache.begin_append(&reqs)?;
        for layer in 0..cfg.layers {
            cache.append_layer(layer, &step, Rows::Host(&p.k), rows, Rows::Host(&p.v), rows)?;
        }
        let pages = cache.batch_pages(&seqs)?;
        let causal = opts.with_causal(true);
        for layer in 0..cfg.layers {
            crate::cpu::prefill::batch_prefill_paged(
                &h,
                &causal,
                &p.q,
                &prompt_indptr(cfg),
                cache.pool(layer)?,
                &pages,
                &mut op,
                None,
            )?;
        }
    }
    let prefill = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let reqs: Vec<_> = seqs.iter().map(|&s| (s, 1)).collect();
    for _ in 0..cfg.steps {
        let step = cache.begin_append(&reqs)?;
        for layer in 0..cfg.layers {
            cache.append_layer(layer, &step, Rows::Host(&d.k), rows, Rows::Host(&d.v), rows)?;
        }
        let pages = cache.batch_pages(&seqs)?;
        for layer in 0..cfg.layers {
            crate::cpu::batch_decode(&h, &opts, &d.q, cache.pool(layer)?, &pages, &mut od, None)?;
        }
    }
    let decode = t1.elapsed().as_secs_f64();
    Ok(Times {
        prefill,
        decode,
        decode_host: None,
    })
}
