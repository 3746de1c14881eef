//! The batch prefill op ([`BatchPrefill`]): its configuration and kernels (resolved once,
//! when it is built) and the launch-only `run_*` calls; planning is in [`super::plan`].
use ferrinfer_kernels::abi::{MergeParams, PrefillParams};
use ferrinfer_kernels::kernel_key::KeyKv;
use ferrinfer_kernels::math::fastdiv::FastDiv;
use ferrinfer_kernels::math::softmax::LogitTransform;

use crate::dtype::{DType, Float16, KvDtype, KvElem};
use crate::error::{Error, Result};
use crate::fp8::{Fp8, Fp8Format, KvScales};
use crate::heads::HeadConfig;
use crate::kv::KvPool;
use crate::ops::io_check::PlannedIo;
use crate::ops::merge;
use crate::ops::rope_attn::RopeAttention;
use crate::options::AttentionOptions;
use crate::rope::RopeConfig;
use crate::runtime::{DeviceBuffer, DeviceSpan, Gpu, Kernel, LaunchDims};
use crate::validate;

use super::graph::PrefillGraphLimits;
use super::launch::{
    fp8_built_for, launch_prefill, ragged_tensor_maps, Fp8Launch, PrefillKernels, RaggedRows,
};
use super::plan::{BatchPrefillPlan, KvKind};
use super::policy::PrefillTile;

pub(super) const OP: &str = "batch_prefill";

/// Batch prefill for one head configuration, dtype and option set.
pub struct BatchPrefill {
    pub(super) gpu: Gpu,
    pub(super) heads: HeadConfig,
    pub(super) dtype: DType,
    pub(super) opts: AttentionOptions,
    /// CTAs resident at once, per tile (`PrefillTile::index`).
    pub(super) max_ctas: [usize; 4],
    pub(super) fixed_split: Option<usize>,
    pub(super) graph: Option<PrefillGraphLimits>,
    /// `None`: chosen per plan ([`PrefillTile::auto`]).
    pub(super) tile: Option<PrefillTile>,
    /// Persistent CTAs for the Hopper tile: `None` chosen per plan
    /// ([`super::persistent_auto`]).
    pub(super) persistent: Option<bool>,
    /// Ragged K/V tiles of the Hopper tile loaded with TMA (`Some(true)`), `cp.async`
    /// (`Some(false)`) or as the plan's items suggest (`None`; [`BatchPrefill::set_tma`]).
    tma: Option<bool>,
    /// The prefill kernels, resolved by `new`.
    kernels: PrefillKernels,
    /// The split-KV merge (f32 partial states).
    merge: Kernel,
    /// RoPE inside attention ([`BatchPrefill::set_rope`]).
    pub(super) rope: Option<RopeAttention>,
    /// The K/V element type runs read ([`BatchPrefill::set_kv_dtype`]).
    pub(super) kv: KvDtype,
}

impl BatchPrefill {
    /// Validates the configuration: head dims 64, 128 and 256, groups 1–32, f16/bf16, options.
    pub fn new(gpu: &Gpu, heads: HeadConfig, dtype: DType, opts: AttentionOptions) -> Result<Self> {
        Self::build(gpu, heads, dtype, opts, None)
    }

    /// CUDA-graph-safe variant: plans never exceed `limits`; buffers are allocated once, grids
    /// are fixed, `run_*` never allocates or synchronises, and every table a launch reads stays
    /// at the addresses a captured launch baked in. What a capture also bakes in is the
    /// plan's kernel: its tile ([`BatchPrefillPlan::tile`]), persistence
    /// ([`BatchPrefillPlan::is_persistent`]) and custom mask ([`BatchPrefillPlan::is_masked`])
    /// — a re-plan that changes one of them needs its own graph (key captured graphs by them,
    /// as the engine keys its graphs by plan addresses), or fix the tile and persistence with
    /// [`BatchPrefill::set_tile`] / [`BatchPrefill::set_persistent`] (masked plans always run
    /// the 64-row tile) for one graph across every plan. FlashInfer instead derives its tile
    /// from the largest step in graph mode; here the choice stays per plan, where uncaptured
    /// runs (the engine's prefill steps) gain from it.
    pub fn new_graph(
        gpu: &Gpu,
        heads: HeadConfig,
        dtype: DType,
        opts: AttentionOptions,
        limits: PrefillGraphLimits,
    ) -> Result<Self> {
        if limits.max_batch == 0 || limits.max_qo_tokens == 0 {
            return Err(Error::invalid(
                OP,
                "graph limits",
                "max_batch and max_qo_tokens must be positive",
            ));
        }
        Self::build(gpu, heads, dtype, opts, Some(limits))
    }

