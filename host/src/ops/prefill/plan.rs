//! Planning a batch-prefill step (host side, once per step): validation, the pure planner
//! ([`crate::plan::prefill`]: query tiles × KV chunks, split-KV for small batches), the tile
//! and persistence choice ([`super::policy`]) and one upload of the work items, request table,
//! merge rows, page list and persistent unit lists ([`super::graph::MetaOffsets`]) into the
//! plan's workspace ([`crate::ops::workspace`]).
use ferrinfer_kernels::abi::PrefillItem;
use ferrinfer_kernels::config::prefill as cfg;
use ferrinfer_kernels::config::prefill_hopper as hopper_cfg;
use ferrinfer_kernels::kernel_key::KeyKv;

use crate::checked;
use crate::dtype::KvDtype;
use crate::error::{Error, Result};
use crate::kv::{BatchPages, KvPoolConfig};
use crate::mask::PackedMask;
use crate::ops::rope_attn;
use crate::ops::workspace::{check_graph_fit, check_slots, PlanOwner, PlanWorkspace, Staged};
use crate::plan::prefill::{plan as plan_prefill, PrefillPlan, PrefillProblem};
use crate::plan::units::{schedule as schedule_units, UnitSchedule};
use crate::runtime::DeviceSpan;
use crate::validate;

use super::batch::{BatchPrefill, OP};
use super::graph::{Caps, MetaOffsets, PrefillGraphLimits};
use super::policy::{mean_keys_per_query, persistent_auto, tma_auto, PrefillTile, MIN_CHUNK};

/// Where a plan's K/V comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum KvKind {
    Ragged,
    Paged,
}

impl KvKind {
    pub(super) fn key(self) -> KeyKv {
        match self {
            KvKind::Ragged => KeyKv::Ragged,
            KvKind::Paged => KeyKv::Paged,
        }
    }
}

/// A step's plan: the host partition, its device copy and the split-KV workspace.
pub struct BatchPrefillPlan {
    pub(super) host: PrefillPlan,
    pub(super) tile: PrefillTile,
    pub(super) kind: KvKind,
    pub(super) batch: usize,
    pub(super) qo_tokens: usize,
    pub(super) kv_tokens: usize,
    pub(super) page_size: usize,
    pub(super) num_pages_seen: usize,
    /// Capacities of the device tables (their offsets: [`Caps::offsets`]).
    pub(super) caps: Caps,
    /// Where the tables live (`caps.offsets()`, kept so launches do not recompute it).
    pub(super) off: MetaOffsets,
    /// Persistent grid of the plan's kernel (0: one CTA per unit, grid `(kv heads, items)`).
    pub(super) ctas: usize,
    /// The producer the items suggest for ragged Hopper launches ([`tma_auto`]), decided once
    /// here rather than per launch; the op's `set_tma` overrides it.
    pub(super) tma: bool,
    pub(super) ws: PlanWorkspace<PrefillGraphLimits>,
    /// Whether the step has a custom mask (masked plans run the 64-row `_mask` kernel; the
    /// mask lives in the plan's tables, at `off.mask_indptr` / `off.mask_bits`).
    pub(super) masked: bool,
    /// The K/V element type the plan was made for (fp8 plans run the 64-row `_fp8` kernels).
    pub(super) kv: KvDtype,
}

impl BatchPrefillPlan {
    /// The host-side partition (items, merge rows, chunk length).
    pub fn partition(&self) -> &PrefillPlan {
        &self.host
    }

    /// Requests in this plan.
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// The CTA tile the plan runs with.
    pub fn tile(&self) -> PrefillTile {
        self.tile
    }

    /// Query tokens in this plan (Σ qo_len).
    pub fn qo_tokens(&self) -> usize {
        self.qo_tokens
    }

    /// Whether the plan runs persistent CTAs (the Hopper tile's unit lists).
    pub fn is_persistent(&self) -> bool {
        self.ctas > 0
    }

