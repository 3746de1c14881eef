//! # ferrinfer-engine
//!
//! A Llama-architecture model runner on ferrinfer's paged KV cache and attention ops: GGUF
//! loading, the model's own tokenizer and chat template, a forward pass per batch step,
//! continuous batching with chunked prefill and preemption, and sampling.
//!
//! | concept                         | type / function                  | file              |
//! |---------------------------------|----------------------------------|-------------------|
//! | GGUF container, tensor formats  | [`gguf::ModelFile`]              | `gguf/*.rs`       |
//! | hyperparameters                 | [`ModelConfig`]                  | `config.rs`       |
//! | weights in forward layout       | [`Weights`]                      | `weights.rs`      |
//! | tokenizer, chat template        | [`Tokenizer`]                    | `tokenizer.rs`    |
//! | one forward step (CPU backend)  | [`runner::cpu::CpuRunner`]       | `runner/cpu.rs`   |
//! | one forward step (GPU)          | [`runner::gpu::GpuRunner`]       | `runner/gpu/`     |
//! | continuous batching, sampling   | [`Engine`]                       | `scheduler.rs`    |
//! | prefix caching (kept KV pages)  | [`prefix::PrefixCache`]          | `prefix.rs`       |
//! | loading a model file            | [`Model::load`]                  | `lib.rs`          |
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod config;
pub mod error;
pub mod gguf;
pub mod prefix;
pub mod runner;
pub mod scheduler;
pub mod tokenizer;
pub mod weights;

use std::path::Path;

pub use config::ModelConfig;
pub use error::{EngineError, Result};
pub use ferrinfer::cpu::sampling::SamplingParams;
pub use scheduler::{Engine, Event, FinishReason, Request, RequestId, SchedulerConfig};
pub use tokenizer::{Message, Tokenizer};
pub use weights::Weights;

/// A loaded model file: hyperparameters, weights and tokenizer.
pub struct Model {
    /// Hyperparameters.
    pub config: ModelConfig,
    /// Weights (f32), shareable by several runners.
    pub weights: std::sync::Arc<Weights>,
    /// Tokenizer and chat template.
    pub tokenizer: Tokenizer,
}

impl Model {
    /// Loads a GGUF file; `progress(done, total)` reports the weight conversion.
    pub fn load(path: &Path, progress: &mut dyn FnMut(usize, usize)) -> Result<Self> {
        let file = gguf::ModelFile::open(path)?;
        let config = ModelConfig::from_gguf(&file)?;
        let tokenizer = Tokenizer::from_gguf(&file)?;
        if tokenizer.vocab_size() > config.vocab {
            return Err(EngineError::Model(format!(
                "tokenizer has {} tokens, the embedding {} rows",
                tokenizer.vocab_size(),
                config.vocab
            )));
        }
        let weights = std::sync::Arc::new(Weights::load(&file, &config, progress)?);
        Ok(Self {
            config,
            weights,
            tokenizer,
        })
    }
}
