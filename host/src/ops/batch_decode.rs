//! Batch decode attention on the paged KV cache, with FlashInfer's plan/run split.
//!
//! `BatchDecode::plan` runs once per step on the host (pure planner `plan::decode` + one upload
//! of every index array); `run` only launches, once per layer, and never allocates or
//! synchronises. In CUDA-graph mode ([`BatchDecode::new_graph`]) every buffer is sized for the
//! maximum batch at construction, the grid is fixed, and padded work items exit early, so a
//! captured `run` replays correctly after any later `plan_into`.
//!
//! Device side: `kernels-gpu/src/batch_decode.rs`. Single-request decode on contiguous K/V is the
//! same kernel with one page spanning the sequence ([`crate::ops::SingleDecode`]).
//!
//! fp8 K/V ([`BatchDecode::set_kv_dtype`], [`BatchDecode::run_fp8`]) run the CUDA-core kernel's
//! fp8 instances (`decode_fp8_*`): K's scale folded into the logit scale here, V's passed to the
//! kernel. RoPE inside attention ([`BatchDecode::set_rope`]) runs its `decode_rope_*` instances,
//! with the per-request position offsets in the plan's tables.
//!
//! Here: the op, its plan and the planning step; `kernel.rs`: which kernel runs (family, K/V
//! type, RoPE); `launch.rs`: the launch; `spans.rs`: plans and launches over caller memory.
use ferrinfer_kernels::config::{batch_decode as bcfg, decode_rows as cfg, decode_tc as tccfg};

use crate::dtype::{DType, KvDtype};
use crate::error::{Error, Result};
use crate::heads::HeadConfig;
use crate::kv::{BatchPages, KvPoolConfig};
use crate::ops::rope_attn::{self, RopeAttention};
use crate::ops::workspace::{check_graph_fit, check_slots, MetaLayout, PlanOwner, PlanWorkspace};
use crate::options::AttentionOptions;
use crate::plan::decode::{plan as plan_decode, DecodePlan, DecodeProblem};
use crate::runtime::{Gpu, Kernel};
use crate::validate;

mod kernel;
mod launch;
mod spans;

pub use kernel::{DecodeKernel, TENSOR_CORE_MIN_GROUP};

pub use spans::PagedKvSpans;

const OP: &str = "batch_decode";

/// Sizes fixed at construction in CUDA-graph mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GraphLimits {
    /// Largest batch any plan may have.
    pub max_batch: usize,
    /// Largest total page-list length (Σ pages over the batch) any plan may have.
    pub max_pages: usize,
}

/// Where K/V rows live for one launch (a paged pool, or contiguous tensors as one big page).
#[derive(Clone, Copy, Debug)]
pub(crate) struct KvSource {
    pub k: u64,
    pub v: u64,
    pub k_stride_page: u64,
    pub v_stride_page: u64,
    pub k_stride_n: u32,
    pub k_stride_h: u32,
    pub v_stride_n: u32,
    pub v_stride_h: u32,
    pub page_size: u32,
    /// Single-request decode (buffers may be longer than needed).
    pub single: bool,
}

/// A step's plan: the host partition plus its device copy and the split-KV workspace.
pub struct BatchDecodePlan {
    host: DecodePlan,
    batch: usize,
    page_size: usize,
    num_pages_seen: usize,
    /// Capacities of the device tables (their offsets: [`Caps::offsets`]).
    caps: Caps,
    /// Where the tables live (`caps.offsets()`, kept so launches do not recompute it).
    off: MetaOffsets,
    ws: PlanWorkspace<GraphLimits>,
}

/// Capacities of a decode plan's tables: work items (`work_stride`, also the grid), batch
/// and page list.
#[derive(Clone, Copy, Debug)]
struct Caps {
    work_stride: usize,
    max_batch: usize,
    max_pages: usize,
    num_kv_heads: usize,
}

/// Offsets (in `i32`s) of a decode plan's device tables: `[counts 2 | work 3·ws |
/// merge_indptr mb+1 | kv_indptr mb+1 | kv_indices mp | rope offsets mb | merge counters
/// mb·Hkv]`.
#[derive(Clone, Copy, Debug)]
struct MetaOffsets {
    counts: usize,
    work: usize,
    merge: usize,
    indptr: usize,
    indices: usize,
    rope: usize,
    counters: usize,
    len: usize,
}

