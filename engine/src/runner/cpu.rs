//! The model on the CPU backend: f32 weights and activations, the gemm crate for matrix
//! products, ferrinfer's CPU ops for norms, RoPE, the SwiGLU gate and paged attention, and an
//! f16 paged KV cache in host memory. Attention is batch decode when every sequence of the step
//! brings one token, batch prefill otherwise (as on the GPU): for a decode query both run the
//! same per-query kernel on the same keys, so the results are bit-identical, but the prefill op
//! gathers the whole batch's K/V into one buffer first and parallelises over query rows, which
//! made a decode step's attention 2.5× slower (64 requests × 1280 tokens at SmolLM2's geometry,
//! 2 cores: 43–45 ms per layer against 17–18 ms; docs/perf-notes.md).
use ferrinfer::cpu::{activation, batch_decode, batch_prefill_paged, norm, rope};
use ferrinfer::kv::{PagedKvCache, PoolSize, RowStrides, Rows, SeqId};
use ferrinfer::{AttentionOptions, HeadConfig};
use half::f16;
use std::sync::Arc;

use super::linear::linear;
use super::packed::PackedMatrix;
use super::{check_step, kv_geometry, ModelRunner, StepInput};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::weights::Weights;

/// Steps of at most this many rows multiply by the packed (block-format) weights: they are
/// bound by reading the weights, which the packed form reads 4–7× fewer bytes of. Larger
/// steps (prompt chunks) are bound by arithmetic, where the f32 GEMM is faster.
pub const PACKED_MAX_ROWS: usize = 16;

/// `out = x · Wᵀ`, by the packed weights when the step is small and they exist.
fn mm(
    x: &[f32],
    w: &[f32],
    packed: Option<&PackedMatrix>,
    k: usize,
    n: usize,
    out: &mut [f32],
) -> Result<()> {
    match packed {
        Some(p) if x.len() / k <= PACKED_MAX_ROWS => p.matmul(x, out),
        _ => linear(x, w, k, n, out),
    }
}

/// A model on the CPU backend.
pub struct CpuRunner {
    cfg: ModelConfig,
    w: Arc<Weights>,
    cache: PagedKvCache<f16>,
    heads: HeadConfig,
    /// Prompt chunks and mixed steps: causal.
    opts: AttentionOptions,
    /// Decode steps: a decode query is its sequence's last token and sees every key.
    decode_opts: AttentionOptions,
    /// Whether decode steps go to the batch decode op (else to batch prefill, as mixed steps).
    decode_op: bool,
}

impl CpuRunner {
    /// The model with a KV cache of `kv_tokens` tokens (rounded up to whole pages).
    pub fn new(cfg: ModelConfig, w: Arc<Weights>, kv_tokens: usize) -> Result<Self> {
        let (pool, pages) = kv_geometry(&cfg, kv_tokens);
        let cache = PagedKvCache::new_cpu_layers(pool, PoolSize::Pages(pages), cfg.layers)?;
        let heads = HeadConfig::new(cfg.q_heads, cfg.kv_heads, cfg.head_dim)?;
        Ok(Self {
            cfg,
            w,
            cache,
            heads,
            opts: AttentionOptions::default().with_causal(true),
            decode_opts: AttentionOptions::default(),
            decode_op: true,
        })
    }

    /// Runs steps of one-token requests on the batch decode op (`true`, the default) or, as
    /// steps with prompt chunks, on batch prefill (`false`: the runner before, for before/after
    /// measurements; the tokens are the same).
    pub fn set_decode_op(&mut self, on: bool) {
        self.decode_op = on;
    }
}

fn to_f16(src: &[f32], dst: &mut Vec<f16>) {
    dst.clear();
    dst.extend(src.iter().map(|&x| f16::from_f32(x)));
}

impl ModelRunner for CpuRunner {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn cache(&self) -> &PagedKvCache<f16> {
        &self.cache
    }

    fn cache_mut(&mut self) -> &mut PagedKvCache<f16> {
        &mut self.cache
    }

