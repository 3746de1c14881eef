//! The model on the GPU: f32 weights in device memory, cuBLAS (loaded at run time) for the
//! matrix products, ferrinfer's model kernels for embedding, norms, RoPE and the SwiGLU gate,
//! and ferrinfer's paged KV cache (f16) with batch prefill attention for every step — decode
//! tokens and prefill chunks alike.
//!
//! Every buffer is allocated once, at the step's token capacity; the attention op runs in
//! CUDA-graph mode (one plan rewritten in place each step), so a step allocates nothing on the
//! device.
use std::sync::Arc;

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use ferrinfer::kv::{PagedKvCache, PoolSize, RowStrides, Rows, SeqId};
use ferrinfer::ops::{BatchPrefill, ModelKernels};
use ferrinfer::ops::{BatchPrefillPlan, PrefillGraphLimits};
use ferrinfer::{AttentionOptions, DType, DeviceBuffer, Gpu, HeadConfig};
use half::f16;

use super::{check_step, kv_geometry, ModelRunner, StepInput};
use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::weights::Weights;

struct Layer {
    attn_norm: DeviceBuffer<f32>,
    wqkv: DeviceBuffer<f32>,
    wo: DeviceBuffer<f32>,
    ffn_norm: DeviceBuffer<f32>,
    w_gate_up: DeviceBuffer<f32>,
    w_down: DeviceBuffer<f32>,
}

/// Activations at the step capacity (`cap` tokens, `cap_rows` logits rows).
struct Buffers {
    ids: DeviceBuffer<u32>,
    positions: DeviceBuffer<i32>,
    rows: DeviceBuffer<u32>,
    x: DeviceBuffer<f32>,
    h: DeviceBuffer<f32>,
    qkv: DeviceBuffer<f32>,
    q: DeviceBuffer<f16>,
    k: DeviceBuffer<f16>,
    v: DeviceBuffer<f16>,
    o16: DeviceBuffer<f16>,
    o: DeviceBuffer<f32>,
    proj: DeviceBuffer<f32>,
    gu: DeviceBuffer<f32>,
    act: DeviceBuffer<f32>,
    hsel: DeviceBuffer<f32>,
    logits: DeviceBuffer<f32>,
    tokens_out: DeviceBuffer<u32>,
}

/// A model on one GPU.
pub struct GpuRunner {
    cfg: ModelConfig,
    gpu: Gpu,
    blas: CudaBlas,
    mk: ModelKernels,
    attn: BatchPrefill,
    plan: Option<BatchPrefillPlan>,
    embed: DeviceBuffer<f32>,
    layers: Vec<Layer>,
    final_norm: DeviceBuffer<f32>,
    head: Option<DeviceBuffer<f32>>,
    inv_freq: DeviceBuffer<f32>,
    cache: PagedKvCache<f16>,
    b: Buffers,
    cap: usize,
    cap_rows: usize,
}

/// Whether cuBLAS can be opened under a name cudarc tries (it panics on first use otherwise).
fn cublas_present() -> bool {
    use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
    [
        format!("{DLL_PREFIX}cublas{DLL_SUFFIX}"),
        format!("{DLL_PREFIX}cublas{DLL_SUFFIX}.12"),
    ]
    .iter()
    // SAFETY: only probes whether the library can be dlopen'ed; the handle is closed at once.
    .any(|name| unsafe { libloading::Library::new(name) }.is_ok())
}

fn blas_err(e: impl std::fmt::Debug) -> EngineError {
    EngineError::Model(format!("cuBLAS: {e:?}"))
}

