//! Model runners: one forward pass of a batch step over the paged KV cache, on the CPU backend
//! ([`cpu::CpuRunner`]) or the GPU. The scheduler drives them through [`ModelRunner`].
pub mod cpu;
pub mod gpu;
pub mod linear;
pub mod packed;

use ferrinfer::kv::SeqId;

use crate::config::ModelConfig;
use crate::error::Result;

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

    /// Whether the step has no token.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// What the scheduler needs from a model on some backend.
pub trait ModelRunner {
    /// The model's hyperparameters.
    fn config(&self) -> &ModelConfig;
    /// Starts an empty sequence in the KV cache.
    fn add_sequence(&mut self) -> SeqId;
    /// Frees a sequence's pages.
    fn free(&mut self, id: SeqId) -> Result<()>;
    /// Tokens per KV page.
    fn page_size(&self) -> usize;
    /// Pages in the cache.
    fn total_pages(&self) -> usize;
    /// Pages not used by any sequence.
    fn free_pages(&self) -> usize;
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
    /// The backend's name, for reports.
    fn backend(&self) -> String;
}

/// A runner chosen at run time (CPU or GPU) drives the same engine.
impl<R: ModelRunner + ?Sized> ModelRunner for Box<R> {
    fn config(&self) -> &ModelConfig {
        (**self).config()
    }
    fn add_sequence(&mut self) -> SeqId {
        (**self).add_sequence()
    }
    fn free(&mut self, id: SeqId) -> Result<()> {
        (**self).free(id)
    }
    fn page_size(&self) -> usize {
        (**self).page_size()
    }
    fn total_pages(&self) -> usize {
        (**self).total_pages()
    }
    fn free_pages(&self) -> usize {
        (**self).free_pages()
    }
    fn forward(&mut self, step: &StepInput) -> Result<Vec<f32>> {
        (**self).forward(step)
    }
    fn forward_greedy(&mut self, step: &StepInput) -> Result<Vec<u32>> {
        (**self).forward_greedy(step)
    }
    fn backend(&self) -> String {
        (**self).backend()
    }
}
