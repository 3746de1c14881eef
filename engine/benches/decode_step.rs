//! The GPU runner's decode step, wall time per step as the engine sees it (host work, launches
//! or graph replay, the argmax download): a model of SmolLM2-135M's geometry with random bf16
//! weights (a step's speed does not depend on the values, so no model file is needed), each
//! request after a 512-token prompt, at batch 1, 4, 16 and 64, with the step's kernels launched
//! one by one and replayed as a CUDA graph, the graphs with the model kernels launched plainly
//! and as programmatic dependents (`set_dependent_launch`, Hopper), in the same run, with RoPE
//! fused into the KV append (`set_fused_append`) and without, and every batch also with the
//! products on the few-row kernels (`set_small_products`) instead of cuBLAS. 10 warm-up steps (graphs are captured there), then the median and p10/p90 of 100 steps. Beside each: the step's memory
//! roofline, the bytes a decode step must read (the bf16 weights of every product and the
//! f16 K/V of every request's context, at the middle timed step) at the device-to-device copy
//! bandwidth measured in the same run (issue #16's target: a batch-64 step within 2× of it).
//!
//! A second table times the mixed steps of serving short requests: `batch` running decodes
//! beside one new request's 64-token prompt per step, its kernels launched one by one and
//! replayed piecewise (graphs between the blocks' attentions, which run eagerly).
//!
//! Run: `cargo bench -p ferrinfer-engine --bench decode_step` (or the stripped executable from
//! gpu-bundle/ on the GPU machine). Without a GPU it says so and exits 0.
use std::sync::Arc;
use std::time::Instant;

use ferrinfer::kv::SeqId;
use ferrinfer::rope::{RopeConfig, RopeScaling, RopeStyle};
use ferrinfer::runtime::Discovery;
use ferrinfer::Gpu;
use ferrinfer_engine::runner::gpu::{GpuRunner, GpuWeights};
use ferrinfer_engine::runner::{ModelRunner, StepInput};
use ferrinfer_engine::{ModelConfig, Weights};
use rand::{Rng, SeedableRng};

const PROMPT: usize = 512;
const WARM: usize = 10;
const STEPS: usize = 100;