impl GpuRunner {
    /// Uploads the model to `gpu` with a KV cache of `kv_tokens` tokens; steps may carry up to
    /// `step_tokens` tokens and `max_seqs` sequences.
    pub fn new(
        gpu: &Gpu,
        cfg: ModelConfig,
        w: Arc<Weights>,
        kv_tokens: usize,
        step_tokens: usize,
        max_seqs: usize,
    ) -> Result<Self> {
        if !cublas_present() {
            return Err(EngineError::Model(
                "cuBLAS (libcublas.so) was not found: install the CUDA toolkit's cuBLAS or run on the CPU backend".into(),
            ));
        }
        let blas = CudaBlas::new(gpu.stream().clone()).map_err(blas_err)?;
        let mk = ModelKernels::new(gpu)?;
        let heads = HeadConfig::new(cfg.q_heads, cfg.kv_heads, cfg.head_dim)?;
        let (pool, pages) = kv_geometry(&cfg, kv_tokens);
        let cache = PagedKvCache::new_gpu_layers(gpu, pool, PoolSize::Pages(pages), cfg.layers)?;
        let attn = BatchPrefill::new_graph(
            gpu,
            heads,
            DType::F16,
            AttentionOptions::default().with_causal(true),
            PrefillGraphLimits {
                max_batch: max_seqs.max(1),
                max_qo_tokens: step_tokens.max(1),
                max_pages: pages,
            },
        )?;
        let up = |v: &[f32]| gpu.upload(v);
        let layers = w
            .layers
            .iter()
            .map(|l| {
                Ok(Layer {
                    attn_norm: up(&l.attn_norm)?,
                    wqkv: up(&l.wqkv)?,
                    wo: up(&l.wo)?,
                    ffn_norm: up(&l.ffn_norm)?,
                    w_gate_up: up(&l.w_gate_up)?,
                    w_down: up(&l.w_down)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let (cap, cap_rows) = (step_tokens.max(1), step_tokens.min(max_seqs).max(1));
        let (d, f, hd) = (cfg.dim, cfg.ffn_dim, cfg.head_dim);
        let (qd, kvd) = (cfg.q_heads * hd, cfg.kv_heads * hd);
        let b = Buffers {
            ids: gpu.alloc(cap)?,
            positions: gpu.alloc(cap)?,
            rows: gpu.alloc(cap_rows)?,
            x: gpu.alloc(cap * d)?,
            h: gpu.alloc(cap * d)?,
            qkv: gpu.alloc(cap * cfg.qkv_dim())?,
            q: gpu.alloc(cap * qd)?,
            k: gpu.alloc(cap * kvd)?,
            v: gpu.alloc(cap * kvd)?,
            o16: gpu.alloc(cap * qd)?,
            o: gpu.alloc(cap * qd)?,
            proj: gpu.alloc(cap * d)?,
            gu: gpu.alloc(cap * 2 * f)?,
            act: gpu.alloc(cap * f)?,
            hsel: gpu.alloc(cap_rows * d)?,
            logits: gpu.alloc(cap_rows * cfg.vocab)?,
            tokens_out: gpu.alloc(cap_rows)?,
        };
        Ok(Self {
            embed: up(&w.embed)?,
            final_norm: up(&w.final_norm)?,
            head: w.lm_head.as_deref().map(up).transpose()?,
            inv_freq: up(&w.inv_freq)?,
            layers,
            cfg,
            gpu: gpu.clone(),
            blas,
            mk,
            attn,
            plan: None,
            cache,
            b,
            cap,
            cap_rows,
        })
    }

    /// `out[m, n] = x[m, k] · w[n, k]ᵀ`, all row-major (cuBLAS is column-major: this is
    /// `outᵀ = w · xᵀ`, i.e. op(A) = Aᵀ on w's `[k, n]` column-major view).
    fn linear(
        blas: &CudaBlas,
        x: &DeviceBuffer<f32>,
        m: usize,
        w: &DeviceBuffer<f32>,
        k: usize,
        n: usize,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        if m == 0 {
            return Ok(());
        }
        if x.len() < m * k || w.len() != n * k || out.len() < m * n {
            return Err(EngineError::Model(format!(
                "linear: x {} w {} out {} for m {m} k {k} n {n}",
                x.len(),
                w.len(),
                out.len()
            )));
        }
        let cfg = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_T,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: n as i32,
            n: m as i32,
            k: k as i32,
            alpha: 1.0f32,
            lda: k as i32,
            ldb: k as i32,
            beta: 0.0f32,
            ldc: n as i32,
        };
        // SAFETY: the lengths were checked above against the dimensions and leading dimensions
        // passed; all three buffers live on the stream cuBLAS was bound to.
        unsafe {
            blas.gemm(
                cfg,
                w.as_cuda_slice(),
                x.as_cuda_slice(),
                out.as_cuda_slice_mut(),
            )
        }
        .map_err(blas_err)
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
        format!("gpu ({})", self.gpu.info().name)
    }

    fn forward(&mut self, step: &StepInput) -> Result<Vec<f32>> {
        let r = self.run_to_logits(step)?;
        if r == 0 {
            return Ok(Vec::new());
        }
        Ok(self
            .gpu
            .download_prefix(&self.b.logits, r * self.cfg.vocab)?)
    }

    fn forward_greedy(&mut self, step: &StepInput) -> Result<Vec<u32>> {
        let r = self.run_to_logits(step)?;
        if r == 0 {
            return Ok(Vec::new());
        }
        self.mk
            .argmax(&self.b.logits, r, self.cfg.vocab, &mut self.b.tokens_out)?;
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

impl GpuRunner {
    /// Runs a step through the LM head; the logits of `step.logits_rows` are left in
    /// `self.b.logits`. Returns the number of logits rows.
    fn run_to_logits(&mut self, step: &StepInput) -> Result<usize> {
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
        let c = &self.cfg;
        let (d, f, hd) = (c.dim, c.ffn_dim, c.head_dim);
        let (qd, kvd) = (c.q_heads * hd, c.kv_heads * hd);
        let kv_step = self.cache.begin_append(&step.seqs)?;
        let ids: Vec<SeqId> = step.seqs.iter().map(|s| s.0).collect();
        let pages = self.cache.batch_pages(&ids)?;
        let qo_indptr = step.qo_indptr();
        match &mut self.plan {
            Some(p) => self
                .attn
                .plan_paged_into(&qo_indptr, &pages, self.cache.config(), p)?,
            None => {
                self.plan = Some(
                    self.attn
                        .plan_paged(&qo_indptr, &pages, self.cache.config())?,
                )
            }
        }
        let plan = self
            .plan
            .as_ref()
            .ok_or_else(|| EngineError::Model("no attention plan".into()))?;
        let b = &mut self.b;
        let g = &self.gpu;
        g.write_prefix(&mut b.ids, &step.tokens)?;
        g.write_prefix(&mut b.positions, &step.positions)?;
        let rows: Vec<u32> = step.logits_rows.iter().map(|&x| x as u32).collect();
        g.write_prefix(&mut b.rows, &rows)?;
        let mk = &self.mk;
        let eps = c.rms_eps;
        mk.gather_rows(&self.embed, c.vocab, d, &b.ids, n, &mut b.x)?;
        mk.rms_norm(&b.x, &self.layers[0].attn_norm, n, eps, &mut b.h)?;
        let rs = RowStrides::contiguous(c.kv_heads, hd);
        for (l, lw) in self.layers.iter().enumerate() {
            Self::linear(&self.blas, &b.h, n, &lw.wqkv, d, c.qkv_dim(), &mut b.qkv)?;
            mk.qkv_rope(
                &b.qkv,
                n,
                c.q_heads,
                c.kv_heads,
                hd,
                &b.positions,
                &self.inv_freq,
                c.rope.style,
                &mut b.q,
                &mut b.k,
                &mut b.v,
            )?;
            self.cache
                .append_layer(l, &kv_step, Rows::Device(&b.k), rs, Rows::Device(&b.v), rs)?;
            self.attn
                .run_paged(plan, &b.q, self.cache.pool(l)?, &mut b.o16, None)?;
            mk.to_f32(&b.o16, n * qd, &mut b.o)?;
            Self::linear(&self.blas, &b.o, n, &lw.wo, qd, d, &mut b.proj)?;
            mk.add_rms_norm(&mut b.x, &b.proj, &lw.ffn_norm, n, eps, &mut b.h)?;
            Self::linear(&self.blas, &b.h, n, &lw.w_gate_up, d, 2 * f, &mut b.gu)?;
            mk.silu_and_mul(&b.gu, n, f, &mut b.act)?;
            Self::linear(&self.blas, &b.act, n, &lw.w_down, f, d, &mut b.proj)?;
            let next = match self.layers.get(l + 1) {
                Some(next) => &next.attn_norm,
                None => &self.final_norm,
            };
            mk.add_rms_norm(&mut b.x, &b.proj, next, n, eps, &mut b.h)?;
        }
        let _ = kvd;
        mk.gather_rows(&b.h, n, d, &b.rows, r, &mut b.hsel)?;
        let head = self.head.as_ref().unwrap_or(&self.embed);
        Self::linear(&self.blas, &b.hsel, r, head, d, c.vocab, &mut b.logits)?;
        Ok(r)
    }
}
