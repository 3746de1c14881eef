//! Model weights in f32, converted from the GGUF file at load time, in the layouts the forward
//! pass multiplies by: every matrix row-major `[out_features, in_features]` (ggml's
//! `[in, out]` dimensions), Q|K|V fused into one matrix and gate|up into another, so a block
//! runs four matrix products.
use crate::config::ModelConfig;
use crate::error::Result;
use crate::gguf::ModelFile;
use crate::runner::packed::PackedMatrix;

/// A block's matrices in the GGUF's own block format, where they have one (the CPU backend's
/// decode steps multiply by these: fewer bytes per step).
#[derive(Default)]
pub struct PackedLayer {
    /// Q|K|V.
    pub wqkv: Option<PackedMatrix>,
    /// Output projection.
    pub wo: Option<PackedMatrix>,
    /// Gate|up.
    pub w_gate_up: Option<PackedMatrix>,
    /// Down projection.
    pub w_down: Option<PackedMatrix>,
}

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
    /// Block-format copies of every block's matrices (empty entries for f32/f16 tensors).
    pub packed_layers: Vec<PackedLayer>,
    /// Block-format copy of the LM head.
    pub packed_head: Option<PackedMatrix>,
}

impl Weights {
    /// Random weights of `cfg`'s shapes (seeded): matrices uniform in ±1/√fan-in, norms near 1,
    /// embedding uniform in ±1, the LM head tied; no block-format copies (the CPU backend then
    /// multiplies in f32). For tests and benchmarks that need a model of some geometry but
    /// not its file (the speed of a step does not depend on the values).
    pub fn random(cfg: &ModelConfig, seed: u64) -> Result<Self> {
        use rand::{Rng, SeedableRng};
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        let embed = (0..cfg.vocab * cfg.dim)
            .map(|_| r.random_range(-1.0f32..1.0))
            .collect();
        let mut mat = |rows: usize, cols: usize| -> Vec<f32> {
            let a = 1.0 / (cols as f32).sqrt();
            (0..rows * cols).map(|_| r.random_range(-a..a)).collect()
        };
        let (d, f, hd) = (cfg.dim, cfg.ffn_dim, cfg.head_dim);
        let (q, kv) = (cfg.q_heads * hd, cfg.kv_heads * hd);
        let norm = |n: usize| vec![1.0f32; n];
        let layers = (0..cfg.layers)
            .map(|_| LayerWeights {
                attn_norm: norm(d),
                wqkv: mat(q + 2 * kv, d),
                wo: mat(d, q),
                ffn_norm: norm(d),
                w_gate_up: mat(2 * f, d),
                w_down: mat(d, f),
            })
            .collect();
        Ok(Self {
            embed,
            layers,
            final_norm: norm(d),
            lm_head: None,
            inv_freq: cfg.rope.inv_freq(hd, None)?,
            packed_layers: (0..cfg.layers).map(|_| PackedLayer::default()).collect(),
            packed_head: None,
        })
    }

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
        let mut packed_layers = Vec::with_capacity(cfg.layers);
        let pk = |name: &str, n: usize, k: usize| -> Result<Option<PackedMatrix>> {
            let (ty, bytes) = file.tensor_bytes(name, &[k, n])?;
            PackedMatrix::new(ty, n, k, bytes)
        };
        for l in 0..cfg.layers {
            let b = |n: &str| format!("blk.{l}.{n}.weight");
            packed_layers.push(PackedLayer {
                wqkv: PackedMatrix::stack(vec![
                    pk(&b("attn_q"), q, d)?,
                    pk(&b("attn_k"), kv, d)?,
                    pk(&b("attn_v"), kv, d)?,
                ]),
                wo: pk(&b("attn_output"), d, q)?,
                w_gate_up: PackedMatrix::stack(vec![
                    pk(&b("ffn_gate"), f, d)?,
                    pk(&b("ffn_up"), f, d)?,
                ]),
                w_down: pk(&b("ffn_down"), d, f)?,
            });
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
        let head_name = if cfg.tied_embeddings {
            "token_embd.weight"
        } else {
            "output.weight"
        };
        let packed_head = pk(head_name, cfg.vocab, d)?;
        progress(total, total);
        Ok(Self {
            embed,
            layers,
            final_norm,
            lm_head,
            inv_freq,
            packed_layers,
            packed_head,
        })
    }
}
