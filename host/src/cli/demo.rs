//! `ferrinfer demo`, the main job for now: a multi-request decode workload with the attention
//! geometry of SmolLM2-135M (9 query heads, 3 KV heads, head dim 64, 30 layers) by default.
//!
//! Every step, each request decodes one token: for every layer, one attention call over that
//! request's context, which grows by one token per step. Runs on the GPU, or on the CPU backend
//! (saying so) when there is none. Prints tokens/s and the achieved KV-read bandwidth.
//! Not yet part of it: the KV append of the new token (issue: KV-cache engine) and batching the
//! requests into one launch (issue: batch decode) — so the GPU figure is launch-bound for small
//! contexts.
use std::time::Instant;

use cudarc::driver::sys::CUevent_flags;
use half::bf16;

use super::rand::XorShift;
use crate::dtype::Float16;
use crate::error::Result;
use crate::heads::HeadConfig;
use crate::ops::single_decode::{KvStrides, SingleDecode};
use crate::options::AttentionOptions;
use crate::runtime::{DeviceBuffer, Gpu};

/// Demo workload shape.
#[derive(Clone, Copy, Debug)]
pub struct DemoConfig {
    /// Concurrent requests.
    pub requests: usize,
    /// Tokens already in each request's context at the start.
    pub context: usize,
    /// Decode steps (tokens generated per request).
    pub steps: usize,
    /// Transformer layers (one attention call per layer per token).
    pub layers: usize,
    /// Head geometry.
    pub heads: HeadConfig,
}

fn random_host(n: usize, seed: u64) -> Vec<bf16> {
    let mut r = XorShift::new(seed);
    (0..n)
        .map(|_| bf16::from_f32(r.uniform(-1.0, 1.0)))
        .collect()
}

/// Runs the demo on `gpu`, or on the CPU backend when `None`; returns tokens/s.
pub fn run(gpu: Option<Gpu>, cfg: DemoConfig) -> Result<f64> {
    let h = cfg.heads;
    let max_len = cfg.context + cfg.steps;
    let per_seq = max_len * h.num_kv_heads * h.head_dim;
    println!(
        "workload: {} requests x {} steps, context {} -> {}, {} layers, heads {}q/{}kv, head_dim {}, bf16",
        cfg.requests, cfg.steps, cfg.context, max_len, cfg.layers, h.num_qo_heads, h.num_kv_heads, h.head_dim
    );
    let calls = cfg.requests * cfg.steps * cfg.layers;
    let kv_bytes: f64 = (0..cfg.steps)
        .map(|s| ((cfg.context + s + 1) * h.num_kv_heads * h.head_dim * 2 * 2) as f64)
        .sum::<f64>()
        * (cfg.requests * cfg.layers) as f64;
    let host_kv = random_host(per_seq, 7);
    let q = random_host(h.num_qo_heads * h.head_dim, 11);
    let seconds = match gpu {
        Some(gpu) => {
            println!(
                "backend: GPU {} ({} SMs)",
                gpu.info().name,
                gpu.info().sm_count
            );
            run_gpu(&gpu, &cfg, &host_kv, &q)?
        }
        None => {
            println!(
                "backend: CPU (rayon) -- no GPU found, running the embedded CPU backend instead"
            );
            run_cpu(&cfg, &host_kv, &q)?
        }
    };
    let tokens = (cfg.requests * cfg.steps) as f64;
    let tps = tokens / seconds;
    println!(
        "{calls} attention calls in {:.3} ms: {:.1} tokens/s ({:.1} us per call), KV read {:.2} GB/s",
        seconds * 1e3,
        tps,
        seconds * 1e6 / calls as f64,
        kv_bytes / seconds / 1e9
    );
    Ok(tps)
}

fn run_gpu(gpu: &Gpu, cfg: &DemoConfig, host_kv: &[bf16], q: &[bf16]) -> Result<f64> {
    let h = cfg.heads;
    let mut ops = SingleDecode::new(gpu, h, bf16::DTYPE, AttentionOptions::default())?;
    let mut kv: Vec<(DeviceBuffer<bf16>, DeviceBuffer<bf16>)> =
        Vec::with_capacity(cfg.requests * cfg.layers);
    for _ in 0..cfg.requests * cfg.layers {
        kv.push((gpu.upload(host_kv)?, gpu.upload(host_kv)?));
    }
    let qd = gpu.upload(q)?;
    let mut out = gpu.alloc::<bf16>(h.num_qo_heads * h.head_dim)?;
    let mut lse = gpu.alloc::<f32>(h.num_qo_heads)?;
    // Warm-up (module JIT, workspace allocation).
    ops.run(
        &qd,
        &kv[0].0,
        &kv[0].1,
        cfg.context + cfg.steps,
        &mut out,
        Some(&mut lse),
    )?;
    gpu.synchronize()?;
    let start = gpu
        .context()
        .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    let end = gpu
        .context()
        .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    start.record(gpu.stream())?;
    for step in 0..cfg.steps {
        let kv_len = cfg.context + step + 1;
        for (k, v) in &kv {
            ops.run(&qd, k, v, kv_len, &mut out, Some(&mut lse))?;
        }
    }
    end.record(gpu.stream())?;
    let ms = start.elapsed_ms(&end)?;
    Ok(ms as f64 / 1e3)
}

fn run_cpu(cfg: &DemoConfig, host_kv: &[bf16], q: &[bf16]) -> Result<f64> {
    let h = cfg.heads;
    let s = KvStrides::contiguous(&h);
    let opts = AttentionOptions::default();
    let mut out = vec![bf16::ZERO; h.num_qo_heads * h.head_dim];
    let mut lse = vec![0.0f32; h.num_qo_heads];
    let t0 = Instant::now();
    for step in 0..cfg.steps {
        let kv_len = cfg.context + step + 1;
        for _ in 0..cfg.requests * cfg.layers {
            crate::cpu::decode::single_decode(
                &h,
                &opts,
                q,
                host_kv,
                s,
                host_kv,
                s,
                kv_len,
                &mut out,
                Some(&mut lse),
            )?;
        }
    }
    Ok(t0.elapsed().as_secs_f64())
}