    /// Whether the plan carries a custom mask (it runs the `_mask` kernel).
    pub fn is_masked(&self) -> bool {
        self.masked
    }

    /// Device addresses of the plan's buffers (metadata, partial o, partial lse): constant
    /// across `plan_*_into` calls in graph mode.
    pub fn buffer_addresses(&self) -> [u64; 3] {
        self.ws.addresses()
    }
}

/// One step's batch as the planner sees it.
struct Step<'a> {
    kind: KvKind,
    qo_indptr: &'a [i32],
    kv_lens: &'a [usize],
    kv_begin: &'a [u32],
    kv_indices: &'a [i32],
    page_size: usize,
    num_pages: Option<usize>,
    mask: Option<&'a PackedMask>,
    /// RoPE position offsets, one per request (`None`: zeros).
    offsets: Option<&'a [i32]>,
}

impl BatchPrefill {
    pub(super) fn owner(&self) -> PlanOwner<PrefillGraphLimits> {
        PlanOwner::new(&self.gpu, self.heads, self.graph)
    }

    /// Buffer capacities in graph mode (fixed by the limits).
    fn graph_caps(&self, l: &PrefillGraphLimits) -> Caps {
        let max_ctas = self.max_ctas.iter().max().copied().unwrap_or(1);
        Caps::graph(
            l,
            &self.heads,
            max_ctas,
            self.persistent_ctas(PrefillTile::Rows128Wgmma),
        )
    }

    /// The persistent grid of `tile` (its CTAs run lists of units, [`crate::plan::units`]):
    /// one wave of CTAs for the Hopper tile where it is built, 0 (one unit per CTA) otherwise.
    fn persistent_ctas(&self, tile: PrefillTile) -> usize {
        let built = PrefillTile::available(self.heads.head_dim, self.gpu.info().arch)
            .contains(&PrefillTile::Rows128Wgmma);
        if tile == PrefillTile::Rows128Wgmma && built {
            self.max_ctas[tile.index()]
        } else {
            0
        }
    }

    fn empty_plan(&self, kind: KvKind) -> Result<BatchPrefillPlan> {
        self.empty_plan_in(kind, None)
    }

    /// An empty plan whose tables live in op-owned buffers (`workspace` `None`) or in the
    /// caller's workspace (see [`BatchPrefill::plan_paged_in_workspace`]).
    pub(super) fn empty_plan_in(
        &self,
        kind: KvKind,
        workspace: Option<DeviceSpan<u8>>,
    ) -> Result<BatchPrefillPlan> {
        let caps = self.graph.map(|l| self.graph_caps(&l));
        let fixed = caps.map(|c| (c.offsets().len, c.slots));
        let ws = match workspace {
            Some(w) => PlanWorkspace::in_caller(OP, &self.gpu, self.owner(), fixed, w)?,
            None => PlanWorkspace::new(&self.gpu, self.owner(), fixed)?,
        };
        Ok(BatchPrefillPlan {
            host: PrefillPlan::default(),
            tile: PrefillTile::default(),
            kind,
            batch: 0,
            qo_tokens: 0,
            kv_tokens: 0,
            page_size: 0,
            num_pages_seen: 0,
            caps: caps.unwrap_or_default(),
            off: caps.unwrap_or_default().offsets(),
            ctas: 0,
            tma: false,
            ws,
            masked: false,
            kv: self.kv,
        })
    }

    /// Plans a step over ragged K/V: request `b` has query tokens `qo_indptr[b]..qo_indptr[b+1]`
    /// of q and K/V tokens `kv_indptr[b]..kv_indptr[b+1]` of k/v (`qo_len ≤ kv_len`).
    pub fn plan_ragged(&self, qo_indptr: &[i32], kv_indptr: &[i32]) -> Result<BatchPrefillPlan> {
        let mut plan = self.empty_plan(KvKind::Ragged)?;
        self.plan_ragged_into(qo_indptr, kv_indptr, &mut plan)?;
        Ok(plan)
    }

