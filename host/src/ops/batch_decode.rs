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
use ferrinfer_kernels::abi::{DecodeFp8Params, DecodeParams, DecodeRopeParams};
use ferrinfer_kernels::config::{batch_decode as bcfg, decode_rows as cfg, decode_tc as tccfg};
use ferrinfer_kernels::kernel_key::KernelKey;
use ferrinfer_kernels::math::fastdiv::FastDiv;
use ferrinfer_kernels::math::softmax::LogitTransform;

use crate::dtype::{DType, Float16, KvDtype, KvElem};
use crate::error::{Error, Result};
use crate::fp8::{Fp8, Fp8Format, Fp8Kind, KvScales};
use crate::heads::HeadConfig;
use crate::kv::{BatchPages, KvPool, KvPoolConfig};
use crate::ops::io_check::PlannedIo;
use crate::ops::rope_attn::{self, RopeAttention};
use crate::ops::workspace::{check_graph_fit, check_slots, MetaLayout, PlanOwner, PlanWorkspace};
use crate::options::AttentionOptions;
use crate::plan::decode::{plan as plan_decode, DecodePlan, DecodeProblem};
use crate::rope::RopeConfig;
use crate::runtime::{DeviceBuffer, DeviceSpan, Gpu, Kernel, LaunchDims};
use crate::validate;

