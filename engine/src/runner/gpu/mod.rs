//! The model on the GPU: weights in device memory in the chosen precision ([`GpuWeights`]:
//! bf16 on tensor cores by default, or f32), cuBLAS (loaded at run time) for the matrix
//! products, ferrinfer's model kernels for embedding, norms, RoPE and the SwiGLU gate, and
//! ferrinfer's paged KV cache (f16) with batch decode attention for steps of one-token
//! requests and batch prefill attention for the others ([`attention`]).
//!
//! Every buffer is allocated once, at the step's token capacity; the attention ops run in
//! CUDA-graph mode (plans rewritten in place each step), so a step allocates nothing on the
//! device. Everything runs on the runner's own stream ([`stream`]); decode steps replay as CUDA
//! graphs, and steps with up to [`PIECE_MAX_TOKENS`] prompt tokens replay piecewise: graphs
//! between the blocks' attentions, which run eagerly ([`graphs`]).
mod attention;
mod gemm;
mod graphs;
mod precision;
mod stream;

use std::borrow::Cow;
use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use ferrinfer::kv::{AppendStep, AppendTarget, PagedKvCache, PoolSize, RowStrides, Rows, SeqId};
use ferrinfer::ops::ModelKernels;
use ferrinfer::{DeviceBuffer, Gpu, HeadConfig};
use half::f16;

use self::attention::Attention;
use self::gemm::{blas_err, cublas_present, set_workspace, Products, WORKSPACE_BYTES};
use self::graphs::{Action, GraphKey, PieceKey, StepGraphs};
pub use self::graphs::{GraphStats, MAX_GRAPHS, MAX_PIECED, PIECE_MAX_TOKENS, PIECE_TOKEN_ALIGN};
pub use self::precision::GpuWeights;
use self::precision::{Bf16, Dense, Precision, F32};
use self::stream::RunnerStream;
use super::{check_step, kv_geometry, ModelRunner, StepInput};
use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::weights::Weights;

/// Activations whose type does not depend on the precision, at the step capacity (`cap`
/// tokens, `cap_rows` logits rows).
struct Buffers {
    ids: DeviceBuffer<u32>,
    positions: DeviceBuffer<i32>,
    rows: DeviceBuffer<u32>,
    /// The residual stream (f32 in every precision).
    x: DeviceBuffer<f32>,
    qkv: DeviceBuffer<f32>,
    q: DeviceBuffer<f16>,
    k: DeviceBuffer<f16>,
    v: DeviceBuffer<f16>,
    o16: DeviceBuffer<f16>,
    proj: DeviceBuffer<f32>,
    gu: DeviceBuffer<f32>,
    logits: DeviceBuffer<f32>,
    tokens_out: DeviceBuffer<u32>,
}

/// The matrix products' weights and inputs in one of the precisions.
enum Model {
    F32(Dense<F32>),
    Bf16(Dense<Bf16>),
}

/// A model on one GPU.
pub struct GpuRunner {
    cfg: ModelConfig,
    /// A handle of the caller's GPU that launches on the runner's own stream.
    gpu: Gpu,
    blas: CudaBlas,
    /// cuBLAS's workspace, fixed so that a captured product never allocates.
    _blas_workspace: DeviceBuffer<u8>,
    mk: ModelKernels,
    attn: Attention,
    /// The embedding table of the lookup (f32 in every precision: rows are copied into the
    /// f32 residual stream).
    embed: DeviceBuffer<f32>,
    final_norm: DeviceBuffer<f32>,
    inv_freq: DeviceBuffer<f32>,
    model: Model,
    cache: PagedKvCache<f16>,
    b: Buffers,
    cap: usize,
    cap_rows: usize,
    /// Decode-step graphs.
    graphs: StepGraphs<GraphKey>,
    /// Piecewise graphs of steps with prompt chunks.
    pieces: StepGraphs<PieceKey>,
    /// Products of steps with at most this many tokens on ferrinfer's few-row kernels (16-bit
    /// weights); 0, the default, for none (see [`GpuRunner::set_small_products`]).
    small_products: usize,
    /// RoPE fused into the KV append for steps launched whole (decode steps, eager or as
    /// graphs, and steps above the piecewise buckets): see [`GpuRunner::set_fused_append`].
    fused_append: bool,
    /// Last: everything above was made on this stream and must be dropped before it.
    _stream: RunnerStream,
}