    /// Re-plans a ragged step into an existing plan (no allocation in graph mode).
    pub fn plan_ragged_into(
        &self,
        qo_indptr: &[i32],
        kv_indptr: &[i32],
        plan: &mut BatchPrefillPlan,
    ) -> Result<()> {
        self.ragged_step(qo_indptr, kv_indptr, None, None, plan)
    }

    /// [`BatchPrefill::plan_ragged_into`] with explicit RoPE position offsets, one per request
    /// (`≥ 0`): key `t` of request `b` at `offsets[b] + t`, its query tokens at their causal
    /// positions from there (FlashInfer's `rope_pos_offset`). Without RoPE
    /// ([`BatchPrefill::set_rope`]) they are checked and unused.
    pub fn plan_ragged_into_with_offsets(
        &self,
        qo_indptr: &[i32],
        kv_indptr: &[i32],
        offsets: &[i32],
        plan: &mut BatchPrefillPlan,
    ) -> Result<()> {
        self.ragged_step(qo_indptr, kv_indptr, None, Some(offsets), plan)
    }

    /// [`BatchPrefill::plan_ragged`] under a custom mask ([`PackedMask`]: per request a
    /// `[qo_len, kv_len]` bit matrix, combined with the op's causal flag and window). The plan
    /// runs the 64-row tile's `_mask` kernel (the other tiles have no masked form) and uploads
    /// the mask with its tables (no allocation of its own; in CUDA-graph mode up to
    /// [`PrefillGraphLimits::max_mask_bytes`], at addresses fixed for later plans).
    pub fn plan_ragged_masked(
        &self,
        qo_indptr: &[i32],
        kv_indptr: &[i32],
        mask: &PackedMask,
    ) -> Result<BatchPrefillPlan> {
        let mut plan = self.empty_plan(KvKind::Ragged)?;
        self.ragged_step(qo_indptr, kv_indptr, Some(mask), None, &mut plan)?;
        Ok(plan)
    }

    /// Re-plans a masked ragged step into an existing plan (no allocation in graph mode; the
    /// mask's addresses stay those of the plan's first step).
    pub fn plan_ragged_masked_into(
        &self,
        qo_indptr: &[i32],
        kv_indptr: &[i32],
        mask: &PackedMask,
        plan: &mut BatchPrefillPlan,
    ) -> Result<()> {
        self.ragged_step(qo_indptr, kv_indptr, Some(mask), None, plan)
    }

    pub(super) fn ragged_step(
        &self,
        qo_indptr: &[i32],
        kv_indptr: &[i32],
        mask: Option<&PackedMask>,
        offsets: Option<&[i32]>,
        plan: &mut BatchPrefillPlan,
    ) -> Result<()> {
        validate::ragged_indptr(OP, qo_indptr, kv_indptr, None)?;
        let batch = qo_indptr.len() - 1;
        let kv_lens: Vec<usize> = kv_indptr
            .windows(2)
            .map(|w| (w[1] - w[0]) as usize)
            .collect();
        let kv_begin: Vec<u32> = kv_indptr[..batch].iter().map(|&x| x as u32).collect();
        let step = Step {
            kind: KvKind::Ragged,
            qo_indptr,
            kv_lens: &kv_lens,
            kv_begin: &kv_begin,
            kv_indices: &[],
            page_size: 0,
            num_pages: None,
            mask,
            offsets,
        };
        self.plan_step(&step, plan)?;
        plan.kv_tokens = kv_indptr[batch] as usize;
        Ok(())
    }

    /// Plans a step over the paged cache: request `b` has query tokens
    /// `qo_indptr[b]..qo_indptr[b+1]` and the KV of entry `b` of `pages` (already appended:
    /// its last `qo_len` tokens are the queries' own keys).
    pub fn plan_paged(
        &self,
        qo_indptr: &[i32],
        pages: &BatchPages,
        pool: &KvPoolConfig,
    ) -> Result<BatchPrefillPlan> {
        let mut plan = self.empty_plan(KvKind::Paged)?;
        self.plan_paged_into(qo_indptr, pages, pool, &mut plan)?;
        Ok(plan)
    }