mod spans;

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
        validate::kernel_heads(OP, &heads)?;
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

    /// Sets the K/V element type the op reads: the op's own 16-bit dtype ([`BatchDecode::run`])
    /// or fp8 `E4m3`/`E5m2` ([`BatchDecode::run_fp8`], with `k_scale`/`v_scale` per run). For
    /// fp8 this selects [`DecodeKernel::CudaCore`] (the one measured on a GPU so far);
    /// `set_kernel(DecodeKernel::TensorCore)` afterwards picks the tensor-core fp8 kernel (head
    /// dims 64 and 128). As with [`BatchDecode::set_kernel`], plans made before a change of
    /// kernel family must be remade.
    pub fn set_kv_dtype(&mut self, kv: KvDtype) -> Result<()> {
        if !kv.is_fp8() && kv != KvDtype::from(self.dtype) {
            return Err(Error::unsupported(
                OP,
                "kv dtype",
                format!("{kv} K/V with {} queries", self.dtype),
            ));
        }
        if kv.is_fp8() && self.rope.is_some() {
            return Err(Error::unsupported(
                OP,
                "kv dtype",
                format!("{kv} K/V with RoPE inside attention"),
            ));
        }
        let kind = if kv.is_fp8() {
            DecodeKernel::CudaCore
        } else {
            self.kind
        };
        let (kernel, smem, align, max_ctas) =
            Self::resolve(&self.gpu, &self.heads, self.dtype, kv, kind, false)?;
        self.kv = kv;
        self.apply(kind, kernel, smem, align, max_ctas)
    }

    /// The K/V element type the op reads.
    pub fn kv_dtype(&self) -> KvDtype {
        self.kv
    }

    /// Switches RoPE inside attention on (`Some`) or off (FlashInfer's `pos_encoding_mode`
    /// `"ROPE_LLAMA"` / `"NONE"`): q and every key are rotated in the kernel by
    /// `position · inv_freq` of `rope` (any pairing, base, scaling and rotary dim the kernels
    /// support: with `rotate_half` pairing the rotary dim must be a multiple of 16). Key `t` of
    /// request `b` sits at position `offsets[b] + t` and the query at `offsets[b] + kv_len − 1`
    /// (offsets from [`BatchDecode::plan_into_with_offsets`], else 0). Runs the CUDA-core kernel
    /// (this selects it) over 16-bit K/V; fp8 K/V with RoPE is `Unsupported`. Plans made before
    /// a change must be remade.
    pub fn set_rope(&mut self, rope: Option<RopeConfig>) -> Result<()> {
        let Some(cfg) = rope else {
            let (kernel, smem, align, max_ctas) = Self::resolve(
                &self.gpu,
                &self.heads,
                self.dtype,
                self.kv,
                self.kind,
                false,
            )?;
            self.rope = None;
            return self.apply(self.kind, kernel, smem, align, max_ctas);
        };
        if self.kv.is_fp8() {
            return Err(Error::unsupported(
                OP,
                "rope",
                format!("RoPE inside attention over {} K/V", self.kv),
            ));
        }
        let r = RopeAttention::new(OP, &self.gpu, cfg, self.heads.head_dim)?;
        let kind = DecodeKernel::CudaCore;
        let (kernel, smem, align, max_ctas) =
            Self::resolve(&self.gpu, &self.heads, self.dtype, self.kv, kind, true)?;
        self.rope = Some(r);
        self.apply(kind, kernel, smem, align, max_ctas)
    }

    /// The RoPE configuration in use, if any.
    pub fn rope(&self) -> Option<&RopeConfig> {
        self.rope.as_ref().map(RopeAttention::config)
    }

    fn apply(
        &mut self,
        kind: DecodeKernel,
        kernel: Kernel,
        smem: u32,
        align: usize,
        max_ctas: usize,
    ) -> Result<()> {
        self.max_ctas = max_ctas;
        self.kind = kind;
        self.kernel = kernel;
        self.smem_bytes = smem;
        self.chunk_align = align;
        Ok(())
    }

    fn select(&mut self, kind: DecodeKernel) -> Result<()> {
        let rope = self.rope.is_some();
        let (kernel, smem, align, max_ctas) =
            Self::resolve(&self.gpu, &self.heads, self.dtype, self.kv, kind, rope)?;
        self.apply(kind, kernel, smem, align, max_ctas)
    }

    /// The kernel of family `kind` for `heads` and `dtype` (with RoPE inside attention when
    /// `rope`), its dynamic shared memory, the planner's chunk alignment and the CTAs the
    /// device runs at once.
    fn resolve(
        gpu: &Gpu,
        h: &HeadConfig,
        dtype: DType,
        kv: KvDtype,
        kind: DecodeKernel,
        rope: bool,
    ) -> Result<(Kernel, u32, usize, usize)> {
        let d = h.head_dim as u32;
        let fp8 = match kv {
            KvDtype::E4m3 => Some(Fp8Kind::E4m3),
            KvDtype::E5m2 => Some(Fp8Kind::E5m2),
            KvDtype::F16 | KvDtype::Bf16 => None,
        };
        let (key, smem, threads, align) = match kind {
            DecodeKernel::CudaCore => {
                let cap = u32::try_from(h.group())
                    .ok()
                    .and_then(cfg::group_capacity)
                    .unwrap_or(8);
                let key = match fp8 {
                    None if rope => KernelKey::DecodeRope {
                        dtype: dtype.key(),
                        head_dim: d,
                        group: cap,
                    },
                    None => KernelKey::Decode {
                        dtype: dtype.key(),
                        head_dim: d,
                        group: cap,
                    },
                    // set_rope and set_kv_dtype keep fp8 and RoPE apart.
                    Some(fp8) => KernelKey::DecodeFp8 {
                        dtype: dtype.key(),
                        fp8,
                        head_dim: d,
                        group: cap,
                    },
                };
                (
                    key,
                    bcfg::smem_bytes(d, cap),
                    cfg::THREADS,
                    cfg::tokens_per_iter(d) as usize,
                )
            }
            DecodeKernel::TensorCore => {
                if rope {
                    return Err(Error::unsupported(
                        OP,
                        "tensor-core decode",
                        "RoPE inside attention (the CUDA-core kernel supports it)",
                    ));
                }
                if !Self::tensor_cores_support(h) {
                    return Err(Error::unsupported(
                        OP,
                        "tensor-core decode",
                        format!("head_dim {} (supported: 64, 128)", h.head_dim),
                    ));
                }
                let key = match fp8 {
                    None => KernelKey::DecodeTc {
                        dtype: dtype.key(),
                        head_dim: d,
                    },
                    Some(fp8) => KernelKey::DecodeTcFp8 {
                        dtype: dtype.key(),
                        fp8,
                        head_dim: d,
                    },
                };
                (
                    key,
                    tccfg::smem_bytes(d),
                    tccfg::THREADS,
                    tccfg::TILE as usize,
                )
            }
        };
        let k = gpu.kernel(key, smem)?;
        let per_sm = k
            .function()
            .occupancy_max_active_blocks_per_multiprocessor(threads, smem as usize, None)?
            .max(1) as usize;
        Ok((k, smem, align, per_sm * gpu.info().sm_count as usize))
    }

    /// CTAs the device runs concurrently for this kernel (occupancy × SMs).
    pub fn max_ctas(&self) -> usize {
        self.max_ctas
    }

    /// The decode kernel symbol.
    pub fn kernel_name(&self) -> &str {
        self.kernel.name()
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
        let mut s = plan.ws.stage();
        s.at(off.counts)
            .extend_from_slice(&[n_items as i32, batch as i32]);
        let work = s.region(off.work, 3 * ws);
        for i in 0..n_items {
            let r = host.request[i] as usize;
            work[i] = r as i32;
            work[ws + i] = (ranges[r].0 + host.kv_begin[i] as usize) as i32;
            work[2 * ws + i] = (ranges[r].0 + host.kv_end[i] as usize) as i32;
        }
        let merge = s.region(off.merge, caps.max_batch + 1);
        for (m, &x) in merge.iter_mut().zip(&host.merge_indptr) {
            *m = x as i32;
        }
        let indptr = s.region(off.indptr, caps.max_batch + 1);
        indptr[..pages.kv_indptr.len()].copy_from_slice(&pages.kv_indptr);
        s.at(off.indices).extend_from_slice(&pages.kv_indices);
        let rope = s.region(off.rope, caps.max_batch);
        if let Some(o) = offsets {
            rope[..o.len()].copy_from_slice(o);
        }
        // Arrival counters of the fused merge, zeroed by every plan (the kernel also resets
        // them after each merge, so replays without re-planning stay consistent).
        s.region(off.counters, off.len - off.counters);
        plan.ws.commit(&self.gpu, if host.split { ws } else { 0 })?;
        plan.caps = caps;
        plan.off = off;
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
        let src = self.pool_source(plan, pool)?;
        let lse = lse.map(|l| l.span());
        self.launch(plan, src, q.span(), out.span(), lse)
    }

    /// [`BatchDecode::run`] over an fp8 pool read with `scales` (real K/V = code × scale; q
    /// and out stay 16-bit). The op must have been set to the pool's format
    /// ([`BatchDecode::set_kv_dtype`]); another format, or a scale that is not finite and > 0,
    /// is an `InvalidArgument`. Launch only.
    pub fn run_fp8<T: Float16, F: Fp8Format>(
        &self,
        plan: &BatchDecodePlan,
        q: &DeviceBuffer<T>,
        pool: &KvPool<T, Fp8<F>>,
        scales: KvScales,
        out: &mut DeviceBuffer<T>,
        lse: Option<&mut DeviceBuffer<f32>>,
    ) -> Result<()> {
        if Fp8::<F>::KV_DTYPE != self.kv {
            return Err(Error::invalid(
                OP,
                "kv dtype",
                format!(
                    "the op reads {} K/V, the pool holds {}",
                    self.kv,
                    Fp8::<F>::KV_DTYPE
                ),
            ));
        }
        scales.validate(OP)?;
        let src = self.pool_source(plan, pool)?;
        let lse = lse.map(|l| l.span());
        self.launch_scaled(plan, src, q.span(), out.span(), lse, Some(scales))
    }

    /// What the kernels read of `pool` (16-bit or fp8 pages), checked against the plan's
    /// geometry, the op's heads and its context.
    fn pool_source<T: Float16, S: KvElem>(
        &self,
        plan: &BatchDecodePlan,
        pool: &KvPool<T, S>,
    ) -> Result<KvSource> {
        let planned = (plan.page_size, plan.num_pages_seen);
        let (k, v, st) = pool.attention_view(OP, &self.gpu, &self.heads, planned)?;
        Ok(KvSource {
            k: k.addr(),
            v: v.addr(),
            k_stride_page: st.stride_page as u64,
            v_stride_page: st.stride_page as u64,
            k_stride_n: st.stride_n,
            k_stride_h: st.stride_h,
            v_stride_n: st.stride_n,
            v_stride_h: st.stride_h,
            page_size: plan.page_size as u32,
            single: false,
        })
    }

    /// The launch path of 16-bit K/V: [`BatchDecode::launch_scaled`] without scales.
    pub(crate) fn launch<T: Float16>(
        &self,
        plan: &BatchDecodePlan,
        src: KvSource,
        q: DeviceSpan<T>,
        out: DeviceSpan<T>,
        lse: Option<DeviceSpan<f32>>,
    ) -> Result<()> {
        self.launch_scaled(plan, src, q, out, lse, None)
    }

    /// The one launch path: owned buffers ([`BatchDecode::run`], [`BatchDecode::run_fp8`]),
    /// single decode and caller memory ([`BatchDecode::run_spans`]) all arrive here as spans.
    /// `scales`: the fp8 K/V's (`None`: 16-bit K/V); the op's K/V type must agree.
    pub(crate) fn launch_scaled<T: Float16>(
        &self,
        plan: &BatchDecodePlan,
        src: KvSource,
        q: DeviceSpan<T>,
        out: DeviceSpan<T>,
        lse: Option<DeviceSpan<f32>>,
        scales: Option<KvScales>,
    ) -> Result<()> {
        let h = self.heads;
        if self.kv.is_fp8() != scales.is_some() {
            return Err(Error::invalid(
                OP,
                "kv dtype",
                format!(
                    "the op reads {} K/V: {}",
                    self.kv,
                    if self.kv.is_fp8() {
                        "use run_fp8 with k_scale/v_scale"
                    } else {
                        "fp8 K/V need set_kv_dtype first"
                    }
                ),
            ));
        }
        plan.ws.owner().check(OP, &self.owner())?;
        PlannedIo {
            op: OP,
            what: "q/out elements (plan batch × heads × head_dim)",
            elems: plan.batch * h.num_qo_heads * h.head_dim,
            lse_elems: plan.batch * h.num_qo_heads,
            exact: self.graph.is_none() && !src.single,
            gpu: &self.gpu,
            dtype: self.dtype,
        }
        .check(&q, &out, lse.as_ref())?;
        let off = plan.off;
        let at = |o: usize| plan.ws.at(o);
        let d = h.head_dim as u32;
        let p = DecodeParams {
            q: q.addr(),
            o: out.addr(),
            lse: lse.map_or(0, |l| l.addr()),
            k_pool: src.k,
            v_pool: src.v,
            k_stride_page: src.k_stride_page,
            v_stride_page: src.v_stride_page,
            kv_indptr: at(off.indptr),
            kv_indices: at(off.indices),
            work: at(off.work),
            merge_indptr: at(off.merge),
            counters: at(off.counters),
            counts: at(off.counts),
            part_o: plan.ws.part_o(),
            part_lse: plan.ws.part_lse(),
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
            work_stride: plan.caps.work_stride as u32,
            // K's scale multiplies q·k: part of the logit scale (exact for 16-bit K/V: × 1).
            logit: LogitTransform::new(
                self.opts.scale(&h) * scales.map_or(1.0, |s| s.k),
                self.opts.soft_cap,
            ),
        };
        let dims = LaunchDims {
            grid: (
                plan.caps.work_stride.max(1) as u32,
                h.num_kv_heads as u32,
                1,
            ),
            block: (cfg::THREADS, 1, 1),
            smem_bytes: self.smem_bytes,
        };
        // SAFETY: the plan's metadata was validated (page tables vs the pool, lengths) and
        // uploaded by plan_into; q/out/lse extents checked above; partial buffers sized for the
        // plan's work items.
        unsafe {
            match scales {
                None => match &self.rope {
                    None => self.gpu.launch_kernel(&self.kernel, dims, p)?,
                    Some(r) => {
                        let p = DecodeRopeParams {
                            base: p,
                            rope: r.abi(at(off.rope)),
                        };
                        self.gpu.launch_kernel(&self.kernel, dims, p)?
                    }
                },
                Some(s) => {
                    let p = DecodeFp8Params {
                        base: p,
                        v_scale: s.v,
                        reserved: 0,
                    };
                    self.gpu.launch_kernel(&self.kernel, dims, p)?
                }
            }
        };
        Ok(())
    }
}
