//! Model weights in f32, converted from the GGUF file at load time, in the layouts the forward
//! pass multiplies by: every matrix row-major `[out_features, in_features]` (ggml's
//! `[in, out]` dimensions), Q|K|V fused into one matrix and gate|up into another, so a block
//! runs four matrix products.
use crate::config::ModelConfig;
use crate::error::Result;
use crate::gguf::ModelFile;

/// One transformer block.
pub struct LayerWeights {
    /// RMSNorm before attention, `[dim]`.
    pub attn_norm: Vec<f32>,
    /// Q, K, V projections stacked, `[(q_heads + 2·kv_heads)·head_dim, dim]`.
    pub wqkv: Vec<f32>,
    /// Output projection, `[dim, q_heads·head_dim]`.
    pub wo: Vec<f32>,
    /// RMSNorm before the MLP, `[dim]`.
    pub ffn_norm: Vec<f32>,
    /// Gate and up projections stacked, `[2·ffn_dim, dim]`.
    pub w_gate_up: Vec<f32>,
    /// Down projection, `[dim, ffn_dim]`.
    pub w_down: Vec<f32>,
}

/// The whole model.
pub struct Weights {
    /// Token embedding, `[vocab, dim]`.
    pub embed: Vec<f32>,
    /// Blocks.
    pub layers: Vec<LayerWeights>,
    /// Final RMSNorm, `[dim]`.
    pub final_norm: Vec<f32>,
    /// LM head `[vocab, dim]`; `None` when tied to the embedding.
    pub lm_head: Option<Vec<f32>>,
    /// RoPE inverse frequencies, `[rotary_dim / 2]`.
    pub inv_freq: Vec<f32>,
}

impl Weights {
    /// The LM head (the embedding when tied).
    pub fn head(&self) -> &[f32] {
        self.lm_head.as_deref().unwrap_or(&self.embed)
    }

    /// Reads and converts every tensor; `progress(done, total)` after each block.
    pub fn load(
        file: &ModelFile,
        cfg: &ModelConfig,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let (d, f, hd) = (cfg.dim, cfg.ffn_dim, cfg.head_dim);
        let (q, kv) = (cfg.q_heads * hd, cfg.kv_heads * hd);
        let total = cfg.layers + 2;
        let embed = file.tensor_f32("token_embd.weight", &[d, cfg.vocab])?;
        progress(1, total);
        let mut layers = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let t = |n: &str, dims: &[usize]| file.tensor_f32(&format!("blk.{l}.{n}.weight"), dims);
            let mut wqkv = t("attn_q", &[d, q])?;
            wqkv.extend(t("attn_k", &[d, kv])?);
            wqkv.extend(t("attn_v", &[d, kv])?);
            let mut w_gate_up = t("ffn_gate", &[d, f])?;
            w_gate_up.extend(t("ffn_up", &[d, f])?);
            layers.push(LayerWeights {
                attn_norm: t("attn_norm", &[d])?,
                wqkv,
                wo: t("attn_output", &[q, d])?,
                ffn_norm: t("ffn_norm", &[d])?,
                w_gate_up,
                w_down: t("ffn_down", &[f, d])?,
            });
            progress(l + 2, total);
        }
        let final_norm = file.tensor_f32("output_norm.weight", &[d])?;
        let lm_head = if cfg.tied_embeddings {
            None
        } else {
            Some(file.tensor_f32("output.weight", &[d, cfg.vocab])?)
        };
        let factors = match file.gguf.tensor("rope_freqs.weight") {
            Some(_) => Some(file.tensor_f32("rope_freqs.weight", &[cfg.rope.rotary_dim / 2])?),
            None => None,
        };
        let inv_freq = cfg.rope.inv_freq(hd, factors.as_deref())?;
        progress(total, total);
        Ok(Self {
            embed,
            layers,
            final_norm,
            lm_head,
            inv_freq,
        })
    }
}
