//! The `ferrinfer` command line.
use clap::{Parser, Subcommand};
use ferrinfer::cli;
use ferrinfer::HeadConfig;

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

#[derive(Subcommand)]
enum Cmd {
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
    /// The main job: a multi-request serving loop (prompt prefill, then decode) through the paged
    /// KV cache (SmolLM2-135M attention geometry by default).
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
        Cmd::Info => cli::info::run().map(|_| true),
        Cmd::Check { cases, seed } => cli::check::run(cases, seed),
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
            cli::discover_or_say().and_then(|gpu| {
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