    fn build(
        gpu: &Gpu,
        heads: HeadConfig,
        dtype: DType,
        opts: AttentionOptions,
        graph: Option<PrefillGraphLimits>,
    ) -> Result<Self> {
        heads.validate(OP)?;
        validate::kernel_options(OP, &opts)?;
        validate::kernel_heads(OP, &heads, validate::PREFILL_MAX_GROUP)?;
        let merge = gpu.kernel(merge::key(true, dtype, heads.head_dim), 0)?;
        let kernels = PrefillKernels::resolve(gpu, dtype, heads.head_dim, true, true)?;
        let mut max_ctas = [1; 4];
        for &tile in PrefillTile::available(heads.head_dim, gpu.info().arch) {
            let smem = tile.smem_bytes(heads.head_dim);
            let f = kernels.get(KeyKv::Ragged, tile.form(false, false))?;
            let per_sm = f
                .function()
                .occupancy_max_active_blocks_per_multiprocessor(
                    32 * tile.warps(),
                    smem as usize,
                    None,
                )?
                .max(1) as usize;
            max_ctas[tile.index()] = per_sm * gpu.info().sm_count as usize;
        }
        Ok(Self {
            gpu: gpu.clone(),
            heads,
            dtype,
            opts,
            max_ctas,
            fixed_split: None,
            graph,
            tile: None,
            persistent: None,
            tma: None,
            kernels,
            merge,
            rope: None,
            kv: KvDtype::from(dtype),
        })
    }

    /// Sets the K/V element type runs read: the op's own 16-bit dtype
    /// ([`BatchPrefill::run_paged`], [`BatchPrefill::run_ragged`]) or fp8 `E4m3`/`E5m2`
    /// ([`BatchPrefill::run_paged_fp8`], [`BatchPrefill::run_ragged_fp8`], with
    /// `k_scale`/`v_scale` per run; queries and outputs stay 16-bit). fp8 runs the 64-row tile
    /// (K/V codes converted in registers on the way to the tensor cores) at head dims 64 and
    /// 128, without RoPE inside attention or a custom mask (typed `Unsupported` errors). Plans
    /// remember the type they were made for: plan again after a change.
    pub fn set_kv_dtype(&mut self, kv: KvDtype) -> Result<()> {
        if kv.is_fp8() {
            if !fp8_built_for(self.heads.head_dim) {
                return Err(Error::unsupported(
                    OP,
                    "kv dtype",
                    format!(
                        "{kv} K/V at head_dim {} (supported: 64, 128)",
                        self.heads.head_dim
                    ),
                ));
            }
            if self.rope.is_some() {
                return Err(Error::unsupported(
                    OP,
                    "kv dtype",
                    format!("{kv} K/V with RoPE inside attention"),
                ));
            }
        } else if kv != KvDtype::from(self.dtype) {
            return Err(Error::unsupported(
                OP,
                "kv dtype",
                format!("{kv} K/V with {} queries", self.dtype),
            ));
        }
        self.kv = kv;
        Ok(())
    }

    /// The K/V element type runs read.
    pub fn kv_dtype(&self) -> KvDtype {
        self.kv
    }