    /// Re-plans a paged step into an existing plan (no allocation in graph mode).
    pub fn plan_paged_into(
        &self,
        qo_indptr: &[i32],
        pages: &BatchPages,
        pool: &KvPoolConfig,
        plan: &mut BatchPrefillPlan,
    ) -> Result<()> {
        self.paged_step(qo_indptr, pages, pool, None, None, plan)
    }

    /// [`BatchPrefill::plan_paged_into`] with explicit RoPE position offsets (as
    /// [`BatchPrefill::plan_ragged_into_with_offsets`]).
    pub fn plan_paged_into_with_offsets(
        &self,
        qo_indptr: &[i32],
        pages: &BatchPages,
        pool: &KvPoolConfig,
        offsets: &[i32],
        plan: &mut BatchPrefillPlan,
    ) -> Result<()> {
        self.paged_step(qo_indptr, pages, pool, None, Some(offsets), plan)
    }

    /// [`BatchPrefill::plan_paged`] under a custom mask (as
    /// [`BatchPrefill::plan_ragged_masked`]).
    pub fn plan_paged_masked(
        &self,
        qo_indptr: &[i32],
        pages: &BatchPages,
        pool: &KvPoolConfig,
        mask: &PackedMask,
    ) -> Result<BatchPrefillPlan> {
        let mut plan = self.empty_plan(KvKind::Paged)?;
        self.paged_step(qo_indptr, pages, pool, Some(mask), None, &mut plan)?;
        Ok(plan)
    }

    /// Re-plans a masked paged step into an existing plan (as
    /// [`BatchPrefill::plan_ragged_masked_into`]).
    pub fn plan_paged_masked_into(
        &self,
        qo_indptr: &[i32],
        pages: &BatchPages,
        pool: &KvPoolConfig,
        mask: &PackedMask,
        plan: &mut BatchPrefillPlan,
    ) -> Result<()> {
        self.paged_step(qo_indptr, pages, pool, Some(mask), None, plan)
    }

    pub(super) fn paged_step(
        &self,
        qo_indptr: &[i32],
        pages: &BatchPages,
        pool: &KvPoolConfig,
        mask: Option<&PackedMask>,
        offsets: Option<&[i32]>,
        plan: &mut BatchPrefillPlan,
    ) -> Result<()> {
        pages.validate(OP, pool.page_size, Some(pool.num_pages))?;
        validate::pool_heads(OP, pool, &self.heads)?;
        validate::qo_indptr(OP, qo_indptr, pages.batch_size())?;
        let batch = pages.batch_size();
        let kv_lens: Vec<usize> = (0..batch)
            .map(|b| pages.kv_len(b, pool.page_size))
            .collect::<Result<_>>()?;
        let kv_begin: Vec<u32> = pages.kv_indptr[..batch].iter().map(|&x| x as u32).collect();
        let step = Step {
            kind: KvKind::Paged,
            qo_indptr,
            kv_lens: &kv_lens,
            kv_begin: &kv_begin,
            kv_indices: &pages.kv_indices,
            page_size: pool.page_size,
            num_pages: Some(pool.num_pages),
            mask,
            offsets,
        };
        self.plan_step(&step, plan)
    }

