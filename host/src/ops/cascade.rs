//! Multi-level cascade attention on the paged cache ([`CascadeAttention`], FlashInfer's
//! `MultiLevelCascadeAttentionWrapper`): each level's shared KV is attended once by all the
//! queries that share it, with the batch prefill op, and the levels' states are merged into
//! the output with [`merge_state_in_place`]. Levels and their rules: [`crate::plan::cascade`].
//!
//! A run is `levels` prefill launches (each with its own split-KV merge when its plan splits)
//! and `levels − 1` state merges: level 0 writes `out` and the running lse, every later level
//! writes the plan's scratch state, which is merged into `out` in place. The running lse is the
//! caller's when given (then it ends as the lse of each query over its whole context, base 2,
//! as batch prefill's), else the plan's.
use std::any::Any;

use half::{bf16, f16};

use crate::dtype::{DType, Float16};
use crate::error::{Error, Result};
use crate::heads::HeadConfig;
use crate::kv::{KvPool, KvPoolConfig};
use crate::ops::io_check::PlannedIo;
use crate::ops::merge::{merge_state_in_place, MergeShape};
use crate::ops::prefill::{BatchPrefill, BatchPrefillPlan};
use crate::options::AttentionOptions;
use crate::plan::cascade::{plan as plan_levels, CascadeLevel};
use crate::runtime::{DeviceBuffer, Gpu};

const OP: &str = "cascade";

/// Cascade attention for one head configuration, dtype and option set. The options' causal
/// flag masks the last level; a sliding window is not supported (a shared prefix's keys have
/// no position relative to the queries until the levels are concatenated).
pub struct CascadeAttention {
    gpu: Gpu,
    heads: HeadConfig,
    dtype: DType,
    /// Whether the last level is masked causally.
    causal: bool,
    /// Non-causal prefill for the shared levels.
    shared: BatchPrefill,
    /// Prefill with the op's options for the last level.
    last: BatchPrefill,
}

/// A step's cascade plan: one batch-prefill plan per level, and the scratch state later levels
/// write before they are merged.
pub struct CascadePlan {
    levels: Vec<BatchPrefillPlan>,
    qo_tokens: usize,
    /// The running lse when the caller passes none: `[N, Hq]`.
    lse: DeviceBuffer<f32>,
    /// A level's lse before its merge.
    level_lse: DeviceBuffer<f32>,
    /// A level's output before its merge: `DeviceBuffer<f16 or bf16>` of `[N, Hq, D]`.
    level_out: Box<dyn Any + Send>,
}

impl CascadePlan {
    /// Levels in this plan.
    pub fn num_levels(&self) -> usize {
        self.levels.len()
    }

    /// Query tokens (N) in this plan.
    pub fn qo_tokens(&self) -> usize {
        self.qo_tokens
    }

    /// The batch-prefill plan of level `i`.
    pub fn level(&self, i: usize) -> Option<&BatchPrefillPlan> {
        self.levels.get(i)
    }
}

impl CascadeAttention {
    /// Validates the configuration (as [`BatchPrefill::new`]; no sliding window).
    pub fn new(gpu: &Gpu, heads: HeadConfig, dtype: DType, opts: AttentionOptions) -> Result<Self> {
        if opts.window_left.is_some() {
            return Err(Error::unsupported(
                OP,
                "window_left",
                "a sliding window over cascade levels (use batch prefill)",
            ));
        }
        let shared_opts = AttentionOptions {
            causal: false,
            ..opts
        };
        Ok(Self {
            gpu: gpu.clone(),
            heads,
            dtype,
            causal: opts.causal,
            shared: BatchPrefill::new(gpu, heads, dtype, shared_opts)?,
            last: BatchPrefill::new(gpu, heads, dtype, opts)?,
        })
    }

    /// Fixes the split-KV chunk of every level's prefill ([`BatchPrefill::set_fixed_split_size`]).
    pub fn set_fixed_split_size(&mut self, keys: Option<usize>) {
        self.shared.set_fixed_split_size(keys);
        self.last.set_fixed_split_size(keys);
    }

