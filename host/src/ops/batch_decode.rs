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
use ferrinfer_kernels::abi::DecodeParams;
use ferrinfer_kernels::config::{batch_decode as bcfg, decode_tc as tccfg, single_decode as cfg};
use ferrinfer_kernels::math::fastdiv::FastDiv;
use ferrinfer_kernels::math::softmax::LogitTransform;

use crate::dtype::{DType, Float16};
use crate::error::{Error, Result};
use crate::heads::HeadConfig;
use crate::kv::{BatchPages, KvPool, KvPoolConfig};
use crate::ops::io_check::PlannedIo;
use crate::options::AttentionOptions;
use crate::plan::decode::{plan as plan_decode, DecodePlan, DecodeProblem};
use crate::runtime::{DeviceBuffer, Gpu, LaunchDims};

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
    /// Device i32: `[counts 2 | work 3·ws | merge_indptr mb+1 | kv_indptr mb+1 | kv_indices mp |
    /// merge counters mb·Hkv]`.
    meta: DeviceBuffer<i32>,
    staging: Vec<i32>,
    pinned: Option<crate::runtime::PinnedStaging>,
    work_stride: usize,
    max_batch: usize,
    max_pages: usize,
    part_o: DeviceBuffer<f32>,
    part_lse: DeviceBuffer<f32>,
    owner: PlanOwner,
}

/// What a plan was made for: the op's device context and head geometry. `run` refuses a plan
/// of another owner (its counters and partial buffers are sized for the owner's heads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PlanOwner {
    ctx_id: usize,
    num_qo_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    graph: Option<GraphLimits>,
}

impl BatchDecodePlan {
    /// The host-side partition (work items, chunk length, merge runs).
    pub fn partition(&self) -> &DecodePlan {
        &self.host
    }

    /// Device addresses of the plan's buffers (metadata, partial o, partial lse). In graph mode
    /// they never change across `plan_into` calls — what a captured graph relies on.
    pub fn buffer_addresses(&self) -> [u64; 3] {
        [self.meta.addr(), self.part_o.addr(), self.part_lse.addr()]
    }

    /// Requests in this plan.
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    fn off_work(&self) -> usize {
        2
    }
    fn off_merge(&self) -> usize {
        2 + 3 * self.work_stride
    }
    fn off_indptr(&self) -> usize {
        self.off_merge() + self.max_batch + 1
    }
    fn off_indices(&self) -> usize {
        self.off_indptr() + self.max_batch + 1
    }
    fn off_counters(&self) -> usize {
        self.off_indices() + self.max_pages
    }
}

/// Which decode kernel family runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeKernel {
    /// CUDA cores: `D/8` lanes per K/V row, shuffles for the dot products
    /// (`kernels-gpu/src/batch_decode.rs`); every head dim and group size 1–8.
    CudaCore,
    /// Tensor cores: the group's query heads are the rows of one `mma.m16n8k16` tile
    /// (`kernels-gpu/src/decode_tc.rs`); head dims 64 and 128.
    TensorCore,
}

/// Query groups from which [`DecodeKernel::TensorCore`] is the default (where supported).
/// Measured on the H100 at 64 × 4096, 8 KV heads, D = 128: CUDA cores are faster for groups 1
/// and 2 (370.6 / 376.1 µs vs 380.9 / 381.2), tensor cores from 3 (383.2 vs 388.6 µs).
pub const TENSOR_CORE_MIN_GROUP: usize = 3;

/// Batch decode for one head configuration, dtype and option set.
pub struct BatchDecode {
    gpu: Gpu,
    heads: HeadConfig,
    dtype: DType,
    opts: AttentionOptions,
    kind: DecodeKernel,
    kernel: String,
    smem_bytes: u32,
    chunk_align: usize,
    max_ctas: usize,
    fixed_split: Option<usize>,
    graph: Option<GraphLimits>,
}