impl Caps {
    fn offsets(&self) -> MetaOffsets {
        let mut m = MetaLayout::default();
        let mb = self.max_batch;
        MetaOffsets {
            counts: m.region(2),
            work: m.region(3 * self.work_stride),
            merge: m.region(mb + 1),
            indptr: m.region(mb + 1),
            indices: m.region(self.max_pages),
            rope: m.region(mb),
            counters: m.region(mb * self.num_kv_heads),
            len: m.len(),
        }
    }
}

impl BatchDecodePlan {
    /// The host-side partition (work items, chunk length, merge runs).
    pub fn partition(&self) -> &DecodePlan {
        &self.host
    }

    /// Device addresses of the plan's buffers (metadata, partial o, partial lse). In graph mode
    /// they never change across `plan_into` calls — what a captured graph relies on.
    pub fn buffer_addresses(&self) -> [u64; 3] {
        self.ws.addresses()
    }

    /// Requests in this plan.
    pub fn batch_size(&self) -> usize {
        self.batch
    }
}

/// Batch decode for one head configuration, dtype and option set.
pub struct BatchDecode {
    gpu: Gpu,
    heads: HeadConfig,
    dtype: DType,
    /// The K/V element type the op reads: `dtype` itself, or fp8 (then [`BatchDecode::run_fp8`]).
    kv: KvDtype,
    opts: AttentionOptions,
    kind: DecodeKernel,
    /// The kernel of `kind`, resolved when the op is built or the kind is switched.
    kernel: Kernel,
    smem_bytes: u32,
    chunk_align: usize,
    max_ctas: usize,
    fixed_split: Option<usize>,
    graph: Option<GraphLimits>,
    /// RoPE inside attention ([`BatchDecode::set_rope`]).
    rope: Option<RopeAttention>,
}

impl BatchDecode {
    /// Validates the configuration (head dim 64/128/256, group 1–16 — above 8 on the tensor-core kernel, head dims 64 and 128 — f16/bf16, options) and
    /// resolves the kernels.
    pub fn new(gpu: &Gpu, heads: HeadConfig, dtype: DType, opts: AttentionOptions) -> Result<Self> {
        Self::build(gpu, heads, dtype, opts, None)
    }

    /// CUDA-graph-safe variant: plans never exceed `limits`, all buffers are allocated by the
    /// first plan with those sizes, and `run` launches a grid independent of the batch.
    pub fn new_graph(
        gpu: &Gpu,
        heads: HeadConfig,
        dtype: DType,
        opts: AttentionOptions,
        limits: GraphLimits,
    ) -> Result<Self> {
        if limits.max_batch == 0 {
            return Err(Error::invalid(OP, "max_batch", "must be positive"));
        }
        Self::build(gpu, heads, dtype, opts, Some(limits))
    }

    fn build(
        gpu: &Gpu,
        heads: HeadConfig,
        dtype: DType,
        opts: AttentionOptions,
        graph: Option<GraphLimits>,
    ) -> Result<Self> {
        heads.validate(OP)?;
        opts.validate(OP)?;
        validate::kernel_heads(OP, &heads, tccfg::MAX_GROUP as usize)?;
        let kind = if heads.group() >= TENSOR_CORE_MIN_GROUP && Self::tensor_cores_support(&heads) {
            DecodeKernel::TensorCore
        } else {
            DecodeKernel::CudaCore
        };
        let kv = KvDtype::from(dtype);
        let (kernel, smem_bytes, chunk_align, max_ctas) =
            Self::resolve(gpu, &heads, dtype, kv, kind, false)?;
        Ok(Self {
            gpu: gpu.clone(),
            heads,
            dtype,
            kv,
            opts,
            kind,
            kernel,
            smem_bytes,
            chunk_align,
            max_ctas,
            fixed_split: None,
            graph,
            rope: None,
        })
    }