impl GpuRunner {
    /// Uploads the model to `gpu` with its matrix products in `weights`' precision and a KV
    /// cache of `kv_tokens` tokens; steps may carry up to `step_tokens` tokens and `max_seqs`
    /// sequences.
    pub fn new(
        gpu: &Gpu,
        cfg: ModelConfig,
        w: Arc<Weights>,
        weights: GpuWeights,
        kv_tokens: usize,
        step_tokens: usize,
        max_seqs: usize,
    ) -> Result<Self> {
        if !cublas_present() {
            return Err(EngineError::Model(
                "cuBLAS (libcublas.so) was not found: install the CUDA toolkit's cuBLAS or run on the CPU backend".into(),
            ));
        }
        let (stream, on) = RunnerStream::new(gpu)?;
        let gpu = &on;
        let blas = CudaBlas::new(gpu.stream().clone()).map_err(blas_err)?;
        let blas_workspace = gpu.alloc::<u8>(WORKSPACE_BYTES)?;
        set_workspace(&blas, gpu.stream(), &blas_workspace)?;
        let mk = ModelKernels::new(gpu)?;
        let heads = HeadConfig::new(cfg.q_heads, cfg.kv_heads, cfg.head_dim)?;
        let (pool, pages) = kv_geometry(&cfg, kv_tokens);
        let (cap, cap_rows) = (step_tokens.max(1), step_tokens.min(max_seqs).max(1));
        let mut cache =
            PagedKvCache::new_gpu_layers(gpu, pool, PoolSize::Pages(pages), cfg.layers)?;
        // Every step's append metadata at addresses fixed per batch size (graph replays).
        cache.reserve_append_meta(cap, cap_rows, pages)?;
        let attn = Attention::new(gpu, heads, max_seqs, step_tokens, pages)?;
        let model = match weights {
            GpuWeights::F32 => Model::F32(Dense::new(gpu, &cfg, &w, cap, cap_rows)?),
            GpuWeights::Bf16 => Model::Bf16(Dense::new(gpu, &cfg, &w, cap, cap_rows)?),
        };
        let (d, f, hd) = (cfg.dim, cfg.ffn_dim, cfg.head_dim);
        let (qd, kvd) = (cfg.q_heads * hd, cfg.kv_heads * hd);
        let b = Buffers {
            ids: gpu.alloc(cap)?,
            positions: gpu.alloc(cap)?,
            rows: gpu.alloc(cap_rows)?,
            x: gpu.alloc(cap * d)?,
            qkv: gpu.alloc(cap * cfg.qkv_dim())?,
            q: gpu.alloc(cap * qd)?,
            k: gpu.alloc(cap * kvd)?,
            v: gpu.alloc(cap * kvd)?,
            o16: gpu.alloc(cap * qd)?,
            proj: gpu.alloc(cap * d)?,
            gu: gpu.alloc(cap * 2 * f)?,
            logits: gpu.alloc(cap_rows * cfg.vocab)?,
            tokens_out: gpu.alloc(cap_rows)?,
        };
        Ok(Self {
            embed: gpu.upload(&w.embed)?,
            final_norm: gpu.upload(&w.final_norm)?,
            inv_freq: gpu.upload(&w.inv_freq)?,
            model,
            cfg,
            gpu: gpu.clone(),
            blas,
            _blas_workspace: blas_workspace,
            mk,
            attn,
            cache,
            b,
            cap,
            cap_rows,
            graphs: StepGraphs::new(MAX_GRAPHS),
            pieces: StepGraphs::new(MAX_PIECED),
            small_products: 0,
            fused_append: fused_append_default(),
            _stream: stream,
        })
    }
}