    fn plan_step(&self, st: &Step<'_>, plan: &mut BatchPrefillPlan) -> Result<()> {
        plan.ws.owner().check(OP, &self.owner())?;
        if plan.kind != st.kind {
            return Err(Error::invalid(
                OP,
                "plan",
                "a ragged plan cannot be re-planned as paged, or the reverse",
            ));
        }
        let batch = st.kv_lens.len();
        let qo_lens: Vec<usize> = st
            .qo_indptr
            .windows(2)
            .map(|w| (w[1] - w[0]) as usize)
            .collect();
        let qo_tokens = st.qo_indptr[batch] as usize;
        if st.mask.is_some() && self.kv.is_fp8() {
            return Err(Error::unsupported(
                OP,
                "custom mask",
                format!("with {} K/V (the fp8 kernels have no masked form)", self.kv),
            ));
        }
        if let Some(m) = st.mask {
            if self.graph.is_some_and(|l| l.max_mask_bytes == 0) {
                return Err(Error::unsupported(
                    OP,
                    "custom mask",
                    "in CUDA-graph mode with max_mask_bytes 0 (the graph limits reserve no \
                     room for one)",
                ));
            }
            super::mask::check_head_dim(OP, self.heads.head_dim)?;
            m.check(OP, qo_lens.iter().copied().zip(st.kv_lens.iter().copied()))?;
        }
        if let Some(o) = st.offsets {
            rope_attn::check_offsets(OP, o, st.kv_lens)?;
        }
        if st.mask.is_some() && self.rope.is_some() {
            return Err(Error::unsupported(
                OP,
                "rope",
                "RoPE inside attention with a custom mask",
            ));
        }
        if let Some(l) = self.graph {
            check_graph_fit(
                OP,
                &[
                    ("batch", batch, l.max_batch),
                    ("query tokens", qo_tokens, l.max_qo_tokens),
                    ("pages", st.kv_indices.len(), l.max_pages),
                    (
                        "mask bytes",
                        st.mask.map_or(0, mask_bytes),
                        l.max_mask_bytes,
                    ),
                ],
            )?;
        }
        let per_token = self.heads.num_qo_heads * self.heads.head_dim;
        if qo_tokens
            .checked_mul(per_token)
            .is_none_or(|n| n > u32::MAX as usize)
        {
            return Err(Error::Overflow {
                op: OP,
                what: "query tokens × heads × head_dim",
            });
        }
        // A masked plan, one with RoPE or one over fp8 K/V runs the 64-row tile: the only one
        // with those forms.
        let fixed_tile = match (st.mask, &self.rope, self.kv.is_fp8()) {
            (None, None, false) => self.tile,
            _ => Some(PrefillTile::Rows64),
        };
        let tile = fixed_tile.unwrap_or_else(|| {
            PrefillTile::auto(
                qo_tokens,
                batch,
                mean_keys_per_query(&qo_lens, st.kv_lens, &self.opts),
                self.heads.group(),
                self.heads.head_dim,
                self.gpu.info().arch,
            )
        });
        let graph_caps = self.graph.map(|l| self.graph_caps(&l));
        let mut host = plan_prefill(&PrefillProblem {
            qo_lens: &qo_lens,
            kv_lens: st.kv_lens,
            tile_tokens: tile.tokens(self.heads.group()),
            causal: self.opts.causal,
            window_left: self.opts.window_left,
            num_kv_heads: self.heads.num_kv_heads,
            max_ctas: self.max_ctas[tile.index()],
            min_chunk: MIN_CHUNK,
            chunk_align: cfg::TILE as usize,
            fixed_chunk: self.fixed_split,
            max_items: graph_caps.map(|c| c.items),
            max_slots: graph_caps.map(|c| c.slots),
        })?;
        if let Some(m) = st.mask {
            let tokens = tile.tokens(self.heads.group());
            super::mask::narrow_items(&mut host.items, m, &qo_lens, st.kv_lens, tokens);
        }
        // Persistent CTAs (the Hopper tile): one wave of CTAs, each running its list of
        // (item, KV head) units; in graph mode the grid is the capacity's, fixed.
        let units_total = checked::mul(OP, "units", host.items.len(), self.heads.num_kv_heads)?;
        let wanted = self
            .persistent
            .unwrap_or_else(|| persistent_auto(&host.items));
        let ctas = match (self.persistent_ctas(tile), graph_caps) {
            (0, _) => 0,
            _ if !wanted => 0,
            (_, Some(c)) => c.ctas,
            (n, None) => n.min(units_total).max(1),
        };
        let schedule = (ctas > 0)
            .then(|| {
                schedule_units(
                    &host.items,
                    self.heads.num_kv_heads,
                    ctas,
                    hopper_cfg::TILE as usize,
                )
            })
            .transpose()?;
        let caps = graph_caps.unwrap_or(Caps {
            items: host.items.len().max(1),
            batch,
            rows: host.merge_rows.len(),
            pages: st.kv_indices.len(),
            slots: host.num_slots,
            ctas,
            units: units_total,
            // At least one word, so a masked plan always has its region.
            mask_words: st
                .mask
                .map_or(0, |m| super::mask::bits_words(mask_bytes(m)).max(1)),
        });
        check_slots(OP, host.num_slots, &self.heads)?;
        stage(
            plan.ws.stage(&self.gpu, caps.offsets().len)?,
            &caps,
            &host,
            st,
            &qo_lens,
            schedule.as_ref(),
        )?;
        plan.ws.commit(&self.gpu, host.num_slots)?;
        plan.masked = st.mask.is_some();
        plan.kv = self.kv;
        plan.caps = caps;
        plan.off = caps.offsets();
        plan.host = host;
        plan.tile = tile;
        plan.ctas = ctas;
        plan.tma = tma_auto(&plan.host.items);
        plan.batch = batch;
        plan.qo_tokens = qo_tokens;
        plan.page_size = st.page_size;
        plan.num_pages_seen = st.num_pages.unwrap_or(0);
        Ok(())
    }
}

