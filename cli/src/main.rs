//! The `ferrinfer` command line: text generation on a real model (`generate`,
//! `bench-generate`), the OpenAI-compatible server (`serve`), and the kernel library's own
//! tools (`info`, `check`, `demo`).
mod bench;
mod generate;
mod load;
mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ferrinfer::cli;
use ferrinfer::HeadConfig;
use ferrinfer_engine::runner::gpu::GpuWeights;

#[derive(Parser)]
#[command(
    name = "ferrinfer",
    version,
    about = "Rust attention kernels for LLM inference"
)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where the model comes from and how it runs.
#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// GGUF model file (default: $FERRINFER_MODEL, else the SmolLM2-135M-Instruct file that
    /// scripts/setup.sh fetches into models/).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Run on the CPU backend even when a GPU is present.
    #[arg(long)]
    pub cpu: bool,
    /// KV cache capacity in tokens.
    #[arg(long, default_value_t = 16384)]
    pub kv_tokens: usize,
    /// Tokens per engine step at most (decode tokens + prefill chunks); default 2048 on the
    /// GPU, 512 on the CPU backend.
    #[arg(long)]
    pub step_tokens: Option<usize>,
    /// Do not keep finished requests' KV pages for reuse by prompts with the same prefix.
    #[arg(long)]
    pub no_prefix_cache: bool,
    /// Element type of the GPU's matrix products: bf16 (tensor cores, f32 accumulation) or f32
    /// (SGEMM, the accuracy reference). Ignored on the CPU backend.
    #[arg(long, default_value_t = GpuWeights::Bf16)]
    pub gpu_weights: GpuWeights,
    /// Run decode steps on the batch prefill op, like steps with prompt chunks, instead of the
    /// batch decode op (both backends; the runners before their decode paths: for before/after
    /// measurements).
    #[arg(long)]
    pub no_decode_attention: bool,
    /// Launch every kernel of every GPU decode step instead of replaying each batch size's step
    /// as a CUDA graph (the default).
    #[arg(long)]
    pub no_cuda_graphs: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// The main job: generate text from a prompt with a real model, streaming tokens as they
    /// are produced.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        /// The prompt (a user message, formatted with the model's chat template unless --raw).
        #[arg(long)]
        prompt: String,
        /// A system message (chat prompts only).
        #[arg(long)]
        system: Option<String>,
        /// Feed the prompt to the model as it is, without the chat template.
        #[arg(long)]
        raw: bool,
        /// Tokens to generate at most.
        #[arg(long, default_value_t = 128)]
        max_tokens: usize,
        /// Sampling temperature (0: greedy).
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// Nucleus sampling mass.
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        /// Keep the k most likely tokens (0: all).
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        /// Random seed (sampling).
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// OpenAI-compatible HTTP server: POST /v1/chat/completions and /v1/completions (streaming
    /// or not), GET /v1/models, /health, /metrics (Prometheus).
    Serve {
        #[command(flatten)]
        model: ModelArgs,
        /// Address to listen on. Without --api-key only loopback addresses are allowed.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Port to listen on (0: any free port).
        #[arg(long, default_value_t = 8000)]
        port: u16,
        /// Require `Authorization: Bearer KEY` on /v1/* (health and metrics stay open).
        #[arg(long)]
        api_key: Option<String>,
        /// Serve a non-loopback address without an API key.
        #[arg(long)]
        allow_unauthenticated_remote: bool,
        /// Requests accepted and unfinished at most; more are answered 429 with Retry-After.
        #[arg(long, default_value_t = 1024)]
        max_queued: usize,
        /// Largest request body in bytes (larger: 413).
        #[arg(long, default_value_t = 1 << 20)]
        body_limit: usize,
        /// The model name clients see (default: the model file's name without `.gguf`).
        #[arg(long, default_value = "")]
        served_model_name: String,
        /// max_tokens of a request that sets none (capped by the context).
        #[arg(long, default_value_t = 256)]
        default_max_tokens: usize,
    },
    /// Generation benchmark: N concurrent requests of random prompts; time to first token,
    /// per-token latency and tokens/s, written as a JSON record too.
    BenchGenerate {
        #[command(flatten)]
        model: ModelArgs,
        /// Concurrent requests.
        #[arg(long, default_value_t = 4)]
        requests: usize,
        /// Prompt tokens per request.
        #[arg(long, default_value_t = 128)]
        prompt_len: usize,
        /// Leading prompt tokens shared by every request (a system prompt).
        #[arg(long, default_value_t = 0)]
        shared_prefix: usize,
        /// Tokens generated per request.
        #[arg(long, default_value_t = 32)]
        gen_len: usize,
        /// RNG seed of the prompts.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where the JSON record goes.
        #[arg(long, default_value = "bench-generate.json")]
        json: PathBuf,
    },
    /// Driver, device, compute capability, SMs, memory, kernel image and load time, kernels with registers.
    Info,
    /// Randomized GPU-vs-oracle sweep of every op (CPU backend without a GPU); exit 1 on failure.
    Check {
        /// Number of random cases.
        #[arg(long, default_value_t = 200)]
        cases: usize,
        /// RNG seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Attention-only micro-benchmark: a multi-request serving loop (prompt prefill, then
    /// decode) of random q/K/V through the paged KV cache (SmolLM2-135M attention geometry).
    Demo {
        /// Concurrent requests.
        #[arg(long)]
        requests: Option<usize>,
        /// Prompt tokens per request (prefilled before decoding).
        #[arg(long)]
        context: Option<usize>,
        /// Tokens generated per request.
        #[arg(long)]
        steps: Option<usize>,
        /// Layers.
        #[arg(long, default_value_t = 30)]
        layers: usize,
        /// Query heads.
        #[arg(long, default_value_t = 9)]
        qo_heads: usize,
        /// KV heads.
        #[arg(long, default_value_t = 3)]
        kv_heads: usize,
        /// Head dimension.
        #[arg(long, default_value_t = 64)]
        head_dim: usize,
        /// Fixed split-KV chunk for decode, in tokens (default: the planner's choice).
        #[arg(long)]
        decode_split: Option<usize>,
        /// Decode kernel family: `cuda-core` or `tensor-core` (default: by group size).
        #[arg(long)]
        decode_kernel: Option<String>,
    },
}