    /// Switches RoPE inside attention on (`Some`) or off (FlashInfer's `pos_encoding_mode`
    /// `"ROPE_LLAMA"` / `"NONE"`): q and every key are rotated in the kernel by
    /// `position · inv_freq` of `rope` (as [`crate::ops::BatchDecode::set_rope`]). Key `t` of
    /// request `b` sits at `offsets[b] + t` and query token `i` at its causal position
    /// `offsets[b] + kv_len − qo_len + i` (offsets from `plan_*_into_with_offsets`, else 0).
    /// Plans then run the 64-row tile's `_rope` kernel (K tiles rotated in shared memory); a
    /// custom mask with RoPE is `Unsupported`. Plans made before a change must be remade.
    pub fn set_rope(&mut self, rope: Option<RopeConfig>) -> Result<()> {
        if rope.is_some() && self.kv.is_fp8() {
            return Err(Error::unsupported(
                OP,
                "rope",
                format!("RoPE inside attention with {} K/V", self.kv),
            ));
        }
        self.rope = rope
            .map(|r| RopeAttention::new(OP, &self.gpu, r, self.heads.head_dim))
            .transpose()?;
        Ok(())
    }

    /// The RoPE configuration in use, if any.
    pub fn rope(&self) -> Option<&RopeConfig> {
        self.rope.as_ref().map(RopeAttention::config)
    }

    /// Fixes the CTA tile for every later plan; `None` (the default) chooses per plan with
    /// [`PrefillTile::auto`]. Plans made before keep the tile they were made with.
    pub fn set_tile(&mut self, tile: Option<PrefillTile>) -> Result<()> {
        PrefillTile::check(OP, tile, self.heads.head_dim, self.gpu.info().arch)?;
        self.tile = tile;
        Ok(())
    }

    /// The fixed CTA tile, if any.
    pub fn tile(&self) -> Option<PrefillTile> {
        self.tile
    }

    /// Fixes whether plans with the Hopper tile run persistent CTAs (one wave of CTAs, each
    /// working through a list of units, [`crate::plan::units`]) or one CTA per unit; `None`
    /// (the default) chooses per plan with [`super::persistent_auto`]. Other tiles ignore it.
    pub fn set_persistent(&mut self, persistent: Option<bool>) {
        self.persistent = persistent;
    }

    /// Whether ragged runs with the Hopper tile load K/V tiles with TMA (`Some(true)`: one
    /// producer thread issues box copies from tensor maps encoded per launch) or with
    /// `cp.async` from the whole producer warpgroup (`Some(false)`); `None` (the default)
    /// chooses per plan by the mean tiles per work item ([`super::policy::tma_auto`], at plan time: `cp.async`
    /// for short items). Graph-mode ops always use `cp.async`: a tensor map's row count is
    /// fixed when the launch is captured, and rows past a later step's keys would be read from
    /// whatever the buffer holds (masked, but a non-finite value there would turn `0 · V` into
    /// NaN). Other tiles and paged runs ignore it.
    pub fn set_tma(&mut self, tma: Option<bool>) {
        self.tma = tma;
    }

    /// Fixes the split-KV chunk length (keys): results then do not depend on the batch or the
    /// device. `None` (default) lets the planner choose; `Some(usize::MAX)` never splits.
    pub fn set_fixed_split_size(&mut self, keys: Option<usize>) {
        self.fixed_split = keys;
    }

    /// CTAs the device runs concurrently with `tile` (occupancy × SMs).
    pub fn max_ctas(&self, tile: PrefillTile) -> usize {
        self.max_ctas[tile.index()]
    }

    /// Runs a ragged plan: q and out `[Σ qo_len, Hq, D]`, k and v `[Σ kv_len, Hkv, D]`
    /// (contiguous), lse `[Σ qo_len, Hq]` (base 2) when given. Launch only.
    #[allow(clippy::too_many_arguments)]
    pub fn run_ragged<T: Float16>(
        &self,
        plan: &BatchPrefillPlan,
        q: &DeviceBuffer<T>,
        k: &DeviceBuffer<T>,
        v: &DeviceBuffer<T>,
        out: &mut DeviceBuffer<T>,
        lse: Option<&mut DeviceBuffer<f32>>,
    ) -> Result<()> {
        let kv = self.ragged_spans_addr(plan, &k.span(), &v.span())?;
        let lse = lse.map(|l| l.span());
        self.launch(plan, KvKind::Ragged, kv, q.span(), out.span(), lse)
    }

