//! A Llama-architecture model's hyperparameters, read from GGUF metadata (`{arch}.*` keys) —
//! nothing about any one model is hard-coded.
use ferrinfer::rope::{RopeConfig, RopeScaling, RopeStyle};

use crate::error::{EngineError, Result};
use crate::gguf::ModelFile;

/// Architectures whose GGUF tensors follow llama.cpp's `llama` layout.
const LLAMA_LIKE: &[&str] = &["llama"];

/// Hyperparameters of a decoder-only Llama-style transformer.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// `general.architecture`.
    pub arch: String,
    /// `general.name`, if present.
    pub name: String,
    /// Transformer blocks.
    pub layers: usize,
    /// Hidden size.
    pub dim: usize,
    /// MLP inner size.
    pub ffn_dim: usize,
    /// Query heads.
    pub q_heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab: usize,
    /// Trained context length.
    pub context: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Rotary embedding.
    pub rope: RopeConfig,
    /// Whether the LM head reuses the token embedding (no `output.weight`).
    pub tied_embeddings: bool,
}

fn num(f: &ModelFile, key: &str) -> Result<u64> {
    f.meta(key)?
        .as_u64()
        .ok_or_else(|| EngineError::Model(format!("metadata {key} is not a non-negative integer")))
}

fn opt_num(f: &ModelFile, key: &str) -> Result<Option<u64>> {
    match f.gguf.get(key) {
        None => Ok(None),
        Some(_) => num(f, key).map(Some),
    }
}

fn float(f: &ModelFile, key: &str) -> Result<Option<f32>> {
    match f.gguf.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(|x| Some(x as f32))
            .ok_or_else(|| EngineError::Model(format!("metadata {key} is not a number"))),
    }
}

/// A positive size that also fits the i32 tables of the kernels.
fn size(v: u64, key: &str) -> Result<usize> {
    if v == 0 || v > i32::MAX as u64 {
        return Err(EngineError::Model(format!(
            "metadata {key} = {v} out of range"
        )));
    }
    Ok(v as usize)
}

impl ModelConfig {
    /// Reads and checks the hyperparameters of `file`.
    pub fn from_gguf(file: &ModelFile) -> Result<Self> {
        let arch = file
            .meta("general.architecture")?
            .as_str()
            .ok_or_else(|| EngineError::Model("general.architecture is not a string".into()))?
            .to_string();
        if !LLAMA_LIKE.contains(&arch.as_str()) {
            return Err(EngineError::Model(format!(
                "architecture {arch} is not supported (supported: {LLAMA_LIKE:?})"
            )));
        }
        let k = |s: &str| format!("{arch}.{s}");
        let sz = |s: &str| -> Result<usize> { size(num(file, &k(s))?, &k(s)) };
        let layers = sz("block_count")?;
        let dim = sz("embedding_length")?;
        let ffn_dim = sz("feed_forward_length")?;
        let q_heads = sz("attention.head_count")?;
        let kv_heads = match opt_num(file, &k("attention.head_count_kv"))? {
            Some(v) => size(v, &k("attention.head_count_kv"))?,
            None => q_heads,
        };
        let head_dim = match opt_num(file, &k("attention.key_length"))? {
            Some(v) => size(v, &k("attention.key_length"))?,
            None => dim / q_heads,
        };
        if q_heads % kv_heads != 0 || head_dim == 0 {
            return Err(EngineError::Model(format!(
                "{q_heads} query heads, {kv_heads} KV heads, head dim {head_dim}"
            )));
        }
        if let Some(v) = opt_num(file, &k("attention.value_length"))? {
            if v as usize != head_dim {
                return Err(EngineError::Model(format!(
                    "value head dim {v} differs from key head dim {head_dim}"
                )));
            }
        }
        let embd = file.info("token_embd.weight")?;
        if embd.dims.len() != 2 || embd.dims[0] != dim as u64 {
            return Err(EngineError::Model(format!(
                "token_embd.weight has dimensions {:?}, hidden size {dim}",
                embd.dims
            )));
        }
        let vocab = size(embd.dims[1], "token_embd rows")?;
        let context = opt_num(file, &k("context_length"))?.unwrap_or(2048).max(1) as usize;
        let rms_eps = float(file, &k("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5);
        let theta = float(file, &k("rope.freq_base"))?.unwrap_or(10_000.0);
        let rotary_dim = match opt_num(file, &k("rope.dimension_count"))? {
            Some(v) => size(v, &k("rope.dimension_count"))?,
            None => head_dim,
        };
        let scaling = match file
            .gguf
            .get(&k("rope.scaling.type"))
            .and_then(|v| v.as_str())
        {
            None | Some("none") => RopeScaling::None,
            Some("linear") => RopeScaling::Linear {
                factor: float(file, &k("rope.scaling.factor"))?.unwrap_or(1.0),
            },
            // Llama 3.1 GGUFs carry the scaled frequencies as the `rope_freqs.weight` tensor.
            Some(_) if file.gguf.tensor("rope_freqs.weight").is_some() => RopeScaling::None,
            Some(other) => {
                return Err(EngineError::Model(format!(
                    "rope scaling {other} is not supported"
                )))
            }
        };
        let rope = RopeConfig {
            theta,
            rotary_dim,
            scaling,
            // GGUF's converter permuted Q/K rows so that rotated pairs are adjacent.
            style: RopeStyle::Interleaved,
        };
        rope.validate(head_dim)?;
        if !(rms_eps.is_finite() && rms_eps > 0.0) {
            return Err(EngineError::Model(format!("rms epsilon {rms_eps}")));
        }
        let name = file
            .gguf
            .get("general.name")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        Ok(Self {
            arch,
            name,
            layers,
            dim,
            ffn_dim,
            q_heads,
            kv_heads,
            head_dim,
            vocab,
            context,
            rms_eps,
            rope,
            tied_embeddings: file.gguf.tensor("output.weight").is_none(),
        })
    }

    /// Query heads per KV head.
    pub fn group(&self) -> usize {
        self.q_heads / self.kv_heads
    }

    /// Width of the fused Q|K|V projection's output.
    pub fn qkv_dim(&self) -> usize {
        (self.q_heads + 2 * self.kv_heads) * self.head_dim
    }
}