impl GpuRunner {
    /// Runs steps of one-token requests on the batch decode op (`true`, the default) or, as
    /// steps with prompt chunks, on the batch prefill op (`false`: the runner before the decode
    /// path, kept for tests and before/after measurements).
    pub fn set_decode_op(&mut self, on: bool) {
        self.attn.set_decode_steps(on);
    }

    /// Replays decode steps as CUDA graphs and steps with prompt chunks piecewise (`true`, the
    /// default), or launches every kernel of every step (`false`). The same steps give
    /// bit-identical results either way: a step with prompt chunks runs over its bucketed token
    /// count in both cases.
    pub fn set_graphs(&mut self, on: bool) {
        self.graphs.set_enabled(on);
        self.pieces.set_enabled(on);
    }

    /// Runs the matrix products of steps with at most `max_rows` tokens on ferrinfer's
    /// few-row kernels (bf16 weights; rows in groups of `GEMV_GROUP_ROWS`, each row's result
    /// independent of the others) and the rest on cuBLAS; 0, the default, runs every product
    /// on cuBLAS. Off by default: measured on an H100 the graph-replayed step was slower with
    /// them before programmatic dependent launch (batch 1: 1.201 vs 1.143 ms; batch 4: 1.679
    /// vs 1.172 ms), and products whose kernel depends on the step's size make a request's
    /// tokens depend on its batch (`docs/decisions.md`). Captured graphs are dropped (they bake
    /// the products in).
    pub fn set_small_products(&mut self, max_rows: usize) {
        self.small_products = max_rows;
        self.graphs.clear();
        self.pieces.clear();
    }

    /// Writes each block's rotated K and its V straight into the KV cache from the QKV
    /// epilogue (`true`: [`ferrinfer::ops::ModelKernels::qkv_rope_append`], one launch per
    /// block fewer) or through the separate append launch (`false`). The same bits either way.
    /// Applies to steps launched whole — decode steps, eager or graph-replayed, and steps above
    /// the piecewise buckets; piecewise steps keep the append between their graphs (their
    /// pieces are replayed for steps whose append metadata lives elsewhere). Off unless
    /// `FERRINFER_FUSED_APPEND=1` until it has run on a GPU (`docs/decisions.md`). Captured
    /// graphs are dropped (they bake the launches in).
    pub fn set_fused_append(&mut self, on: bool) {
        self.fused_append = on;
        self.graphs.clear();
        self.pieces.clear();
    }

    /// Launches the model kernels, the KV append and the decode attention as programmatic
    /// dependents (`true`, Hopper: each overlaps its launch with the kernel before it;
    /// [`Gpu::set_dependent_launch`] of the runner's stream) or plainly (`false`, the default
    /// unless `FERRINFER_PDL=1`).
    /// The results are the same bits either way. Returns the setting in effect (`false`
    /// where the GPU's kernel image lacks the instruction). Captured graphs are dropped (their
    /// edges encode the setting).
    pub fn set_dependent_launch(&mut self, on: bool) -> bool {
        let on = self.gpu.set_dependent_launch(on);
        self.graphs.clear();
        self.pieces.clear();
        on
    }

    /// What the runner did with its decode steps so far (steps with prompts: see
    /// [`GpuRunner::piece_stats`]; those above [`PIECE_MAX_TOKENS`] are always launched).
    pub fn graph_stats(&self) -> GraphStats {
        self.graphs.stats()
    }

    /// What the runner did with its steps of at most [`PIECE_MAX_TOKENS`] tokens that carry
    /// prompt chunks (piecewise graphs).
    pub fn piece_stats(&self) -> GraphStats {
        self.pieces.stats()
    }
}