    /// Plans a step: `levels[0]` the outermost shared prefix, ..., the last level one group per
    /// request ([`crate::plan::cascade`]); pages of `pool`'s geometry. Validates everything,
    /// plans every level, allocates the scratch state.
    pub fn plan(&self, levels: &[CascadeLevel<'_>], pool: &KvPoolConfig) -> Result<CascadePlan> {
        let batches = plan_levels(OP, levels, pool.page_size, pool.num_pages, self.causal)?;
        let n = levels[0].qo_indptr.last().copied().unwrap_or(0) as usize;
        let plans = batches
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let op = if i + 1 == batches.len() {
                    &self.last
                } else {
                    &self.shared
                };
                op.plan_paged(&b.qo_indptr, &b.pages, pool)
            })
            .collect::<Result<Vec<_>>>()?;
        let h = self.heads;
        // Sizes below 2^32 elements: batch prefill's plan checked N × Hq × D.
        let (values, lses) = (n * h.num_qo_heads * h.head_dim, n * h.num_qo_heads);
        // Zero-length device buffers are not allocated by every driver; one element is enough.
        let level_out: Box<dyn Any + Send> = match self.dtype {
            DType::F16 => Box::new(self.gpu.alloc::<f16>(values.max(1))?),
            DType::Bf16 => Box::new(self.gpu.alloc::<bf16>(values.max(1))?),
        };
        Ok(CascadePlan {
            levels: plans,
            qo_tokens: n,
            lse: self.gpu.alloc(lses.max(1))?,
            level_lse: self.gpu.alloc(lses.max(1))?,
            level_out,
        })
    }

    /// Runs a plan on one layer's pool: q and out `[N, Hq, D]`, lse `[N, Hq]` (base 2) when
    /// given. Launch only (`levels` prefills and `levels − 1` merges, one stream); every
    /// buffer is checked before the first launch.
    pub fn run<T: Float16>(
        &self,
        plan: &mut CascadePlan,
        q: &DeviceBuffer<T>,
        pool: &KvPool<T>,
        out: &mut DeviceBuffer<T>,
        lse: Option<&mut DeviceBuffer<f32>>,
    ) -> Result<()> {
        let h = self.heads;
        let n = plan.qo_tokens;
        PlannedIo {
            op: OP,
            what: "q/out elements (planned N × heads × head_dim)",
            elems: n * h.num_qo_heads * h.head_dim,
            lse_elems: n * h.num_qo_heads,
            exact: true,
            gpu: &self.gpu,
            dtype: self.dtype,
        }
        .check(
            &q.span(),
            &out.span(),
            lse.as_deref().map(|l| l.span()).as_ref(),
        )?;
        let CascadePlan {
            levels,
            lse: own_lse,
            level_lse,
            level_out,
            ..
        } = plan;
        let level_out = level_out
            .downcast_mut::<DeviceBuffer<T>>()
            .ok_or_else(|| Error::shape(OP, "element type", self.dtype, T::DTYPE))?;
        let lse = match lse {
            Some(l) => l,
            None => own_lse,
        };
        let shape = MergeShape {
            seq_len: n,
            num_heads: h.num_qo_heads,
            head_dim: h.head_dim,
        };
        let last = levels.len() - 1;
        for (i, p) in levels.iter().enumerate() {
            let op = if i == last { &self.last } else { &self.shared };
            if i == 0 {
                op.run_paged(p, q, pool, out, Some(lse))?;
                continue;
            }
            // The scratch is exactly N rows only when N > 0 (else one element): an empty
            // step launches nothing.
            if n == 0 {
                break;
            }
            op.run_paged(p, q, pool, level_out, Some(level_lse))?;
            merge_state_in_place(&self.gpu, shape, out, lse, level_out, level_lse)?;
        }
        Ok(())
    }
}