    /// [`BatchPrefill::run_ragged`] over fp8 K and V (codes of format `F`, `[Σ kv_len, Hkv,
    /// D]`) read with `scales` (real = code × scale). The op must read `F`
    /// ([`BatchPrefill::set_kv_dtype`]) and the plan must have been made since; another
    /// format, or a scale that is not finite and > 0, is an `InvalidArgument`. Launch only.
    #[allow(clippy::too_many_arguments)]
    pub fn run_ragged_fp8<T: Float16, F: Fp8Format>(
        &self,
        plan: &BatchPrefillPlan,
        q: &DeviceBuffer<T>,
        k: &DeviceBuffer<Fp8<F>>,
        v: &DeviceBuffer<Fp8<F>>,
        scales: KvScales,
        out: &mut DeviceBuffer<T>,
        lse: Option<&mut DeviceBuffer<f32>>,
    ) -> Result<()> {
        self.check_fp8::<F>(scales)?;
        let kv = self.ragged_spans_addr(plan, &k.span(), &v.span())?;
        let lse = lse.map(|l| l.span());
        self.launch_scaled(
            plan,
            KvKind::Ragged,
            kv,
            q.span(),
            out.span(),
            lse,
            Some(scales),
        )
    }

    /// [`BatchPrefill::run_paged`] over an fp8 pool read with `scales` (as
    /// [`BatchPrefill::run_ragged_fp8`]). Launch only.
    pub fn run_paged_fp8<T: Float16, F: Fp8Format>(
        &self,
        plan: &BatchPrefillPlan,
        q: &DeviceBuffer<T>,
        pool: &KvPool<T, Fp8<F>>,
        scales: KvScales,
        out: &mut DeviceBuffer<T>,
        lse: Option<&mut DeviceBuffer<f32>>,
    ) -> Result<()> {
        self.check_fp8::<F>(scales)?;
        let kv = self.pool_addr(plan, pool)?;
        let lse = lse.map(|l| l.span());
        self.launch_scaled(
            plan,
            KvKind::Paged,
            kv,
            q.span(),
            out.span(),
            lse,
            Some(scales),
        )
    }

    /// The checks of an fp8 run (`crate::fp8::check_run`).
    pub(super) fn check_fp8<F: Fp8Format>(&self, scales: KvScales) -> Result<()> {
        crate::fp8::check_run::<F>(OP, self.kv, scales)
    }

    /// Runs a paged plan on one layer's pool: q and out `[Σ qo_len, Hq, D]`, lse
    /// `[Σ qo_len, Hq]` (base 2) when given. Launch only.
    pub fn run_paged<T: Float16>(
        &self,
        plan: &BatchPrefillPlan,
        q: &DeviceBuffer<T>,
        pool: &KvPool<T>,
        out: &mut DeviceBuffer<T>,
        lse: Option<&mut DeviceBuffer<f32>>,
    ) -> Result<()> {
        let kv = self.pool_addr(plan, pool)?;
        let lse = lse.map(|l| l.span());
        self.launch(plan, KvKind::Paged, kv, q.span(), out.span(), lse)
    }

    /// What the kernels read of `pool` (16-bit or fp8 pages), checked against a paged plan's
    /// geometry and the op's heads.
    fn pool_addr<T: Float16, S: KvElem>(
        &self,
        plan: &BatchPrefillPlan,
        pool: &KvPool<T, S>,
    ) -> Result<KvAddr> {
        if plan.kind != KvKind::Paged {
            return Err(Error::invalid(
                OP,
                "plan",
                "a ragged plan run on a paged pool",
            ));
        }
        let planned = (plan.page_size, plan.num_pages_seen);
        let (k, v, st) = pool.attention_view(OP, &self.gpu, &self.heads, planned)?;
        Ok(KvAddr {
            k: k.addr(),
            v: v.addr(),
            stride_page: st.stride_page as u64,
            stride_n: st.stride_n,
            stride_h: st.stride_h,
            page_size: plan.page_size as u32,
        })
    }