/// SmolLM2-135M's hyperparameters (as its GGUF's metadata gives them).
fn smollm2_135m() -> ModelConfig {
    ModelConfig {
        arch: "llama".into(),
        name: "SmolLM2-135M geometry, random weights".into(),
        layers: 30,
        dim: 576,
        ffn_dim: 1536,
        q_heads: 9,
        kv_heads: 3,
        head_dim: 64,
        vocab: 49152,
        context: 8192,
        rms_eps: 1e-5,
        rope: RopeConfig {
            theta: 100000.0,
            rotary_dim: 64,
            scaling: RopeScaling::None,
            style: RopeStyle::Interleaved,
        },
        tied_embeddings: true,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Bytes a decode step of `batch` requests with `ctx` tokens each must read: the bf16 weights
/// of the products (QKV, output, gate|up, down per block; the tied LM head) and the f16 K/V.
fn step_bytes(cfg: &ModelConfig, batch: usize, ctx: usize) -> f64 {
    let (d, f, hd) = (cfg.dim, cfg.ffn_dim, cfg.head_dim);
    let (q, kv) = (cfg.q_heads * hd, cfg.kv_heads * hd);
    let per_block = (q + 2 * kv) * d + d * q + 2 * f * d + d * f;
    let weights = (cfg.layers * per_block + cfg.vocab * d) * 2;
    let kv_bytes = batch * ctx * cfg.layers * 2 * kv * 2;
    (weights + kv_bytes) as f64
}

/// `batch` new sequences, each after a [`PROMPT`]-token prompt of random tokens (as many
/// prompts per step as `step_tokens` takes); returns them and each one's next token.
fn prompts(
    r: &mut GpuRunner,
    cfg: &ModelConfig,
    batch: usize,
    step_tokens: usize,
    rng: &mut rand::rngs::StdRng,
) -> Result<(Vec<SeqId>, Vec<u32>), Box<dyn std::error::Error>> {
    let seqs: Vec<SeqId> = (0..batch).map(|_| r.add_sequence()).collect();
    let mut last = Vec::with_capacity(batch);
    for chunk in seqs.chunks((step_tokens / PROMPT).max(1)) {
        let mut s = StepInput::default();
        for &id in chunk {
            let p: Vec<u32> = (0..PROMPT)
                .map(|_| rng.random_range(0..cfg.vocab as u32))
                .collect();
            s.push(id, 0, &p, true);
        }
        last.extend(r.forward_greedy(&s)?);
    }
    Ok((seqs, last))
}

/// How a runner launches a step.
#[derive(Clone, Copy)]
struct Setup {
    /// CUDA graphs (decode steps whole, mixed steps piecewise) or every kernel launched.
    graphs: bool,
    /// Few-row products (`set_small_products`) for steps of ≤ 64 tokens.
    small: bool,
    /// Model kernels as programmatic dependents (`set_dependent_launch`).
    pdl: bool,
    /// RoPE fused into the KV append (`set_fused_append`).
    fused: bool,
}

impl Setup {
    /// Applies the setup to `r`; the label says what is in effect.
    fn apply(self, r: &mut GpuRunner) -> String {
        r.set_graphs(self.graphs);
        r.set_small_products(if self.small { 64 } else { 0 });
        let pdl = r.set_dependent_launch(self.pdl);
        r.set_fused_append(self.fused);
        let mut label = if self.graphs { "CUDA graph" } else { "eager" }.to_string();
        if self.small {
            label.push_str(", few-row");
        }
        if pdl {
            label.push_str(", PDL");
        }
        if self.fused {
            label.push_str(", fused append");
        }
        label
    }
}

fn run(
    gpu: &Gpu,
    cfg: &ModelConfig,
    w: &Arc<Weights>,
    batch: usize,
    setup: Setup,
    copy_tbps: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    let step_tokens = 8192;
    let kv = batch * (PROMPT + WARM + STEPS + 16) + 1024;
    let mut r = GpuRunner::new(
        gpu,
        cfg.clone(),
        w.clone(),
        GpuWeights::Bf16,
        kv,
        step_tokens,
        batch,
    )?;
    let label = setup.apply(&mut r);
    let mut rng = rand::rngs::StdRng::seed_from_u64(batch as u64);
    let (seqs, mut last) = prompts(&mut r, cfg, batch, step_tokens, &mut rng)?;
    let mut times = Vec::with_capacity(STEPS);
    for step in 0..WARM + STEPS {
        let mut s = StepInput::default();
        for (i, &id) in seqs.iter().enumerate() {
            s.push(id, PROMPT + step, &[last[i]], true);
        }
        let t0 = Instant::now();
        last = r.forward_greedy(&s)?;
        if step >= WARM {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let med = percentile(&times, 0.5);
    let roof_ms = step_bytes(cfg, batch, PROMPT + WARM + STEPS / 2) / (copy_tbps * 1e12) * 1e3;
    println!(
        "| {batch} | {label} | {med:.3} | {:.3} | {:.3} | {:.0} | {roof_ms:.3} | {:.2}× | {:?} |",
        percentile(&times, 0.1),
        percentile(&times, 0.9),
        batch as f64 / med * 1e3,
        med / roof_ms,
        r.graph_stats()
    );
    Ok(())
}

/// New prompt tokens per mixed step.
const MIXED_PROMPT: usize = 64;

/// Mixed steps: `batch` decodes (after 512-token prompts) and one new request's
/// [`MIXED_PROMPT`]-token prompt per step, the new request freed after its step so that every
/// step has the same shape.
fn run_mixed(
    gpu: &Gpu,
    cfg: &ModelConfig,
    w: &Arc<Weights>,
    batch: usize,
    setup: Setup,
) -> Result<(), Box<dyn std::error::Error>> {
    let kv = batch * (PROMPT + WARM + STEPS + 16) + 4096;
    let mut r = GpuRunner::new(
        gpu,
        cfg.clone(),
        w.clone(),
        GpuWeights::Bf16,
        kv,
        8192,
        batch + 1,
    )?;
    let label = setup
        .apply(&mut r)
        .replace("CUDA graph", "piecewise graphs");
    let mut rng = rand::rngs::StdRng::seed_from_u64(batch as u64 + 100);
    let (seqs, mut last) = prompts(&mut r, cfg, batch, 8192, &mut rng)?;
    let mut tokens = |n: usize| -> Vec<u32> {
        (0..n)
            .map(|_| rng.random_range(0..cfg.vocab as u32))
            .collect()
    };
    let mut times = Vec::with_capacity(STEPS);
    for step in 0..WARM + STEPS {
        let mut s = StepInput::default();
        for (i, &id) in seqs.iter().enumerate() {
            s.push(id, PROMPT + step, &[last[i]], true);
        }
        let new = r.add_sequence();
        s.push(new, 0, &tokens(MIXED_PROMPT), true);
        let t0 = Instant::now();
        let out = r.forward_greedy(&s)?;
        if step >= WARM {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        last = out[..batch].to_vec();
        r.free(new)?;
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "| {batch} + {MIXED_PROMPT} | {label} | {:.3} | {:.3} | {:.3} | {:?} |",
        percentile(&times, 0.5),
        percentile(&times, 0.1),
        percentile(&times, 0.9),
        r.piece_stats()
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let gpu = match Gpu::discover(0)? {
        Discovery::Found(g) => g,
        Discovery::NotFound(why) => {
            println!("decode_step: no GPU ({why}); nothing measured");
            return Ok(());
        }
    };
    let (copy_tbps, _) = gpu.copy_bandwidth(1 << 30, 20)?;
    let cfg = smollm2_135m();
    let w = Arc::new(Weights::random(&cfg, 7)?);
    println!(
        "decode step on {} ({}), bf16 products; prompt {PROMPT}, {STEPS} timed steps after {WARM}:",
        gpu.info().name,
        cfg.name,
    );
    println!("device-to-device copy: {copy_tbps:.2} TB/s");
    println!(
        "| batch | step | median ms | p10 ms | p90 ms | tokens/s | roofline ms | × roofline | graph stats |"
    );
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    let setup = |graphs, small, pdl, fused| Setup {
        graphs,
        small,
        pdl,
        fused,
    };
    for batch in [1usize, 4, 16, 64] {
        // Eager, then graphs without and with PDL and the fused append, products on cuBLAS
        // and on the few-row kernels.
        for s in [
            setup(false, false, true, false),
            setup(true, false, false, false),
            setup(true, false, true, false),
            setup(true, false, false, true),
            setup(true, false, true, true),
            setup(true, true, true, false),
            setup(true, true, true, true),
        ] {
            run(&gpu, &cfg, &w, batch, s, copy_tbps)?;
        }
    }
    println!("\nmixed steps (decodes + one new {MIXED_PROMPT}-token prompt), median of {STEPS}:");
    println!("| decodes + prompt tokens | step | median ms | p10 ms | p90 ms | piece stats |");
    println!("| --- | --- | ---: | ---: | ---: | --- |");
    for batch in [0usize, 16, 48] {
        for s in [
            setup(false, false, true, false),
            setup(true, false, false, false),
            setup(true, false, true, false),
        ] {
            run_mixed(&gpu, &cfg, &w, batch, s)?;
        }
    }
    Ok(())
}