    /// Fixes the split-KV chunk length (tokens; FlashInfer's `fixed_split_size`): results then
    /// do not depend on the batch composition or the device, at some cost in balance. `None`
    /// (the default) lets the planner choose; `Some(usize::MAX)` never splits.
    pub fn set_fixed_split_size(&mut self, tokens: Option<usize>) {
        self.fixed_split = tokens;
    }

    fn kv_lens(&self, pages: &BatchPages, page_size: usize) -> Result<Vec<(usize, usize)>> {
        (0..pages.batch_size())
            .map(|b| {
                let len = pages.kv_len(b, page_size)?;
                let begin = match self.opts.window_left {
                    Some(w) => len.saturating_sub(w.saturating_add(1)),
                    None => 0,
                };
                Ok((begin, len))
            })
            .collect()
    }

    /// Plans a step for the batch described by `pages` over a pool of geometry `pool`.
    pub fn plan(&self, pages: &BatchPages, pool: &KvPoolConfig) -> Result<BatchDecodePlan> {
        self.plan_for_page_size(pages, pool.page_size, Some(pool))
    }

    pub(crate) fn plan_for_page_size(
        &self,
        pages: &BatchPages,
        page_size: usize,
        pool: Option<&KvPoolConfig>,
    ) -> Result<BatchDecodePlan> {
        let (max_batch, max_pages) = match self.graph {
            Some(l) => (l.max_batch, l.max_pages),
            None => (pages.batch_size(), pages.kv_indices.len()),
        };
        let work_stride = self.graph.map_or(0, |l| self.graph_caps(l).1);
        let caps = Caps {
            work_stride,
            max_batch,
            max_pages,
            num_kv_heads: self.heads.num_kv_heads,
        };
        let fixed = self.graph.map(|_| (caps.offsets().len, work_stride));
        let mut plan = BatchDecodePlan {
            host: DecodePlan::default(),
            batch: 0,
            page_size,
            num_pages_seen: 0,
            caps,
            off: caps.offsets(),
            ws: PlanWorkspace::new(&self.gpu, self.owner(), fixed)?,
        };
        self.plan_into_inner(pages, page_size, pool, None, &mut plan)?;
        Ok(plan)
    }

    /// Re-plans into an existing plan's buffers (no allocation in graph mode): the serving
    /// loop's per-step call.
    pub fn plan_into(
        &self,
        pages: &BatchPages,
        pool: &KvPoolConfig,
        plan: &mut BatchDecodePlan,
    ) -> Result<()> {
        self.plan_into_inner(pages, pool.page_size, Some(pool), None, plan)
    }

    /// [`BatchDecode::plan_into`] with explicit RoPE position offsets, one per request
    /// (`≥ 0`): key `t` of request `b` sits at position `offsets[b] + t` (FlashInfer's
    /// `rope_pos_offset`). Without RoPE ([`BatchDecode::set_rope`]) they are checked and unused.
    pub fn plan_into_with_offsets(
        &self,
        pages: &BatchPages,
        pool: &KvPoolConfig,
        offsets: &[i32],
        plan: &mut BatchDecodePlan,
    ) -> Result<()> {
        self.plan_into_inner(pages, pool.page_size, Some(pool), Some(offsets), plan)
    }

    fn owner(&self) -> PlanOwner<GraphLimits> {
        PlanOwner::new(&self.gpu, self.heads, self.graph)
    }

    pub(crate) fn replan(
        &self,
        pages: &BatchPages,
        page_size: usize,
        plan: &mut BatchDecodePlan,
    ) -> Result<()> {
        self.plan_into_inner(pages, page_size, None, None, plan)
    }

    fn validate_pages(
        &self,
        pages: &BatchPages,
        page_size: usize,
        pool: Option<&KvPoolConfig>,
    ) -> Result<()> {
        pages.validate(OP, page_size, pool.map(|p| p.num_pages))?;
        if let Some(pool) = pool {
            validate::pool_heads(OP, pool, &self.heads)?;
        }
        Ok(())
    }

