//! Model loading for the CLI: the default model path, a progress bar, the backend choice.
use std::path::PathBuf;
use std::time::Instant;

use ferrinfer::runtime::Discovery;
use ferrinfer::Gpu;
use ferrinfer_engine::runner::cpu::CpuRunner;
use ferrinfer_engine::runner::gpu::GpuRunner;
use ferrinfer_engine::runner::ModelRunner;
use ferrinfer_engine::{Engine, EngineError, Model, Result, SchedulerConfig, Tokenizer};
use indicatif::{ProgressBar, ProgressStyle};

use crate::ModelArgs;

/// Default step budget on the GPU: a burst of prompts is prefilled in few steps (64 streams of
/// 512-token prompts: TTFT p99 85 ms at 2048 against 156 ms at 512 on an H100, the same
/// short-request throughput; `docs/perf-notes.md`, 2026-12-07).
pub const GPU_STEP_TOKENS: usize = 2048;
/// Default step budget on the CPU backend: a step's time grows with its tokens there, and
/// running decodes wait for the whole step.
pub const CPU_STEP_TOKENS: usize = 512;

/// The file name of the default model.
pub const DEFAULT_MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// `--model`, else `$FERRINFER_MODEL`, else `models/<DEFAULT_MODEL>` of this checkout.
pub fn model_path(args: &ModelArgs) -> PathBuf {
    if let Some(p) = &args.model {
        return p.clone();
    }
    if let Some(p) = std::env::var_os("FERRINFER_MODEL") {
        return PathBuf::from(p);
    }
    let here = PathBuf::from("models").join(DEFAULT_MODEL);
    if here.exists() {
        return here;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("models")
        .join(DEFAULT_MODEL)
}

/// A loaded model behind an engine, plus its tokenizer.
pub struct Loaded {
    /// The engine.
    pub engine: Engine<Box<dyn ModelRunner>>,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// What runs it.
    pub backend: String,
}

/// Loads the model with a progress bar on stderr.
pub fn load(args: &ModelArgs) -> Result<Loaded> {
    let path = model_path(args);
    if !path.exists() {
        return Err(EngineError::Model(format!(
            "{} not found: run scripts/setup.sh (it fetches the default model) or pass --model",
            path.display()
        )));
    }
    let t0 = Instant::now();
    let bar = ProgressBar::new(1).with_style(
        ProgressStyle::with_template("loading {msg} [{bar:30}] {pos}/{len} tensors groups")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    let model = Model::load(&path, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let c = &model.config;
    let gpu = if args.cpu {
        None
    } else {
        match Gpu::discover(0)? {
            Discovery::Found(g) => Some(g),
            Discovery::NotFound(why) => {
                eprintln!("no CUDA device ({why}): running on the CPU backend");
                None
            }
        }
    };
    let sched = SchedulerConfig {
        step_tokens: args.step_tokens.unwrap_or(if gpu.is_some() {
            GPU_STEP_TOKENS
        } else {
            CPU_STEP_TOKENS
        }),
        prefix_cache: !args.no_prefix_cache,
        ..SchedulerConfig::default()
    };
    let runner: Box<dyn ModelRunner> = match gpu {
        Some(g) => {
            let mut r = GpuRunner::new(
                &g,
                model.config.clone(),
                model.weights.clone(),
                args.gpu_weights,
                args.kv_tokens,
                sched.step_tokens,
                sched.max_running,
            )?;
            r.set_decode_op(!args.no_decode_attention);
            r.set_graphs(!args.no_cuda_graphs);
            Box::new(r)
        }
        None => {
            let mut r =
                CpuRunner::new(model.config.clone(), model.weights.clone(), args.kv_tokens)?;
            r.set_decode_op(!args.no_decode_attention);
            Box::new(r)
        }
    };
    let backend = runner.backend();
    eprintln!(
        "loaded {} ({}, {} layers, dim {}, {}/{} heads × {}, vocab {}) in {:.2} s on {}",
        path.display(),
        if c.name.is_empty() { &c.arch } else { &c.name },
        c.layers,
        c.dim,
        c.q_heads,
        c.kv_heads,
        c.head_dim,
        c.vocab,
        t0.elapsed().as_secs_f64(),
        backend
    );
    let engine = Engine::new(runner, sched)?;
    Ok(Loaded {
        engine,
        tokenizer: model.tokenizer,
        backend,
    })
}