/// Fills the device metadata of a plan (layout: [`Caps::offsets`]).
fn stage(
    mut s: Staged<'_>,
    caps: &Caps,
    host: &PrefillPlan,
    st: &Step<'_>,
    qo_lens: &[usize],
    schedule: Option<&UnitSchedule>,
) -> Result<()> {
    let off = caps.offsets();
    s.at(off.counts)?.extend_from_slice(&[
        host.items.len() as i32,
        host.merge_rows.len() as i32,
        0,
        0,
    ])?;
    let v = s.at(off.items)?;
    for it in &host.items {
        let PrefillItem {
            request,
            t0,
            kv_begin,
            kv_end,
            part,
            chunk,
            nchunks,
            pad: _,
        } = *it;
        v.extend([request, t0, kv_begin, kv_end, part, chunk, nchunks, 0].map(|x| x as i32))?;
    }
    let v = s.at(off.requests)?;
    for (b, &qo_len) in qo_lens.iter().enumerate() {
        v.extend([
            st.qo_indptr[b],
            qo_len as i32,
            st.kv_begin[b] as i32,
            st.kv_lens[b] as i32,
        ])?;
    }
    let v = s.at(off.rows)?;
    for r in &host.merge_rows {
        v.extend(r.map(|x| x as i32))?;
    }
    s.at(off.pages)?.extend_from_slice(st.kv_indices)?;
    let rope = s.region(off.rope, caps.batch)?;
    if let Some(o) = st.offsets {
        rope[..o.len()].copy_from_slice(o);
    }
    if let Some(sc) = schedule {
        let v = s.at(off.units)?;
        v.extend(sc.offsets.iter().map(|&x| x as i32))?;
        v.extend(sc.units.iter().flat_map(|u| u.map(|x| x as i32)))?;
    }
    if let Some(m) = st.mask {
        // The kernels read these as `u32`: the same bits stored as `i32`.
        s.at(off.mask_indptr)?.extend_from_slice(&m.indptr)?;
        s.at(off.mask_bits)?
            .extend(super::mask::bit_words(&m.bits[..mask_bytes(m)]).map(|w| w as i32))?;
    }
    Ok(())
}

/// Packed bytes of `mask` (its offsets' last entry, at most its bits' length once checked).
fn mask_bytes(mask: &PackedMask) -> usize {
    mask.indptr.last().map_or(0, |&b| b as usize)
}
