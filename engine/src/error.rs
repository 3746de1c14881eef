//! The engine's error type: every failure is a value, never a panic.
use thiserror::Error;

/// Errors of the model engine.
#[derive(Debug, Error)]
pub enum EngineError {
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a well-formed GGUF file.
    #[error("malformed GGUF: {0}")]
    Gguf(String),
    /// The file is GGUF but not a model this engine runs (missing tensors, bad metadata).
    #[error("model: {0}")]
    Model(String),
    /// The tokenizer or chat template could not be built or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A request is invalid (empty prompt, too long, bad sampling parameters, ...).
    #[error("invalid request: {0}")]
    Request(String),
    /// The KV cache cannot hold a request even when it runs alone.
    #[error("request needs {needed} KV pages, the cache has {capacity}")]
    TooLarge {
        /// Pages the request needs.
        needed: usize,
        /// Pages in the cache.
        capacity: usize,
    },
    /// An attention op, the KV cache or the GPU runtime failed.
    #[error(transparent)]
    Kernel(#[from] ferrinfer::Error),
}

/// `Result` with [`EngineError`].
pub type Result<T> = std::result::Result<T, EngineError>;