impl ModelRunner for GpuRunner {
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
        let w = match self.model {
            Model::F32(_) => GpuWeights::F32,
            Model::Bf16(_) => GpuWeights::Bf16,
        };
        let attn = if self.attn.decode_steps() {
            "decode steps on the decode op"
        } else {
            "every step on the prefill op"
        };
        let graphs = match (
            self.graphs.enabled(),
            self.graphs.failure().or(self.pieces.failure()),
        ) {
            (true, None) => "as CUDA graphs (steps with prompts piecewise)".to_string(),
            (_, Some(why)) => format!("CUDA graphs partly off: a capture failed ({why})"),
            (false, None) => "eager".to_string(),
        };
        let products = match (w, self.small_products) {
            (GpuWeights::Bf16, rows) if rows > 0 => {
                format!(", products of ≤ {rows}-token steps on ferrinfer's gemv")
            }
            _ => String::new(),
        };
        let pdl = if self.gpu.dependent_launch() {
            ", programmatic dependent launches"
        } else {
            ""
        };
        let fused = if self.fused_append {
            ", RoPE fused into the KV append"
        } else {
            ""
        };
        format!(
            "gpu ({}, {w} weights{products}, {attn}, {graphs}{pdl}{fused})",
            self.gpu.info().name
        )
    }

    /// A prompt of the largest step the runner takes (or what the free cache holds), then
    /// short prompts and single-token steps through both outputs (logits, device argmax): CUDA
    /// loads each kernel at its first launch and cuBLAS sets up per shape class, which cost a
    /// server's first requests tens of milliseconds; the short steps' graphs (decode and
    /// piecewise) are captured here too. Its sequences are freed afterwards.
    fn warm_up(&mut self) -> Result<()> {
        let ps = self.page_size();
        let room = (self.free_pages() * ps).saturating_sub(4 * ps);
        let long = self.cap.min(self.cfg.context.saturating_sub(8)).min(room);
        let vocab = self.cfg.vocab as u32;
        let tokens =
            |n: usize| -> Vec<u32> { (0..n as u32).map(|i| (7 * i + 1) % vocab).collect() };
        for (i, len) in [long, 16, 16].into_iter().enumerate() {
            // A cache too small for a step is skipped, not an error: it still serves what fits.
            if len == 0 || (len + 3).div_ceil(ps) > self.free_pages() || len + 3 > self.cfg.context
            {
                continue;
            }
            let id = self.add_sequence();
            let run = |r: &mut Self| -> Result<()> {
                let mut s = StepInput::default();
                s.push(id, 0, &tokens(len), true);
                r.forward_greedy(&s)?;
                for t in 0..3 {
                    let mut s = StepInput::default();
                    s.push(id, len + t, &[1], true);
                    if i == 2 && t == 2 {
                        r.forward(&s)?;
                    } else {
                        r.forward_greedy(&s)?;
                    }
                }
                Ok(())
            };
            let ran = run(self);
            self.free(id)?;
            ran?;
        }
        Ok(())
    }

    fn forward(&mut self, step: &StepInput) -> Result<Vec<f32>> {
        let r = self.run_to_logits(step, false)?;
        if r == 0 {
            return Ok(Vec::new());
        }
        Ok(self
            .gpu
            .download_prefix(&self.b.logits, r * self.cfg.vocab)?)
    }

    fn forward_greedy(&mut self, step: &StepInput) -> Result<Vec<u32>> {
        let r = self.run_to_logits(step, true)?;
        if r == 0 {
            return Ok(Vec::new());
        }
        let ids = self.gpu.download_prefix(&self.b.tokens_out, r)?;
        // A NaN logits row gives u32::MAX on the device: an error, as on the CPU.
        if ids.iter().any(|&t| t as usize >= self.cfg.vocab) {
            return Err(EngineError::Model(
                "non-finite logits (argmax found NaN)".into(),
            ));
        }
        Ok(ids)
    }
}

/// What a part of a step uses besides the precision-typed weights and buffers.
struct Step<'a> {
    cfg: &'a ModelConfig,
    mk: &'a ModelKernels,
    pr: Products<'a>,
    embed: &'a DeviceBuffer<f32>,
    inv_freq: &'a DeviceBuffer<f32>,
    final_norm: &'a DeviceBuffer<f32>,
    b: &'a mut Buffers,
    /// Where the part's block writes its K/V rows from the QKV epilogue (fused append).
    append: Option<AppendTarget<'a, f16>>,
    /// Rows the part's kernels run over (the step's tokens, or its bucket).
    n: usize,
    /// Logits rows the head runs over.
    r: usize,
}