fn main() {
    let args = Args::parse();
    let r = match args.cmd {
        Cmd::Generate {
            model,
            prompt,
            system,
            raw,
            max_tokens,
            temperature,
            top_p,
            top_k,
            seed,
        } => generate::run(generate::GenerateArgs {
            model,
            prompt,
            system,
            raw,
            max_tokens,
            sampling: ferrinfer_engine::SamplingParams {
                temperature,
                top_k,
                top_p,
            },
            seed,
        }),
        Cmd::Serve {
            model,
            host,
            port,
            api_key,
            allow_unauthenticated_remote,
            max_queued,
            body_limit,
            served_model_name,
            default_max_tokens,
        } => serve::run(
            model,
            ferrinfer_server::ServerConfig {
                host,
                port,
                api_key,
                allow_unauthenticated_remote,
                max_queued,
                body_limit,
                model_name: served_model_name,
                default_max_tokens,
                ..ferrinfer_server::ServerConfig::default()
            },
        ),
        Cmd::BenchGenerate {
            model,
            requests,
            prompt_len,
            shared_prefix,
            gen_len,
            seed,
            json,
        } => bench::run(
            &model,
            requests,
            prompt_len,
            shared_prefix,
            gen_len,
            seed,
            &json,
        ),
        Cmd::Info => cli::info::run().map(|_| true).map_err(Into::into),
        Cmd::Check { cases, seed } => cli::check::run(cases, seed).map_err(Into::into),
        Cmd::Demo {
            requests,
            context,
            steps,
            layers,
            qo_heads,
            kv_heads,
            head_dim,
            decode_split,
            decode_kernel,
        } => {
            // Smaller defaults on the CPU backend keep the demo to a few seconds there.
            cli::discover_or_say()
                .and_then(|gpu| {
                    let (dr, dc, ds) = if gpu.is_some() {
                        (16, 4096, 32)
                    } else {
                        (4, 256, 8)
                    };
                    let heads = HeadConfig::new(qo_heads, kv_heads, head_dim)?;
                    let decode_kernel = match decode_kernel.as_deref() {
                        None => None,
                        Some("cuda-core") => Some(ferrinfer::ops::DecodeKernel::CudaCore),
                        Some("tensor-core") => Some(ferrinfer::ops::DecodeKernel::TensorCore),
                        Some(other) => {
                            return Err(ferrinfer::Error::invalid(
                                "demo",
                                "--decode-kernel",
                                format!("{other} (cuda-core or tensor-core)"),
                            ))
                        }
                    };
                    cli::demo::run(
                        gpu,
                        cli::demo::DemoConfig {
                            requests: requests.unwrap_or(dr),
                            context: context.unwrap_or(dc),
                            steps: steps.unwrap_or(ds),
                            layers,
                            heads,
                            decode_split,
                            decode_kernel,
                        },
                    )
                    .map(|_| true)
                })
                .map_err(Into::into)
        }
    };
    match r {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}