impl BatchDecode {
    /// Validates the configuration (head dim 64/128/256, group 1–8, f16/bf16, options) and
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
        if !matches!(heads.head_dim, 64 | 128 | 256) {
            return Err(Error::unsupported(
                OP,
                "head_dim",
                format!("{} (supported: 64, 128, 256)", heads.head_dim),
            ));
        }
        let g = heads.group();
        if u32::try_from(g)
            .ok()
            .and_then(cfg::group_capacity)
            .is_none()
        {
            return Err(Error::unsupported(
                OP,
                "group size",
                format!("{g} (supported: 1..=8)"),
            ));
        }
        if u32::try_from(heads.num_qo_heads * heads.head_dim).is_err()
            || heads.num_kv_heads > 65_535
        {
            return Err(Error::Overflow {
                op: OP,
                what: "heads (grid.y holds at most 65535 KV heads)",
            });
        }
        let kind = if g >= TENSOR_CORE_MIN_GROUP && Self::tensor_cores_support(&heads) {
            DecodeKernel::TensorCore
        } else {
            DecodeKernel::CudaCore
        };
        let mut op = Self {
            gpu: gpu.clone(),
            heads,
            dtype,
            opts,
            kind,
            kernel: String::new(),
            smem_bytes: 0,
            chunk_align: 1,
            max_ctas: 1,
            fixed_split: None,
            graph,
        };
        op.select(kind)?;
        Ok(op)
    }

    fn tensor_cores_support(heads: &HeadConfig) -> bool {
        matches!(heads.head_dim, 64 | 128) && heads.group() <= tccfg::MAX_GROUP as usize
    }

    /// Chooses the kernel family (the default is [`DecodeKernel::TensorCore`] for groups of at
    /// least [`TENSOR_CORE_MIN_GROUP`] where supported). Plans made before the switch must be
    /// remade.
    pub fn set_kernel(&mut self, kind: DecodeKernel) -> Result<()> {
        self.select(kind)
    }

    /// Fixes the split-KV chunk length (tokens; FlashInfer's `fixed_split_size`): results then
    /// do not depend on the batch composition or the device, at some cost in balance. `None`
    /// (the default) lets the planner choose; `Some(usize::MAX)` never splits.
    pub fn set_fixed_split_size(&mut self, tokens: Option<usize>) {
        self.fixed_split = tokens;
    }

    /// The kernel family in use.
    pub fn kernel_kind(&self) -> DecodeKernel {
        self.kind
    }

    fn select(&mut self, kind: DecodeKernel) -> Result<()> {
        let h = &self.heads;
        let d = h.head_dim as u32;
        let (kernel, smem, threads, align) = match kind {
            DecodeKernel::CudaCore => {
                let cap = u32::try_from(h.group())
                    .ok()
                    .and_then(cfg::group_capacity)
                    .unwrap_or(8);
                (
                    format!("decode_{}_d{}_g{}", self.dtype.name(), d, cap),
                    bcfg::smem_bytes(d, cap),
                    cfg::THREADS,
                    cfg::tokens_per_iter(d) as usize,
                )
            }
            DecodeKernel::TensorCore => {
                if !Self::tensor_cores_support(h) {
                    return Err(Error::unsupported(
                        OP,
                        "tensor-core decode",
                        format!("head_dim {} (supported: 64, 128)", h.head_dim),
                    ));
                }
                (
                    format!("decode_tc_{}_d{}", self.dtype.name(), d),
                    tccfg::smem_bytes(d),
                    tccfg::THREADS,
                    tccfg::TILE as usize,
                )
            }
        };
        let f = self.gpu.function(&kernel, smem)?;
        let per_sm = f
            .occupancy_max_active_blocks_per_multiprocessor(threads, smem as usize, None)?
            .max(1) as usize;
        self.max_ctas = per_sm * self.gpu.info().sm_count as usize;
        self.kind = kind;
        self.kernel = kernel;
        self.smem_bytes = smem;
        self.chunk_align = align;
        Ok(())
    }

    /// CTAs the device runs concurrently for this kernel (occupancy × SMs).
    pub fn max_ctas(&self) -> usize {
        self.max_ctas
    }

    /// The decode kernel symbol.
    pub fn kernel_name(&self) -> &str {
        &self.kernel
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
        let budget_items = (self.max_ctas / self.heads.num_kv_heads).max(1);
        let work_stride = match self.graph {
            Some(l) => budget_items.max(l.max_batch),
            None => 0,
        };
        let mut plan = BatchDecodePlan {
            host: DecodePlan::default(),
            batch: 0,
            page_size,
            num_pages_seen: 0,
            meta: self.gpu.alloc::<i32>(1)?,
            staging: Vec::new(),
            pinned: None,
            work_stride,
            max_batch,
            max_pages,
            part_o: self.gpu.alloc::<f32>(1)?,
            part_lse: self.gpu.alloc::<f32>(1)?,
            owner: self.owner(),
        };
        if let Some(l) = self.graph {
            let ws = plan.work_stride;
            plan.meta = self.gpu.alloc::<i32>(
                2 + 3 * ws
                    + 2 * (l.max_batch + 1)
                    + l.max_pages
                    + l.max_batch * self.heads.num_kv_heads
                    + 1,
            )?;
            plan.part_o = self
                .gpu
                .alloc::<f32>(ws * self.heads.num_qo_heads * self.heads.head_dim)?;
            plan.part_lse = self.gpu.alloc::<f32>(ws * self.heads.num_qo_heads)?;
        }
        self.plan_into_inner(pages, page_size, pool, &mut plan)?;
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
        self.plan_into_inner(pages, pool.page_size, Some(pool), plan)
    }

    fn owner(&self) -> PlanOwner {
        PlanOwner {
            ctx_id: self.gpu.ctx_id(),
            num_qo_heads: self.heads.num_qo_heads,
            num_kv_heads: self.heads.num_kv_heads,
            head_dim: self.heads.head_dim,
            graph: self.graph,
        }
    }

    pub(crate) fn replan(
        &self,
        pages: &BatchPages,
        page_size: usize,
        plan: &mut BatchDecodePlan,
    ) -> Result<()> {
        self.plan_into_inner(pages, page_size, None, plan)
    }

    fn validate_pages(
        &self,
        pages: &BatchPages,
        page_size: usize,
        pool: Option<&KvPoolConfig>,
    ) -> Result<()> {
        pages.validate(OP, page_size, pool.map(|p| p.num_pages))?;
        if let Some(pool) = pool {
            if pool.num_kv_heads != self.heads.num_kv_heads || pool.head_dim != self.heads.head_dim
            {
                return Err(Error::shape(
                    OP,
                    "pool heads/head_dim",
                    format!("{}/{}", self.heads.num_kv_heads, self.heads.head_dim),
                    format!("{}/{}", pool.num_kv_heads, pool.head_dim),
                ));
            }
        }
        Ok(())
    }

    fn plan_into_inner(
        &self,
        pages: &BatchPages,
        page_size: usize,
        pool: Option<&KvPoolConfig>,
        plan: &mut BatchDecodePlan,
    ) -> Result<()> {
        if plan.owner != self.owner() {
            return Err(Error::invalid(
                OP,
                "plan",
                "the plan belongs to another op or head configuration",
            ));
        }
        self.validate_pages(pages, page_size, pool)?;
        let batch = pages.batch_size();
        let n_pages = pages.kv_indices.len();
        if self.graph.is_some() && (batch > plan.max_batch || n_pages > plan.max_pages) {
            return Err(Error::invalid(
                OP,
                "plan",
                format!(
                    "batch {batch} / {n_pages} pages exceed the graph-mode limits {} / {}",
                    plan.max_batch, plan.max_pages
                ),
            ));
        }
        let ranges = self.kv_lens(pages, page_size)?;
        if ranges.iter().any(|&(_, e)| e > i32::MAX as usize) {
            return Err(Error::Overflow {
                op: OP,
                what: "kv_len (2^31 tokens per request)",
            });
        }
        let lens: Vec<usize> = ranges.iter().map(|&(b, e)| e - b).collect();
        let graph_items = self.graph.map(|_| plan.work_stride);
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
        let (ws, mb, mp) = match self.graph {
            Some(_) => (plan.work_stride, plan.max_batch, plan.max_pages),
            None => (host.grid_items.max(1), batch, n_pages),
        };
        let per_item = self.heads.num_qo_heads * self.heads.head_dim;
        if ws
            .checked_mul(per_item)
            .is_none_or(|n| n > u32::MAX as usize)
        {
            return Err(Error::Overflow {
                op: OP,
                what: "split-KV partial outputs",
            });
        }
        let n_items = host.num_items();
        let s = &mut plan.staging;
        s.clear();
        s.extend_from_slice(&[n_items as i32, batch as i32]);
        let base = s.len();
        s.resize(base + 3 * ws, 0);
        let work = &mut s[base..];
        for i in 0..n_items {
            let r = host.request[i] as usize;
            work[i] = r as i32;
            work[ws + i] = (ranges[r].0 + host.kv_begin[i] as usize) as i32;
            work[2 * ws + i] = (ranges[r].0 + host.kv_end[i] as usize) as i32;
        }
        let pad = |s: &mut Vec<i32>, v: &[i32], n: usize| {
            s.extend_from_slice(v);
            s.extend(std::iter::repeat_n(0, n - v.len()));
        };
        let merge: Vec<i32> = host.merge_indptr.iter().map(|&x| x as i32).collect();
        pad(s, &merge, mb + 1);
        pad(s, &pages.kv_indptr, mb + 1);
        s.extend_from_slice(&pages.kv_indices);
        // Arrival counters of the fused merge, zeroed by every plan (the kernel also resets
        // them after each merge, so replays without re-planning stay consistent).
        s.extend(std::iter::repeat_n(0, mp - n_pages));
        s.extend(std::iter::repeat_n(0, mb * self.heads.num_kv_heads));
        let mut new_meta = None;
        let mut new_parts = None;
        if self.graph.is_none() {
            if plan.meta.len() < s.len() {
                new_meta = Some(self.gpu.alloc::<i32>(s.len())?);
            }
            if host.split && plan.part_o.len() < ws * per_item {
                new_parts = Some((
                    self.gpu.alloc::<f32>(ws * per_item)?,
                    self.gpu.alloc::<f32>(ws * self.heads.num_qo_heads)?,
                ));
            }
        }
        {
            let meta = new_meta.as_mut().unwrap_or(&mut plan.meta);
            self.gpu
                .upload_pinned(&mut plan.pinned, &plan.staging, meta)?;
        }
        if let Some(m) = new_meta {
            plan.meta = m;
        }
        if let Some((o, l)) = new_parts {
            plan.part_o = o;
            plan.part_lse = l;
        }
        plan.work_stride = ws;
        plan.max_batch = mb;
        plan.max_pages = mp;
        plan.host = host;
        plan.batch = batch;
        plan.page_size = page_size;
        plan.num_pages_seen = pool.map_or(0, |p| p.num_pages);
        Ok(())
    }

    /// Runs decode for the planned batch on one layer's pool: q and out `[batch, Hq, D]`, lse
    /// `[batch, Hq]` (base 2) when given. Launch only: no allocation, no synchronisation.
    pub fn run<T: Float16>(
        &self,
        plan: &BatchDecodePlan,
        q: &DeviceBuffer<T>,
        pool: &KvPool<T>,
        out: &mut DeviceBuffer<T>,
        lse: Option<&mut DeviceBuffer<f32>>,
    ) -> Result<()> {
        let c = pool.config();
        if c.page_size != plan.page_size || c.num_pages != plan.num_pages_seen {
            return Err(Error::invalid(
                OP,
                "plan",
                "the plan was made for a pool of another geometry",
            ));
        }
        if c.num_kv_heads != self.heads.num_kv_heads || c.head_dim != self.heads.head_dim {
            return Err(Error::shape(
                OP,
                "pool heads/head_dim",
                format!("{}/{}", self.heads.num_kv_heads, self.heads.head_dim),
                format!("{}/{}", c.num_kv_heads, c.head_dim),
            ));
        }
        let (k, v) = pool
            .device_buffers()
            .ok_or_else(|| Error::invalid(OP, "pool", "a GPU pool is required"))?;
        self.gpu.check_buffer(OP, k)?;
        let st = c.strides();
        let src = KvSource {
            k: k.addr(),
            v: v.addr(),
            k_stride_page: st.stride_page as u64,
            v_stride_page: st.stride_page as u64,
            k_stride_n: st.stride_n,
            k_stride_h: st.stride_h,
            v_stride_n: st.stride_n,
            v_stride_h: st.stride_h,
            page_size: c.page_size as u32,
            single: false,
        };
        self.launch(plan, src, q, out, lse)
    }

    pub(crate) fn launch<T: Float16>(
        &self,
        plan: &BatchDecodePlan,
        src: KvSource,
        q: &DeviceBuffer<T>,
        out: &mut DeviceBuffer<T>,
        lse: Option<&mut DeviceBuffer<f32>>,
    ) -> Result<()> {
        let h = self.heads;
        if plan.owner != self.owner() {
            return Err(Error::invalid(
                OP,
                "plan",
                "the plan belongs to another op or head configuration",
            ));
        }
        PlannedIo {
            op: OP,
            what: "q/out elements (plan batch × heads × head_dim)",
            elems: plan.batch * h.num_qo_heads * h.head_dim,
            lse_elems: plan.batch * h.num_qo_heads,
            exact: self.graph.is_none() && !src.single,
            gpu: &self.gpu,
            dtype: self.dtype,
        }
        .check(q, out, lse.as_deref())?;
        let base = plan.meta.addr();
        let at = |o: usize| base + (o * 4) as u64;
        let d = h.head_dim as u32;
        let p = DecodeParams {
            q: q.addr(),
            o: out.addr(),
            lse: lse.as_deref().map_or(0, |l| l.addr()),
            k_pool: src.k,
            v_pool: src.v,
            k_stride_page: src.k_stride_page,
            v_stride_page: src.v_stride_page,
            kv_indptr: at(plan.off_indptr()),
            kv_indices: at(plan.off_indices()),
            work: at(plan.off_work()),
            merge_indptr: at(plan.off_merge()),
            counters: at(plan.off_counters()),
            counts: at(0),
            part_o: plan.part_o.addr(),
            part_lse: plan.part_lse.addr(),
            q_stride_b: h.num_qo_heads as u32 * d,
            q_stride_h: d,
            o_stride_b: h.num_qo_heads as u32 * d,
            o_stride_h: d,
            k_stride_n: src.k_stride_n,
            k_stride_h: src.k_stride_h,
            v_stride_n: src.v_stride_n,
            v_stride_h: src.v_stride_h,
            page_size: FastDiv::new(src.page_size),
            num_qo_heads: h.num_qo_heads as u32,
            group: h.group() as u32,
            work_stride: plan.work_stride as u32,
            logit: LogitTransform::new(self.opts.scale(&h), self.opts.soft_cap),
        };
        let dims = LaunchDims {
            grid: (plan.work_stride.max(1) as u32, h.num_kv_heads as u32, 1),
            block: (cfg::THREADS, 1, 1),
            smem_bytes: self.smem_bytes,
        };
        // SAFETY: the plan's metadata was validated (page tables vs the pool, lengths) and
        // uploaded by plan_into; q/out/lse extents checked above; partial buffers sized for the
        // plan's work items.
        unsafe { self.gpu.launch(&self.kernel, dims, p)? };
        Ok(())
    }
}