impl Model {
    fn blocks(&self) -> usize {
        match self {
            Model::F32(m) => m.layers.len(),
            Model::Bf16(m) => m.layers.len(),
        }
    }
}

impl GpuRunner {
    /// Runs a step through the LM head (and, with `greedy`, the argmax of each logits row into
    /// `self.b.tokens_out`); the logits of `step.logits_rows` are left in `self.b.logits`.
    /// Returns the number of logits rows.
    fn run_to_logits(&mut self, step: &StepInput, greedy: bool) -> Result<usize> {
        check_step(step, &self.cfg, |id| Ok(self.cache.len(id)?))?;
        let n = step.tokens.len();
        let r = step.logits_rows.len();
        if n == 0 {
            return Ok(0);
        }
        if n > self.cap || r > self.cap_rows || step.seqs.len() > self.cap_rows {
            return Err(EngineError::Request(format!(
                "step of {n} tokens / {r} logits rows exceeds the runner's capacity {} / {}",
                self.cap, self.cap_rows
            )));
        }
        // The per-step data, written before the launches (or the graph replay) read it.
        let kv_step = self.cache.begin_append(&step.seqs)?;
        let ids: Vec<SeqId> = step.seqs.iter().map(|s| s.0).collect();
        let pages = self.cache.batch_pages(&ids)?;
        self.attn
            .plan(&step.qo_indptr(), &pages, self.cache.config())?;
        // Decode steps replay whole: every launch reads its data at fixed addresses.
        let key = match (
            self.attn.decode_plan_addresses(),
            kv_step.device_addresses(),
        ) {
            (Some(plan), Some(append)) => Some(GraphKey {
                tokens: n,
                rows: r,
                greedy,
                append,
                plan,
            }),
            _ => None,
        };
        // Other steps of up to PIECE_MAX_TOKENS run over a bucket of rows, graphs on or off
        // (so that both give the same bits); the padding rows read token 0 at position 0 and
        // logits row 0, and nothing reads what they compute.
        let piece = match key {
            Some(_) => None,
            None => PieceKey::bucket(n, r, greedy, self.cap, self.cap_rows),
        };
        let (np, rp) = piece.map_or((n, r), |k| (k.tokens, k.rows));
        let b = &mut self.b;
        let g = &self.gpu;
        g.write_prefix(&mut b.ids, &padded(&step.tokens, np))?;
        g.write_prefix(&mut b.positions, &padded(&step.positions, np))?;
        let rows: Vec<u32> = step.logits_rows.iter().map(|&x| x as u32).collect();
        g.write_prefix(&mut b.rows, &padded(&rows, rp))?;
        match (key, piece) {
            (Some(k), _) => match self.graphs.action(Some(k)) {
                Action::Replay => self.replay(&k)?,
                Action::Capture => self.capture(k, &kv_step, n, r, greedy)?,
                Action::Eager => self.run_parts(&kv_step, n, r, greedy, None)?,
            },
            (None, Some(k)) => {
                let action = self.pieces.action(Some(k));
                self.run_parts(&kv_step, np, rp, greedy, Some((k, action)))?
            }
            // Larger steps with prompts: always launched (counted by neither store).
            (None, None) => self.run_parts(&kv_step, n, r, greedy, None)?,
        }
        Ok(r)
    }

    /// Captures a decode step's launches as the graph of `key` and replays it; if the capture
    /// fails, decode graphs turn off and the step runs eagerly.
    fn capture(
        &mut self,
        k: GraphKey,
        kv_step: &AppendStep,
        n: usize,
        r: usize,
        greedy: bool,
    ) -> Result<()> {
        let stream = self.gpu.stream().clone();
        if self.graphs.begin(&stream).is_ok() {
            let ran = self.run_parts(kv_step, n, r, greedy, None);
            if let Ok(graph) = self.graphs.end(&stream, ran.is_ok()) {
                self.graphs.keep(k, vec![graph]);
                return self.replay(&k);
            }
        }
        // Nothing captured ran: this is the step's only run.
        self.run_parts(kv_step, n, r, greedy, None)
    }