    /// The launch path of 16-bit K/V: [`BatchPrefill::launch_scaled`] without scales.
    pub(super) fn launch<T: Float16>(
        &self,
        plan: &BatchPrefillPlan,
        kind: KvKind,
        kv: KvAddr,
        q: DeviceSpan<T>,
        out: DeviceSpan<T>,
        lse: Option<DeviceSpan<f32>>,
    ) -> Result<()> {
        self.launch_scaled(plan, kind, kv, q, out, lse, None)
    }

    /// The one launch path: owned buffers and caller memory (`super::spans`) arrive as spans.
    /// `scales`: the fp8 K/V's (`None`: 16-bit K/V); the op's and the plan's K/V type must
    /// agree with it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch_scaled<T: Float16>(
        &self,
        plan: &BatchPrefillPlan,
        kind: KvKind,
        kv: KvAddr,
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
                        "use run_paged_fp8/run_ragged_fp8 with k_scale/v_scale"
                    } else {
                        "fp8 K/V need set_kv_dtype first"
                    }
                ),
            ));
        }
        if plan.kv != self.kv {
            return Err(Error::invalid(
                OP,
                "plan",
                format!(
                    "made for {} K/V, the op reads {}: plan again after set_kv_dtype",
                    plan.kv, self.kv
                ),
            ));
        }
        plan.ws.owner().check(OP, &self.owner())?;
        PlannedIo {
            op: OP,
            what: "q/out elements (planned Σ qo_len × heads × head_dim)",
            elems: plan.qo_tokens * h.num_qo_heads * h.head_dim,
            lse_elems: plan.qo_tokens * h.num_qo_heads,
            exact: self.graph.is_none(),
            gpu: &self.gpu,
            dtype: self.dtype,
        }
        .check(&q, &out, lse.as_ref())?;
        let grid_items = match self.graph {
            Some(_) => plan.caps.items,
            None => plan.host.items.len(),
        };
        let merge_rows = match self.graph {
            Some(_) => plan.caps.rows,
            None => plan.host.merge_rows.len(),
        };
        if grid_items == 0 {
            return Ok(());
        }
        // Persistent plans: one CTA per scheduled unit list. Otherwise grid (KV heads, items):
        // KV head fastest in launch order (kernels-gpu/src/prefill.rs `cta_work`); grid.y holds
        // at most 65535 items.
        let grid = if plan.ctas > 0 {
            (plan.ctas as u32, 1, 1)
        } else {
            let items_y = u32::try_from(grid_items)
                .ok()
                .filter(|&n| n <= 65_535)
                .ok_or(Error::Overflow {
                    op: OP,
                    what: "work items (grid.y holds at most 65535; split the step)",
                })?;
            (h.num_kv_heads as u32, items_y, 1)
        };
        let off = plan.off;
        let at = |o: usize| plan.ws.at(o);
        let d = h.head_dim as u32;
        let g = h.group() as u32;
        let hq = h.num_qo_heads as u32;
        let lse_addr = lse.map_or(0, |l| l.addr());
        let p = PrefillParams {
            q: q.addr(),
            o: out.addr(),
            lse: lse_addr,
            k: kv.k,
            v: kv.v,
            k_stride_page: kv.stride_page,
            v_stride_page: kv.stride_page,
            items: at(off.items),
            num_items: at(off.counts),
            requests: at(off.requests),
            kv_indices: at(off.pages),
            part_o: plan.ws.part_o(),
            part_lse: plan.ws.part_lse(),
            units: if plan.ctas > 0 { at(off.units) } else { 0 },
            q_stride_n: hq * d,
            q_stride_h: d,
            o_stride_n: hq * d,
            o_stride_h: d,
            k_stride_n: kv.stride_n,
            k_stride_h: kv.stride_h,
            v_stride_n: kv.stride_n,
            v_stride_h: kv.stride_h,
            page_size: FastDiv::new(kv.page_size),
            qo_len: 0,
            kv_len: 0,
            num_qo_heads: hq,
            group: FastDiv::new(g),
            tile_tokens: plan.tile.tokens(h.group()) as u32,
            window_left: self.opts.window_left.map_or(u32::MAX, |w| w as u32),
            causal: self.opts.causal as u32,
            // K's scale multiplies q·k: part of the logit scale (× 1 for 16-bit K/V).
            logit: LogitTransform::new(
                self.opts.scale(&h) * scales.map_or(1.0, |s| s.k),
                self.opts.soft_cap,
            ),
            mask: if plan.masked { at(off.mask_bits) } else { 0 },
            mask_indptr: if plan.masked { at(off.mask_indptr) } else { 0 },
        };
        let dims = LaunchDims {
            grid,
            block: (32 * plan.tile.warps(), 1, 1),
            smem_bytes: match (self.rope.is_some(), scales.is_some()) {
                (true, _) => plan.tile.rope_smem_bytes(h.head_dim),
                (_, true) => plan.tile.fp8_smem_bytes(h.head_dim),
                _ => plan.tile.smem_bytes(h.head_dim),
            },
        };
        let hopper = plan.tile == PrefillTile::Rows128Wgmma;
        let tma = self.tma.unwrap_or(plan.tma);
        let maps = if hopper && kind == KvKind::Ragged && tma && self.graph.is_none() {
            let rows = |addr| RaggedRows {
                addr,
                stride_n: kv.stride_n as u64,
                stride_h: kv.stride_h as u64,
            };
            ragged_tensor_maps(self.dtype, &h, plan.kv_tokens, rows(kv.k), rows(kv.v))?
        } else {
            None
        };
        // SAFETY: the plan's tables were validated against the batch (and the pool's page
        // count) and uploaded by plan_*_into; q/out/lse/k/v extents checked above; partial
        // buffers hold the plan's slots; tensor maps describe the launch's own K/V rows.
        unsafe {
            launch_prefill(
                &self.gpu,
                &self.kernels,
                kind.key(),
                plan.tile,
                plan.ctas > 0,
                maps,
                dims,
                p,
                self.rope.as_ref().map(|r| r.abi(at(off.rope))),
                scales
                    .zip(self.kv.fp8())
                    .map(|(s, kind)| Fp8Launch { kind, v_scale: s.v }),
            )?
        };
        if merge_rows > 0 {
            let mp = MergeParams {
                v: plan.ws.part_o(),
                s: plan.ws.part_lse(),
                o: out.addr(),
                lse: lse_addr,
                rows: at(off.rows),
                num_rows_dev: at(off.counts + 1),
                v_stride_row: 0,
                v_stride_state: (hq * d) as i64,
                s_stride_row: 0,
                s_stride_state: hq as i64,
                v_stride_h: d,
                s_stride_h: 1,
                o_stride_row: hq * d,
                o_stride_h: d,
                lse_stride_row: hq,
                num_rows: merge_rows as u32,
                num_states: 0,
                num_heads: hq,
            };
            // SAFETY: merge rows address partial slots the prefill kernel wrote in this
            // stream, and output tokens of q's extent.
            unsafe { merge::launch(&self.gpu, &self.merge, mp)? };
        }
        Ok(())
    }
}

/// K/V addressing of one launch.
#[derive(Clone, Copy, Debug)]
pub(super) struct KvAddr {
    pub(super) k: u64,
    pub(super) v: u64,
    pub(super) stride_page: u64,
    pub(super) stride_n: u32,
    pub(super) stride_h: u32,
    pub(super) page_size: u32,
}

impl KvAddr {
    /// Ragged K/V at `k` and `v`: contiguous `[tokens, kv_heads, head_dim]` rows, addressed as
    /// pages of one token.
    pub(super) fn ragged(k: u64, v: u64, h: HeadConfig) -> Self {
        let d = h.head_dim as u32;
        Self {
            k,
            v,
            stride_page: 0,
            stride_n: h.num_kv_heads as u32 * d,
            stride_h: d,
            page_size: 1,
        }
    }
}
