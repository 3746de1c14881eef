//! `ferrinfer serve`: the OpenAI-compatible HTTP server (`ferrinfer-server`) over the engine.
//! The model is loaded on the server's engine thread, which keeps the engine (and the GPU
//! context) for its whole life.
use std::sync::Arc;

use ferrinfer_engine::{EngineError, Result};
use ferrinfer_server::ServerConfig;

use crate::ModelArgs;

/// Serves until Ctrl-C / SIGTERM; `Ok(false)` (exit 1) when the server could not start.
pub fn run(model: ModelArgs, mut cfg: ServerConfig) -> Result<bool> {
    // The name clients see: --served-model-name, else the file's stem (an id without spaces,
    // e.g. `SmolLM2-135M-Instruct.Q4_1`).
    if cfg.model_name.is_empty() {
        let path = crate::load::model_path(&model);
        if let Some(stem) = path.file_stem() {
            cfg.model_name = stem.to_string_lossy().into_owned();
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ferrinfer-http")
        .build()
        .map_err(|e| EngineError::Io {
            path: "tokio runtime".into(),
            source: e,
        })?;
    let served = rt.block_on(ferrinfer_server::serve(cfg, move || {
        let l = crate::load::load(&model)?;
        Ok((l.engine, Arc::new(l.tokenizer)))
    }));
    match served {
        Ok(()) => Ok(true),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(false)
        }
    }
}