    fn replay(&mut self, k: &GraphKey) -> Result<()> {
        self.graphs.replay(k, 0).map_err(graph_err)
    }

    /// Runs a step's parts over `n` rows (`r` logits rows), each block's KV append and attention
    /// between them: part 0 embeds the tokens and projects block 0's Q/K/V; part `l + 1`
    /// finishes block `l` after its attention and projects block `l + 1`'s Q/K/V, or the last
    /// part the logits. With `pieces`, each part is launched, captured or replayed as the
    /// action says; without, launched.
    fn run_parts(
        &mut self,
        kv_step: &AppendStep,
        n: usize,
        r: usize,
        greedy: bool,
        pieces: Option<(PieceKey, Action)>,
    ) -> Result<()> {
        let blocks = self.model.blocks();
        let mut captured = Vec::new();
        // Pieces keep the separate append: they are replayed for steps whose append metadata
        // lives at other addresses (and over bucket rows beyond the step's).
        let fused = (self.fused_append && pieces.is_none()).then_some(kv_step);
        for part in 0..=blocks {
            if part > 0 {
                self.attention(part - 1, kv_step, fused.is_some())?;
            }
            match pieces {
                Some((k, Action::Replay)) => self.pieces.replay(&k, part).map_err(graph_err)?,
                Some((_, Action::Capture)) if self.pieces.enabled() => {
                    let stream = self.gpu.stream().clone();
                    let graph = match self.pieces.begin(&stream) {
                        Ok(()) => {
                            let ran = self.part(part, n, r, greedy, None);
                            self.pieces.end(&stream, ran.is_ok()).ok()
                        }
                        Err(_) => None,
                    };
                    match graph {
                        Some(g) => {
                            g.launch().map_err(graph_err)?;
                            captured.push(g);
                        }
                        // Nothing captured ran; the rest of the step runs eagerly.
                        None => self.part(part, n, r, greedy, None)?,
                    }
                }
                _ => self.part(part, n, r, greedy, fused)?,
            }
        }
        if let Some((k, Action::Capture)) = pieces {
            if captured.len() == blocks + 1 {
                self.pieces.keep(k, captured);
                self.pieces.launched_captured();
            }
        }
        Ok(())
    }

    /// Block `l`'s KV append (unless `fused`: the QKV epilogue wrote the rows) and attention
    /// (over the step's exact rows: the plan and the append metadata hold the real token
    /// counts).
    fn attention(&mut self, l: usize, kv_step: &AppendStep, fused: bool) -> Result<()> {
        let b = &mut self.b;
        if !fused {
            let rs = RowStrides::contiguous(self.cfg.kv_heads, self.cfg.head_dim);
            self.cache
                .append_layer(l, kv_step, Rows::Device(&b.k), rs, Rows::Device(&b.v), rs)?;
        }
        self.attn.run(&b.q, self.cache.pool(l)?, &mut b.o16)
    }

    /// Launches part `part` of a step (see [`GpuRunner::run_parts`]); with `fused`, block
    /// `part`'s K/V go into the cache from its QKV epilogue.
    fn part(
        &mut self,
        part: usize,
        n: usize,
        r: usize,
        greedy: bool,
        fused: Option<&AppendStep>,
    ) -> Result<()> {
        let append = match fused {
            Some(step) if part < self.model.blocks() => Some(self.cache.append_target(part, step)?),
            _ => None,
        };
        let s = Step {
            cfg: &self.cfg,
            mk: &self.mk,
            pr: Products {
                blas: &self.blas,
                stream: self.gpu.stream(),
                small: (self.small_products > 0).then_some((&self.mk, self.small_products)),
            },
            embed: &self.embed,
            inv_freq: &self.inv_freq,
            final_norm: &self.final_norm,
            b: &mut self.b,
            append,
            n,
            r,
        };
        match &mut self.model {
            Model::F32(m) => s.part(m, part, greedy),
            Model::Bf16(m) => s.part(m, part, greedy),
        }
    }
}