    fn backend(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn forward(&mut self, step: &StepInput) -> Result<Vec<f32>> {
        // The whole pass on a worker of rayon's pool: its ~120 products fork from a worker
        // (the other worker steals) instead of each being injected from an outside thread
        // that then sleeps until it is done (two more thread hand-offs per product).
        rayon::scope(|_| self.forward_in_pool(step))
    }
}

impl CpuRunner {
    fn forward_in_pool(&mut self, step: &StepInput) -> Result<Vec<f32>> {
        check_step(step, &self.cfg, |id| Ok(self.cache.len(id)?))?;
        let n = step.tokens.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let c = &self.cfg;
        let (d, f, hd) = (c.dim, c.ffn_dim, c.head_dim);
        let (qd, kvd) = (c.q_heads * hd, c.kv_heads * hd);
        // Reserve every sequence's new tokens first: out of pages leaves the cache unchanged.
        let kv_step = self.cache.begin_append(&step.seqs)?;
        let ids: Vec<SeqId> = step.seqs.iter().map(|s| s.0).collect();
        let pages = self.cache.batch_pages(&ids)?;
        let qo_indptr = step.qo_indptr();
        let decode_step = self.decode_op && step.seqs.iter().all(|s| s.1 == 1);
        let mut x = Vec::with_capacity(n * d);
        for &t in &step.tokens {
            x.extend_from_slice(&self.w.embed[t as usize * d..(t as usize + 1) * d]);
        }
        let mut h = vec![0f32; n * d];
        let mut qkv = vec![0f32; n * c.qkv_dim()];
        let (mut q, mut k, mut v) = (vec![0f32; n * qd], vec![0f32; n * kvd], vec![0f32; n * kvd]);
        let (mut q16, mut k16, mut v16) = (Vec::new(), Vec::new(), Vec::new());
        let mut o16 = vec![f16::ZERO; n * qd];
        let mut o = vec![0f32; n * qd];
        let mut proj = vec![0f32; n * d];
        let mut gu = vec![0f32; n * 2 * f];
        let mut act = vec![0f32; n * f];
        let rs = RowStrides::contiguous(c.kv_heads, hd);
        norm::rms_norm(&x, &self.w.layers[0].attn_norm, c.rms_eps, &mut h)?;
        for (l, lw) in self.w.layers.iter().enumerate() {
            let pw = self.w.packed_layers.get(l);
            mm(
                &h,
                &lw.wqkv,
                pw.and_then(|p| p.wqkv.as_ref()),
                d,
                c.qkv_dim(),
                &mut qkv,
            )?;
            for (r, row) in qkv.chunks_exact(c.qkv_dim()).enumerate() {
                q[r * qd..(r + 1) * qd].copy_from_slice(&row[..qd]);
                k[r * kvd..(r + 1) * kvd].copy_from_slice(&row[qd..qd + kvd]);
                v[r * kvd..(r + 1) * kvd].copy_from_slice(&row[qd + kvd..]);
            }
            let style = c.rope.style;
            rope::apply_rope(
                &mut q,
                c.q_heads,
                hd,
                &step.positions,
                &self.w.inv_freq,
                style,
            )?;
            rope::apply_rope(
                &mut k,
                c.kv_heads,
                hd,
                &step.positions,
                &self.w.inv_freq,
                style,
            )?;
            to_f16(&k, &mut k16);
            to_f16(&v, &mut v16);
            to_f16(&q, &mut q16);
            self.cache
                .append_layer(l, &kv_step, Rows::Host(&k16), rs, Rows::Host(&v16), rs)?;
            let pool = self.cache.pool(l)?;
            if decode_step {
                batch_decode(
                    &self.heads,
                    &self.decode_opts,
                    &q16,
                    pool,
                    &pages,
                    &mut o16,
                    None,
                )?;
            } else {
                batch_prefill_paged(
                    &self.heads,
                    &self.opts,
                    &q16,
                    &qo_indptr,
                    pool,
                    &pages,
                    &mut o16,
                    None,
                )?;
            }
            for (a, b) in o.iter_mut().zip(&o16) {
                *a = b.to_f32();
            }
            mm(&o, &lw.wo, pw.and_then(|p| p.wo.as_ref()), qd, d, &mut proj)?;
            norm::add_rms_norm(&mut x, &proj, &lw.ffn_norm, c.rms_eps, &mut h)?;
            mm(
                &h,
                &lw.w_gate_up,
                pw.and_then(|p| p.w_gate_up.as_ref()),
                d,
                2 * f,
                &mut gu,
            )?;
            activation::silu_and_mul(&gu, f, &mut act)?;
            mm(
                &act,
                &lw.w_down,
                pw.and_then(|p| p.w_down.as_ref()),
                f,
                d,
                &mut proj,
            )?;
            let next_norm = match self.w.layers.get(l + 1) {
                Some(next) => &next.attn_norm,
                None => &self.w.final_norm,
            };
            norm::add_rms_norm(&mut x, &proj, next_norm, c.rms_eps, &mut h)?;
        }
        // h now holds the final-normed hidden states; the LM head runs on the wanted rows only.
        let rows: Vec<f32> = step
            .logits_rows
            .iter()
            .flat_map(|&r| h[r * d..(r + 1) * d].iter().copied())
            .collect();
        let mut logits = vec![0f32; step.logits_rows.len() * c.vocab];
        mm(
            &rows,
            self.w.head(),
            self.w.packed_head.as_ref(),
            d,
            c.vocab,
            &mut logits,
        )?;
        Ok(logits)
    }
}
