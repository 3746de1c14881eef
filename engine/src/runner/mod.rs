//! Model runners: one forward pass of a batch step over the paged KV cache, on the CPU backend
//! ([`cpu::CpuRunner`]) or the GPU. The scheduler drives them through [`ModelRunner`].
pub mod cpu;
pub mod gpu;
pub mod linear;
pub mod packed;
#[cfg(target_arch = "x86_64")]
mod packed_avx2;

use ferrinfer::kv::{KvLayout, KvPoolConfig, PagedKvCache, SeqId};
use half::f16;

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};

/// Tokens per KV page (both runners).
pub const PAGE_SIZE: usize = 16;

/// The KV pool geometry of `cfg` and the page count holding `kv_tokens` tokens.
pub(crate) fn kv_geometry(cfg: &ModelConfig, kv_tokens: usize) -> (KvPoolConfig, usize) {
    let pool = KvPoolConfig {
        num_pages: 0,
        page_size: PAGE_SIZE,
        num_kv_heads: cfg.kv_heads,
        head_dim: cfg.head_dim,
        layout: KvLayout::Nhd,
    };
    (pool, kv_tokens.div_ceil(PAGE_SIZE).max(1))
}

/// Checks a step against the model and the cache before anything is changed.
pub(crate) fn check_step(
    step: &StepInput,
    cfg: &ModelConfig,
    len: impl Fn(SeqId) -> Result<usize>,
) -> Result<()> {
    let n = step.tokens.len();
    let bad = |m: String| Err(EngineError::Request(m));
    if step.seqs.iter().map(|s| s.1).sum::<usize>() != n || step.positions.len() != n {
        return bad(format!(
            "step of {n} tokens, {} positions, sequences bringing {}",
            step.positions.len(),
            step.seqs.iter().map(|s| s.1).sum::<usize>()
        ));
    }
    if let Some(t) = step.tokens.iter().find(|&&t| t as usize >= cfg.vocab) {
        return bad(format!("token {t} outside the vocabulary of {}", cfg.vocab));
    }
    if let Some(r) = step.logits_rows.iter().find(|&&r| r >= n) {
        return bad(format!("logits row {r} of a {n}-token step"));
    }
    let mut row = 0;
    for &(id, k) in &step.seqs {
        let start = len(id)?;
        for (i, &p) in step.positions[row..row + k].iter().enumerate() {
            if p as i64 != (start + i) as i64 {
                return bad(format!(
                    "sequence {id:?}: position {p}, expected {}",
                    start + i
                ));
            }
        }
        if start + k > cfg.context {
            return bad(format!(
                "sequence {id:?} would reach {} tokens, the model's context is {}",
                start + k,
                cfg.context
            ));
        }
        row += k;
    }
    Ok(())
}

/// One engine step: new tokens of several sequences, appended and attended in one pass.
#[derive(Clone, Debug, Default)]
pub struct StepInput {
    /// Sequences and how many new tokens each brings, in row order.
    pub seqs: Vec<(SeqId, usize)>,
    /// The new tokens, concatenated.
    pub tokens: Vec<u32>,
    /// Position of each new token (its index in its sequence).
    pub positions: Vec<i32>,
    /// Rows (indices into `tokens`) whose next-token logits are wanted.
    pub logits_rows: Vec<usize>,
}

impl StepInput {
    /// Appends `tokens` of sequence `id` starting at position `start`; asks for the logits of
    /// the last one when `want_logits`.
    pub fn push(&mut self, id: SeqId, start: usize, tokens: &[u32], want_logits: bool) {
        self.seqs.push((id, tokens.len()));
        self.positions
            .extend((start..start + tokens.len()).map(|p| p as i32));
        self.tokens.extend_from_slice(tokens);
        if want_logits && !tokens.is_empty() {
            self.logits_rows.push(self.tokens.len() - 1);
        }
    }

    /// FlashInfer's `qo_indptr` of the step: `[0, n0, n0 + n1, ...]`.
    pub fn qo_indptr(&self) -> Vec<i32> {
        let mut v = Vec::with_capacity(self.seqs.len() + 1);
        v.push(0i32);
        for &(_, k) in &self.seqs {
            v.push(v[v.len() - 1] + k as i32);
        }
        v
    }

    /// Whether the step has no token.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// What the scheduler needs from a model on some backend.
pub trait ModelRunner {
    /// The model's hyperparameters.
    fn config(&self) -> &ModelConfig;
    /// The runner's paged KV cache.
    fn cache(&self) -> &PagedKvCache<f16>;
    /// The runner's paged KV cache, mutably.
    fn cache_mut(&mut self) -> &mut PagedKvCache<f16>;
    /// Starts an empty sequence in the KV cache.
    fn add_sequence(&mut self) -> SeqId {
        self.cache_mut().add_sequence()
    }
    /// Frees a sequence's pages.
    fn free(&mut self, id: SeqId) -> Result<()> {
        Ok(self.cache_mut().free(id)?)
    }
    /// Tokens per KV page.
    fn page_size(&self) -> usize {
        self.cache().config().page_size
    }
    /// Pages in the cache.
    fn total_pages(&self) -> usize {
        self.cache().table().num_pages()
    }
    /// Pages not used by any sequence.
    fn free_pages(&self) -> usize {
        self.cache().table().free_pages()
    }
    /// Appends the step's tokens to their sequences and runs the model over them; returns the
    /// logits of `step.logits_rows`, `[rows, vocab]` row-major. On `OutOfPages` nothing was
    /// changed.
    fn forward(&mut self, step: &StepInput) -> Result<Vec<f32>>;
    /// As [`ModelRunner::forward`], but returns only the argmax token of each logits row (a
    /// GPU runner picks them on the device and copies back one id per row instead of a
    /// vocabulary of logits).
    fn forward_greedy(&mut self, step: &StepInput) -> Result<Vec<u32>> {
        let logits = self.forward(step)?;
        let vocab = self.config().vocab;
        logits
            .chunks_exact(vocab)
            .map(|row| Ok(ferrinfer::cpu::sampling::argmax(row)?))
            .collect()
    }
    /// Runs throw-away steps so that the first real requests do not pay for first-use work
    /// (a GPU's lazily loaded kernels, its BLAS library's set-up, graph captures). Leaves the
    /// cache as it found it. A no-op unless the backend has such work.
    fn warm_up(&mut self) -> Result<()> {
        Ok(())
    }
    /// The backend's name, for reports.
    fn backend(&self) -> String;
}

/// A runner chosen at run time (CPU or GPU) drives the same engine.
impl<R: ModelRunner + ?Sized> ModelRunner for Box<R> {
    fn config(&self) -> &ModelConfig {
        (**self).config()
    }
    fn cache(&self) -> &PagedKvCache<f16> {
        (**self).cache()
    }
    fn cache_mut(&mut self) -> &mut PagedKvCache<f16> {
        (**self).cache_mut()
    }
    fn forward(&mut self, step: &StepInput) -> Result<Vec<f32>> {
        (**self).forward(step)
    }
    fn forward_greedy(&mut self, step: &StepInput) -> Result<Vec<u32>> {
        (**self).forward_greedy(step)
    }
    fn warm_up(&mut self) -> Result<()> {
        (**self).warm_up()
    }
    fn backend(&self) -> String {
        (**self).backend()
    }
}