/// `v` followed by zeros up to `len` elements (`v` itself when it is that long: decode steps
/// and steps above the buckets are not padded, and copy nothing here).
fn padded<T: Copy + Default>(v: &[T], len: usize) -> Cow<'_, [T]> {
    if len <= v.len() {
        return Cow::Borrowed(v);
    }
    let mut p = v.to_vec();
    p.resize(len, T::default());
    Cow::Owned(p)
}

/// Whether runners start with the fused append on: `FERRINFER_FUSED_APPEND=1` (off otherwise
/// until it has been measured and checked on a GPU).
fn fused_append_default() -> bool {
    std::env::var("FERRINFER_FUSED_APPEND").is_ok_and(|v| v == "1")
}

fn graph_err(e: String) -> EngineError {
    EngineError::Model(format!("CUDA graph: {e}"))
}

impl Step<'_> {
    /// One part of a step over `self.n` rows (see [`GpuRunner::run_parts`]).
    fn part<P: Precision>(self, m: &mut Dense<P>, part: usize, greedy: bool) -> Result<()> {
        let Step {
            cfg: c,
            mk,
            pr,
            embed,
            inv_freq,
            final_norm,
            b,
            append,
            n,
            r,
        } = self;
        let (d, f, hd) = (c.dim, c.ffn_dim, c.head_dim);
        let qd = c.q_heads * hd;
        let eps = c.rms_eps;
        let block = |l: usize| {
            m.layers
                .get(l)
                .ok_or_else(|| EngineError::Model(format!("no block {l}")))
        };
        if part == 0 {
            let first = block(0)?;
            mk.gather_rows(embed, c.vocab, d, &b.ids, n, &mut b.x)?;
            mk.rms_norm(&b.x, &first.attn_norm, n, eps, &mut m.h)?;
        } else {
            // The rest of block `part - 1`, after its attention.
            let l = part - 1;
            let lw = block(l)?;
            let o = P::wo_input(mk, &b.o16, n * qd, &mut m.wide)?;
            pr.run(o, n, &lw.wo, qd, d, &mut b.proj)?;
            mk.add_rms_norm(&mut b.x, &b.proj, &lw.ffn_norm, n, eps, &mut m.h)?;
            pr.run(&m.h, n, &lw.w_gate_up, d, 2 * f, &mut b.gu)?;
            if !pr.silu_down(&b.gu, n, &lw.w_down, f, d, &mut b.proj)? {
                mk.silu_and_mul(&b.gu, n, f, &mut m.act)?;
                pr.run(&m.act, n, &lw.w_down, f, d, &mut b.proj)?;
            }
            let next = match m.layers.get(l + 1) {
                Some(next) => &next.attn_norm,
                None => final_norm,
            };
            mk.add_rms_norm(&mut b.x, &b.proj, next, n, eps, &mut m.h)?;
        }
        match m.layers.get(part) {
            // Block `part`'s Q/K/V, RoPE applied, ready for its append and attention.
            Some(lw) => {
                pr.run(&m.h, n, &lw.wqkv, d, c.qkv_dim(), &mut b.qkv)?;
                match append {
                    Some(t) => mk.qkv_rope_append(
                        &b.qkv,
                        n,
                        c.q_heads,
                        &b.positions,
                        inv_freq,
                        c.rope.style,
                        &mut b.q,
                        t,
                    )?,
                    None => mk.qkv_rope(
                        &b.qkv,
                        n,
                        c.q_heads,
                        c.kv_heads,
                        hd,
                        &b.positions,
                        inv_freq,
                        c.rope.style,
                        &mut b.q,
                        &mut b.k,
                        &mut b.v,
                    )?,
                }
            }
            // After the last block: the logits rows, their logits and (greedy) their argmax.
            None => {
                mk.gather_rows(&m.h, n, d, &b.rows, r, &mut m.hsel)?;
                pr.run(&m.hsel, r, &m.head, d, c.vocab, &mut b.logits)?;
                if greedy {
                    mk.argmax(&b.logits, r, c.vocab, &mut b.tokens_out)?;
                }
            }
        }
        Ok(())
    }
}