    fn plan_into_inner(
        &self,
        pages: &BatchPages,
        page_size: usize,
        pool: Option<&KvPoolConfig>,
        offsets: Option<&[i32]>,
        plan: &mut BatchDecodePlan,
    ) -> Result<()> {
        plan.ws.owner().check(OP, &self.owner())?;
        self.validate_pages(pages, page_size, pool)?;
        let batch = pages.batch_size();
        let n_pages = pages.kv_indices.len();
        if let Some(l) = self.graph {
            check_graph_fit(
                OP,
                &[
                    ("batch", batch, l.max_batch),
                    ("pages", n_pages, l.max_pages),
                ],
            )?;
        }
        let ranges = self.kv_lens(pages, page_size)?;
        if ranges.iter().any(|&(_, e)| e > i32::MAX as usize) {
            return Err(Error::Overflow {
                op: OP,
                what: "kv_len (2^31 tokens per request)",
            });
        }
        if let Some(o) = offsets {
            let kv_lens: Vec<usize> = ranges.iter().map(|&(_, e)| e).collect();
            rope_attn::check_offsets(OP, o, &kv_lens)?;
        }
        let lens: Vec<usize> = ranges.iter().map(|&(b, e)| e - b).collect();
        let graph_items = self.graph.map(|_| plan.caps.work_stride);
        let host = plan_decode(&DecodeProblem {
            kv_lens: &lens,
            num_kv_heads: self.heads.num_kv_heads,
            max_ctas: self.max_ctas,
            min_chunk: cfg::MIN_CHUNK as usize,
            chunk_align: self.chunk_align,
            fixed_chunk: self.fixed_split,
            graph_items,
        })?;
        let max_items = host
            .merge_indptr
            .windows(2)
            .map(|w| (w[1] - w[0]) as usize)
            .max()
            .unwrap_or(1);
        if max_items > bcfg::MAX_ITEMS_PER_REQUEST as usize {
            return Err(Error::invalid(
                OP,
                "plan",
                format!(
                    "{max_items} work items for one request (at most {})",
                    bcfg::MAX_ITEMS_PER_REQUEST
                ),
            ));
        }
        // The new sizes stay local until every fallible step has succeeded, so a failed
        // re-plan leaves the previous plan intact and usable.
        let caps = match self.graph {
            Some(_) => plan.caps,
            None => Caps {
                work_stride: host.grid_items.max(1),
                max_batch: batch,
                max_pages: n_pages,
                num_kv_heads: self.heads.num_kv_heads,
            },
        };
        check_slots(OP, caps.work_stride, &self.heads)?;
        let ws = caps.work_stride;
        let off = caps.offsets();
        let n_items = host.num_items();
        let mut s = plan.ws.stage(&self.gpu, off.len)?;
        s.at(off.counts)?
            .extend_from_slice(&[n_items as i32, batch as i32])?;
        let work = s.region(off.work, 3 * ws)?;
        for i in 0..n_items {
            let r = host.request[i] as usize;
            work[i] = r as i32;
            work[ws + i] = (ranges[r].0 + host.kv_begin[i] as usize) as i32;
            work[2 * ws + i] = (ranges[r].0 + host.kv_end[i] as usize) as i32;
        }
        let merge = s.region(off.merge, caps.max_batch + 1)?;
        for (m, &x) in merge.iter_mut().zip(&host.merge_indptr) {
            *m = x as i32;
        }
        let indptr = s.region(off.indptr, caps.max_batch + 1)?;
        indptr[..pages.kv_indptr.len()].copy_from_slice(&pages.kv_indptr);
        s.at(off.indices)?.extend_from_slice(&pages.kv_indices)?;
        let rope = s.region(off.rope, caps.max_batch)?;
        if let Some(o) = offsets {
            rope[..o.len()].copy_from_slice(o);
        }
        // Arrival counters of the fused merge, zeroed by every plan (the kernel also resets
        // them after each merge, so replays without re-planning stay consistent).
        s.region(off.counters, off.len - off.counters)?;
        plan.ws.commit(&self.gpu, if host.split { ws } else { 0 })?;
        plan.caps = caps;
        plan.off = off;
        plan.host = host;
        plan.batch = batch;
        plan.page_size = page_size;
        plan.num_pages_seen = pool.map_or(0, |p| p.num_pages);
        Ok(())
    }
}
