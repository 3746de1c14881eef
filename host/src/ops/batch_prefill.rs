//! Batch prefill / append attention on tensor cores, over ragged (packed) K/V or the paged KV
//! cache, with the plan/run split of batch decode.
//!
//! `plan_ragged`/`plan_paged` run once per step on the host: validation, the pure planner
//! ([`crate::plan::prefill`]: query tiles × KV chunks, split-KV for small batches) and one upload
//! of the work items, request table, merge rows and page list. `run_*` only launches: the
//! prefill kernel, then — when the plan split some tile — the variable-length state merge
//! (`merge_f32_*`). In CUDA-graph mode ([`BatchPrefill::new_graph`]) every buffer is sized
//! from [`PrefillGraphLimits`] at the first plan, both grids are fixed and the kernels read the
//! item and merge-row counts from device memory, so a captured `run` stays valid after any
//! later `plan_*_into`.
//!
//! Device side: `kernels-gpu/src/prefill.rs`, `kernels-gpu/src/merge.rs`.
use ferrinfer_kernels::abi::{KvTensorMaps, MergeParams, PrefillItem, PrefillParams};
use ferrinfer_kernels::config::prefill as cfg;
use ferrinfer_kernels::config::prefill_hopper as hopper_cfg;
use ferrinfer_kernels::math::fastdiv::FastDiv;
use ferrinfer_kernels::math::softmax::LogitTransform;

use crate::checked;
use crate::dtype::{DType, Float16};
use crate::error::{Error, Result};
use crate::heads::HeadConfig;
use crate::kernels::Arch;
use crate::kv::{BatchPages, KvPool, KvPoolConfig};
use crate::ops::io_check::PlannedIo;
use crate::ops::merge;
use crate::options::AttentionOptions;
use crate::plan::prefill::{plan as plan_prefill, PrefillPlan, PrefillProblem};
use crate::plan::units::{item_tiles, schedule as schedule_units};
use crate::runtime::{encode_rows, DeviceBuffer, Gpu, LaunchDims, PinnedStaging, RowsGeometry};

const OP: &str = "batch_prefill";

/// Shortest KV chunk the planner splits to (keys): shorter chunks cost more in prologue and
/// partial-state traffic than the parallelism gains.
pub const MIN_CHUNK: usize = 2 * cfg::TILE as usize;

/// The CTA tile of the prefill kernels: packed query rows per CTA and how the warps share them.
/// Every variant reads each K/V tile once per CTA; they trade L2 traffic (rows per CTA),
/// shared-memory traffic (rows per warp) and registers. The default is chosen by measurement
/// (docs/perf-notes.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PrefillTile {
    /// 64 rows: 4 warps × 16 rows, Q fragments in registers (the `prefill_*` entries).
    #[default]
    Rows64,
    /// 128 rows: 8 warps × 16 rows, Q fragments in registers (`prefill_*_w8`).
    Rows128,
    /// 128 rows: 4 warps × 32 rows (two m-tiles per warp share every K/V fragment), Q re-read
    /// from shared memory (`prefill_*_m2`).
    Rows128Wide,
    /// 128 rows on Hopper's warpgroup tensor cores: 2 consumer warpgroups × 64 rows and a
    /// producer warpgroup copying K/V, `wgmma` with Q, K and V read from shared memory through
    /// descriptors, 128-key tiles (`prefill_*_h`,
    /// `kernels-gpu/src/prefill_hopper.rs`). Built only into the sm_90a image: compute
    /// capability 9.0, head dims 64 and 128.
    Rows128Wgmma,
}

impl PrefillTile {
    /// Every tile, in `index` order.
    pub const ALL: [PrefillTile; 4] = [
        Self::Rows64,
        Self::Rows128,
        Self::Rows128Wide,
        Self::Rows128Wgmma,
    ];

    fn index(self) -> usize {
        match self {
            Self::Rows64 => 0,
            Self::Rows128 => 1,
            Self::Rows128Wide => 2,
            Self::Rows128Wgmma => 3,
        }
    }

    /// The tile chosen when the op has none fixed, from the batch's shape: `qo_tokens` query
    /// tokens over `batch` requests, each query attending `keys_per_query` keys on average
    /// ([`mean_keys_per_query`]). Below 128 packed query rows per request on average
    /// (`qo_tokens × group < 128 × batch`: short appends) [`PrefillTile::Rows64`], which
    /// leaves fewer rows of a tile empty. Otherwise, on a `wgmma` image at head dims 64 and
    /// 128 with at least [`WGMMA_MIN_KEYS`] keys per query, [`PrefillTile::Rows128Wgmma`]
    /// (its per-CTA start-up costs more, so it needs long KV ranges to win); else at head dim
    /// 128 [`PrefillTile::Rows128Wide`], else [`PrefillTile::Rows64`]. Measured on the H200
    /// (docs/perf-notes.md, session 6): bf16 D 128, group 4: wgmma ahead at 1×4096, 1×16384,
    /// 8×2048, 16×1024 (512 keys per query) and the 8×512/4096 append; D 64 (SmolLM2, group
    /// 3): wgmma ahead at 1×4096, the 64-row tile at 8×512 (256 keys per query).
    pub fn auto(
        qo_tokens: usize,
        batch: usize,
        keys_per_query: usize,
        group: usize,
        head_dim: usize,
        arch: Arch,
    ) -> Self {
        // Saturating: the arguments are the caller's and only compared.
        let long = qo_tokens.saturating_mul(group) >= batch.max(1).saturating_mul(128);
        if long && arch.has_wgmma() && head_dim <= 128 && keys_per_query >= WGMMA_MIN_KEYS {
            Self::Rows128Wgmma
        } else if long && head_dim == 128 {
            Self::Rows128Wide
        } else {
            Self::Rows64
        }
    }

    /// The tiles built for head dim `head_dim` in the image of `arch`: the three `mma.sync`
    /// tiles at 64 and 128 (plus [`PrefillTile::Rows128Wgmma`] on sm_90a), the 64-row tile at
    /// 256 (Q in shared memory, 160 KB of it per CTA).
    pub fn available(head_dim: usize, arch: Arch) -> &'static [PrefillTile] {
        match head_dim {
            256 => &[Self::Rows64],
            _ if arch.has_wgmma() => &Self::ALL,
            _ => &[Self::Rows64, Self::Rows128, Self::Rows128Wide],
        }
    }

    /// `Err(Unsupported)` unless `tile` (when fixed) is built for `head_dim` on `arch`.
    pub(crate) fn check(
        op: &'static str,
        tile: Option<Self>,
        head_dim: usize,
        arch: Arch,
    ) -> Result<()> {
        match tile {
            Some(t) if !Self::available(head_dim, arch).contains(&t) => Err(Error::unsupported(
                op,
                "prefill tile",
                format!("{t:?} at head_dim {head_dim} on {}", arch.name()),
            )),
            _ => Ok(()),
        }
    }

    /// Warps per CTA (the `wgmma` tile: two consumer warpgroups and a producer warpgroup).
    pub fn warps(self) -> u32 {
        match self {
            Self::Rows64 | Self::Rows128Wide => 4,
            Self::Rows128 => 8,
            Self::Rows128Wgmma => hopper_cfg::THREADS / 32,
        }
    }

    /// m-tiles (16 rows each) per warp of the `mma.sync` tiles (the `_m2` entries have two).
    fn m_tiles(self) -> u32 {
        match self {
            Self::Rows128Wide => 2,
            _ => 1,
        }
    }

    /// Packed query rows per CTA.
    pub fn rows(self) -> u32 {
        match self {
            Self::Rows64 => 64,
            Self::Rows128 | Self::Rows128Wide | Self::Rows128Wgmma => 128,
        }
    }

    /// Kernel-name suffix.
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            Self::Rows64 => "",
            Self::Rows128 => "_w8",
            Self::Rows128Wide => "_m2",
            Self::Rows128Wgmma => "_h",
        }
    }

    /// Dynamic shared memory of the kernel for head dim `head_dim`; `u32::MAX` (more than
    /// any GPU has) for head dims beyond 256, which no prefill kernel is built for (the
    /// formulas would overflow 32 bits).
    pub fn smem_bytes(self, head_dim: usize) -> u32 {
        if head_dim > 256 {
            return u32::MAX;
        }
        let d = head_dim as u32;
        // The `mma.sync` tiles stage Q in shared memory with two m-tiles per warp and at
        // D = 256 (mirrors `q_in_smem` in kernels-gpu/src/prefill.rs).
        let kv = cfg::smem_bytes(cfg::stages(self.warps(), self.m_tiles(), d), d);
        match self {
            Self::Rows128Wgmma => hopper_cfg::smem_bytes(d),
            Self::Rows128Wide => kv + cfg::q_smem_bytes(self.rows(), d),
            _ if d > 128 => kv + cfg::q_smem_bytes(self.rows(), d),
            _ => kv,
        }
    }

    /// Query tokens per tile for query group `group`; 0 (no token fits, which the planner
    /// refuses) for group 0 or a group larger than the tile's rows.
    pub fn tokens(self, group: usize) -> usize {
        match u32::try_from(group) {
            Ok(g) if g > 0 => cfg::tile_tokens(self.rows(), g) as usize,
            _ => 0,
        }
    }
}

/// Keys per query from which [`PrefillTile::auto`] picks the `wgmma` tile. Measured on the
/// H200 (session 6, after the producer's copy fixes): 512 keys per query (16 × 1024, D 128)
/// wins (ragged 453.1 vs 493.0 µs for the wide tile, paged 486.4 vs 495.0), 256 (SmolLM2's
/// 8 × 512, D 64) loses to the 64-row tile (28.0 vs 24.2 µs). Before those fixes (session 4,
/// H100) 512 lost.
pub const WGMMA_MIN_KEYS: usize = 512;

/// The mean number of keys a query of the batch attends: `kv_len` without a causal mask,
/// `kv_len − qo_len + i + 1` for query `i` with it, at most `window_left + 1` with a window.
pub fn mean_keys_per_query(qo_lens: &[usize], kv_lens: &[usize], opts: &AttentionOptions) -> usize {
    let mut pairs = 0u128;
    let mut queries = 0u128;
    for (&q, &k) in qo_lens.iter().zip(kv_lens) {
        let (q, k) = (q as u128, k as u128);
        pairs += if opts.causal {
            q * (k - q.min(k)) + q * (q + 1) / 2
        } else {
            q * k
        };
        queries += q;
    }
    let mean = (pairs / queries.max(1)) as usize;
    match opts.window_left {
        Some(w) => mean.min(w + 1),
        None => mean,
    }
}

/// Sizes fixed at construction in CUDA-graph mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefillGraphLimits {
    /// Largest batch any plan may have.
    pub max_batch: usize,
    /// Largest total number of query tokens (Σ qo_len).
    pub max_qo_tokens: usize,
    /// Largest page list (Σ pages; paged plans).
    pub max_pages: usize,
}

/// Where a plan's K/V comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KvKind {
    Ragged,
    Paged,
}

/// What a plan was made for (see batch decode's `PlanOwner`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PlanOwner {
    ctx_id: usize,
    num_qo_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    graph: Option<PrefillGraphLimits>,
}

/// Capacities of a plan's buffers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Caps {
    items: usize,
    batch: usize,
    rows: usize,
    pages: usize,
    slots: usize,
    /// Persistent CTAs (the Hopper tile's unit schedule; 0: none) and their units.
    ctas: usize,
    units: usize,
}

impl Caps {
    fn off_items(&self) -> usize {
        4
    }
    fn off_requests(&self) -> usize {
        4 + 8 * self.items
    }
    fn off_rows(&self) -> usize {
        self.off_requests() + 4 * self.batch
    }
    fn off_pages(&self) -> usize {
        self.off_rows() + 3 * self.rows
    }
    fn off_units(&self) -> usize {
        self.off_pages() + self.pages
    }
    fn meta_len(&self) -> usize {
        self.off_units()
            + if self.ctas > 0 {
                self.ctas + 1 + 2 * self.units
            } else {
                0
            }
    }
}

/// A step's plan: the host partition, its device copy and the split-KV workspace.
pub struct BatchPrefillPlan {
    host: PrefillPlan,
    tile: PrefillTile,
    kind: KvKind,
    batch: usize,
    qo_tokens: usize,
    kv_tokens: usize,
    page_size: usize,
    num_pages_seen: usize,
    /// Device u32 (as i32): `[num_items, num_merge_rows, 0, 0 | items 8·ci | requests 4·cb |
    /// merge rows 3·cr | page ids cp | persistent CTAs' unit offsets (ctas + 1) and units
    /// 2·cu]` (the last part only for the Hopper tile, see [`crate::plan::units`]).
    meta: DeviceBuffer<i32>,
    caps: Caps,
    /// Persistent grid of the plan's kernel (0: one CTA per unit, grid `(kv heads, items)`).
    ctas: usize,
    staging: Vec<i32>,
    pinned: Option<PinnedStaging>,
    part_o: DeviceBuffer<f32>,
    part_lse: DeviceBuffer<f32>,
    owner: PlanOwner,
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

    /// Device addresses of the plan's buffers (metadata, partial o, partial lse): constant
    /// across `plan_*_into` calls in graph mode.
    pub fn buffer_addresses(&self) -> [u64; 3] {
        [self.meta.addr(), self.part_o.addr(), self.part_lse.addr()]
    }
}

/// Batch prefill for one head configuration, dtype and option set.
pub struct BatchPrefill {
    gpu: Gpu,
    heads: HeadConfig,
    dtype: DType,
    opts: AttentionOptions,
    /// CTAs resident at once, per tile (`PrefillTile::index`).
    max_ctas: [usize; 4],
    fixed_split: Option<usize>,
    graph: Option<PrefillGraphLimits>,
    /// `None`: chosen per plan ([`PrefillTile::auto`]).
    tile: Option<PrefillTile>,
    /// Persistent CTAs for the Hopper tile: `None` chosen per plan ([`persistent_auto`]).
    persistent: Option<bool>,
    /// Ragged K/V tiles of the Hopper tile loaded with TMA ([`BatchPrefill::set_tma`]).
    tma: bool,
}

/// Mean K/V tiles per work item up to which a Hopper-tile plan runs persistent CTAs (the
/// `_hp` kernels): short items are dominated by each CTA's start-up (Q and first tile loads,
/// epilogue), which a persistent CTA's producer hides under the previous unit; long items gain
/// nothing from it and lose to its slightly slower steps. Measured on the H200
/// (docs/perf-notes.md, session 6; persistent vs the merged kernel): ahead at 16 × 1024 (4–5
/// tiles per item: ragged 420.0 vs 453.1 µs, paged 444.2 vs 486.4) and 8 × 2048 (~8.5: 624.6
/// vs 646.5, 686.1 vs 704.3), behind from 1 × 4096 (~16: 268.7 vs 263.1, 291.0 vs 279.0) on.
pub const PERSISTENT_MAX_MEAN_TILES: usize = 12;

/// Whether a plan of `items` runs persistent CTAs by default ([`PERSISTENT_MAX_MEAN_TILES`]).
pub fn persistent_auto(items: &[PrefillItem]) -> bool {
    let tile = hopper_cfg::TILE as usize;
    let tiles: usize = items.iter().map(|i| item_tiles(i, tile)).sum();
    !items.is_empty() && tiles <= PERSISTENT_MAX_MEAN_TILES * items.len()
}

/// Checks a CSR offset array: starts at 0, never decreases, `len` entries.
fn check_indptr(what: &'static str, indptr: &[i32], len: usize) -> Result<()> {
    if indptr.len() != len {
        return Err(Error::shape(OP, what, len, indptr.len()));
    }
    if indptr.first() != Some(&0) || indptr.windows(2).any(|w| w[1] < w[0]) {
        return Err(Error::invalid(
            OP,
            what,
            "must start at 0 and be non-decreasing",
        ));
    }
    Ok(())
}

impl BatchPrefill {
    /// Validates the configuration: head dims 64, 128 and 256, groups 1–8, f16/bf16, options.
    pub fn new(gpu: &Gpu, heads: HeadConfig, dtype: DType, opts: AttentionOptions) -> Result<Self> {
        Self::build(gpu, heads, dtype, opts, None)
    }

    /// CUDA-graph-safe variant: plans never exceed `limits`; buffers are allocated once, grids
    /// are fixed, `run_*` never allocates or synchronises.
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
        opts.validate(OP)?;
        check_prefill_heads(OP, &heads)?;
        if let Some(w) = opts.window_left {
            if w >= u32::MAX as usize {
                return Err(Error::invalid(OP, "window_left", format!("{w} too large")));
            }
        }
        let mut op = Self {
            gpu: gpu.clone(),
            heads,
            dtype,
            opts,
            max_ctas: [1; 4],
            fixed_split: None,
            graph,
            tile: None,
            persistent: None,
            tma: true,
        };
        gpu.function(&op.merge_kernel(), 0)?;
        for &tile in PrefillTile::available(heads.head_dim, gpu.info().arch) {
            let smem = tile.smem_bytes(heads.head_dim);
            let f = gpu.function(
                &kernel_name(KvKind::Ragged, dtype, heads.head_dim, tile),
                smem,
            )?;
            gpu.function(
                &kernel_name(KvKind::Paged, dtype, heads.head_dim, tile),
                smem,
            )?;
            if tile == PrefillTile::Rows128Wgmma {
                for kind in [KvKind::Ragged, KvKind::Paged] {
                    gpu.function(&persistent_kernel_name(kind, dtype, heads.head_dim), smem)?;
                }
                let ragged = kernel_name(KvKind::Ragged, dtype, heads.head_dim, tile);
                let persistent = persistent_kernel_name(KvKind::Ragged, dtype, heads.head_dim);
                for name in [ragged, persistent] {
                    gpu.function(&(name + TMA_SUFFIX), smem)?;
                }
            }
            let per_sm = f
                .occupancy_max_active_blocks_per_multiprocessor(
                    32 * tile.warps(),
                    smem as usize,
                    None,
                )?
                .max(1) as usize;
            op.max_ctas[tile.index()] = per_sm * gpu.info().sm_count as usize;
        }
        Ok(op)
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
    /// (the default) chooses per plan with [`persistent_auto`]. Other tiles ignore it.
    pub fn set_persistent(&mut self, persistent: Option<bool>) {
        self.persistent = persistent;
    }

    /// Whether ragged runs with the Hopper tile load K/V tiles with TMA (the default: one
    /// producer thread issues box copies from tensor maps encoded per launch) or with
    /// `cp.async` from the whole producer warpgroup. Graph-mode ops always use `cp.async`:
    /// a tensor map's row count is fixed when the launch is captured, and rows past a later
    /// step's keys would be read from whatever the buffer holds (masked, but a non-finite
    /// value there would turn `0 · V` into NaN). Other tiles and paged runs ignore it.
    pub fn set_tma(&mut self, tma: bool) {
        self.tma = tma;
    }

    fn merge_kernel(&self) -> String {
        merge::kernel_name(None, self.dtype, self.heads.head_dim)
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

    fn owner(&self) -> PlanOwner {
        PlanOwner {
            ctx_id: self.gpu.ctx_id(),
            num_qo_heads: self.heads.num_qo_heads,
            num_kv_heads: self.heads.num_kv_heads,
            head_dim: self.heads.head_dim,
            graph: self.graph,
        }
    }

    /// Buffer capacities in graph mode (fixed by the limits).
    /// Buffer capacities in graph mode: enough for any tile (the smallest tile has the most
    /// items, the largest the most partial slots per item).
    fn graph_caps(&self, l: &PrefillGraphLimits) -> Caps {
        let g = self.heads.group();
        let min_tile = PrefillTile::ALL
            .iter()
            .map(|t| t.tokens(g))
            .min()
            .unwrap_or(1);
        let tile = PrefillTile::ALL
            .iter()
            .map(|t| t.tokens(g))
            .max()
            .unwrap_or(1);
        let budget =
            (self.max_ctas.iter().max().copied().unwrap_or(1) / self.heads.num_kv_heads).max(1);
        let items = l.max_qo_tokens.div_ceil(min_tile.max(1)) + l.max_batch + budget;
        let ctas = self.persistent_ctas(PrefillTile::Rows128Wgmma);
        Caps {
            items,
            batch: l.max_batch,
            rows: l.max_qo_tokens,
            pages: l.max_pages,
            slots: 2 * budget * tile,
            ctas,
            units: if ctas > 0 {
                items * self.heads.num_kv_heads
            } else {
                0
            },
        }
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
        let mut plan = BatchPrefillPlan {
            host: PrefillPlan::default(),
            tile: PrefillTile::default(),
            kind,
            batch: 0,
            qo_tokens: 0,
            kv_tokens: 0,
            page_size: 0,
            num_pages_seen: 0,
            meta: self.gpu.alloc::<i32>(4)?,
            caps: Caps::default(),
            ctas: 0,
            staging: Vec::new(),
            pinned: None,
            part_o: self.gpu.alloc::<f32>(1)?,
            part_lse: self.gpu.alloc::<f32>(1)?,
            owner: self.owner(),
        };
        if let Some(l) = self.graph {
            let caps = self.graph_caps(&l);
            plan.meta = self.gpu.alloc::<i32>(caps.meta_len())?;
            plan.part_o = self
                .gpu
                .alloc::<f32>(caps.slots * self.heads.num_qo_heads * self.heads.head_dim)?;
            plan.part_lse = self
                .gpu
                .alloc::<f32>(caps.slots * self.heads.num_qo_heads)?;
            plan.caps = caps;
        }
        Ok(plan)
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
        if qo_indptr.is_empty() {
            return Err(Error::shape(OP, "qo_indptr length", ">= 1", 0));
        }
        check_indptr("qo_indptr", qo_indptr, qo_indptr.len())?;
        check_indptr("kv_indptr", kv_indptr, qo_indptr.len())?;
        let batch = qo_indptr.len() - 1;
        let kv_lens: Vec<usize> = kv_indptr
            .windows(2)
            .map(|w| (w[1] - w[0]) as usize)
            .collect();
        let kv_begin: Vec<u32> = kv_indptr[..batch].iter().map(|&x| x as u32).collect();
        self.plan_inner(
            KvKind::Ragged,
            qo_indptr,
            &kv_lens,
            &kv_begin,
            &[],
            0,
            None,
            plan,
        )?;
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
        pages.validate(OP, pool.page_size, Some(pool.num_pages))?;
        if pool.num_kv_heads != self.heads.num_kv_heads || pool.head_dim != self.heads.head_dim {
            return Err(Error::shape(
                OP,
                "pool heads/head_dim",
                format!("{}/{}", self.heads.num_kv_heads, self.heads.head_dim),
                format!("{}/{}", pool.num_kv_heads, pool.head_dim),
            ));
        }
        check_indptr("qo_indptr", qo_indptr, pages.batch_size() + 1)?;
        let batch = pages.batch_size();
        let kv_lens: Vec<usize> = (0..batch)
            .map(|b| pages.kv_len(b, pool.page_size))
            .collect::<Result<_>>()?;
        let kv_begin: Vec<u32> = pages.kv_indptr[..batch].iter().map(|&x| x as u32).collect();
        self.plan_inner(
            KvKind::Paged,
            qo_indptr,
            &kv_lens,
            &kv_begin,
            &pages.kv_indices,
            pool.page_size,
            Some(pool.num_pages),
            plan,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn plan_inner(
        &self,
        kind: KvKind,
        qo_indptr: &[i32],
        kv_lens: &[usize],
        kv_begin: &[u32],
        kv_indices: &[i32],
        page_size: usize,
        num_pages: Option<usize>,
        plan: &mut BatchPrefillPlan,
    ) -> Result<()> {
        if plan.owner != self.owner() {
            return Err(Error::invalid(
                OP,
                "plan",
                "the plan belongs to another op or head configuration",
            ));
        }
        if plan.kind != kind {
            return Err(Error::invalid(
                OP,
                "plan",
                "a ragged plan cannot be re-planned as paged, or the reverse",
            ));
        }
        let batch = kv_lens.len();
        let qo_lens: Vec<usize> = qo_indptr
            .windows(2)
            .map(|w| (w[1] - w[0]) as usize)
            .collect();
        let qo_tokens = qo_indptr[batch] as usize;
        if let Some(l) = self.graph {
            if batch > l.max_batch || qo_tokens > l.max_qo_tokens || kv_indices.len() > l.max_pages
            {
                return Err(Error::invalid(
                    OP,
                    "plan",
                    format!(
                        "batch {batch} / {qo_tokens} query tokens / {} pages exceed the graph-mode \
                         limits {} / {} / {}",
                        kv_indices.len(),
                        l.max_batch,
                        l.max_qo_tokens,
                        l.max_pages
                    ),
                ));
            }
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
        let tile = self.tile.unwrap_or_else(|| {
            PrefillTile::auto(
                qo_tokens,
                batch,
                mean_keys_per_query(&qo_lens, kv_lens, &self.opts),
                self.heads.group(),
                self.heads.head_dim,
                self.gpu.info().arch,
            )
        });
        let graph_caps = self.graph.map(|l| self.graph_caps(&l));
        let host = plan_prefill(&PrefillProblem {
            qo_lens: &qo_lens,
            kv_lens,
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
            pages: kv_indices.len(),
            slots: host.num_slots,
            ctas,
            units: units_total,
        });
        if host
            .num_slots
            .checked_mul(per_token)
            .is_none_or(|n| n > u32::MAX as usize)
        {
            return Err(Error::Overflow {
                op: OP,
                what: "split-KV partial outputs",
            });
        }
        // Device metadata, staged in one host vector and uploaded once.
        let s = &mut plan.staging;
        s.clear();
        s.extend_from_slice(&[host.items.len() as i32, host.merge_rows.len() as i32, 0, 0]);
        let pad = |s: &mut Vec<i32>, to: usize| s.resize(to, 0);
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
            s.extend([request, t0, kv_begin, kv_end, part, chunk, nchunks, 0].map(|x| x as i32));
        }
        pad(s, caps.off_requests());
        for b in 0..batch {
            s.extend([
                qo_indptr[b],
                qo_lens[b] as i32,
                kv_begin[b] as i32,
                kv_lens[b] as i32,
            ]);
        }
        pad(s, caps.off_rows());
        for r in &host.merge_rows {
            s.extend(r.map(|x| x as i32));
        }
        pad(s, caps.off_pages());
        s.extend_from_slice(kv_indices);
        if let Some(sc) = &schedule {
            pad(s, caps.off_units());
            s.extend(sc.offsets.iter().map(|&x| x as i32));
            s.extend(sc.units.iter().flat_map(|u| u.map(|x| x as i32)));
        }
        // New buffers stay local until every fallible step succeeded (a failed re-plan leaves
        // the previous plan usable).
        let mut new_meta = None;
        let mut new_parts = None;
        if self.graph.is_none() {
            if plan.meta.len() < s.len() {
                new_meta = Some(self.gpu.alloc::<i32>(s.len())?);
            }
            if plan.part_lse.len() < host.num_slots * self.heads.num_qo_heads {
                new_parts = Some((
                    self.gpu.alloc::<f32>(host.num_slots * per_token)?,
                    self.gpu
                        .alloc::<f32>(host.num_slots * self.heads.num_qo_heads)?,
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
        plan.caps = caps;
        plan.host = host;
        plan.tile = tile;
        plan.ctas = ctas;
        plan.batch = batch;
        plan.qo_tokens = qo_tokens;
        plan.page_size = page_size;
        plan.num_pages_seen = num_pages.unwrap_or(0);
        Ok(())
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
        if plan.kind != KvKind::Ragged {
            return Err(Error::invalid(OP, "plan", "a paged plan run on ragged K/V"));
        }
        let h = self.heads;
        self.gpu.check_buffer(OP, k)?;
        self.gpu.check_buffer(OP, v)?;
        let need = plan.kv_tokens * h.num_kv_heads * h.head_dim;
        if k.len() < need || v.len() < need {
            return Err(Error::shape(
                OP,
                "k/v elements (Σ kv_len × heads × head_dim)",
                format!(">= {need}"),
                k.len().min(v.len()),
            ));
        }
        let d = h.head_dim as u32;
        let kv = KvAddr {
            k: k.addr(),
            v: v.addr(),
            stride_page: 0,
            stride_n: h.num_kv_heads as u32 * d,
            stride_h: d,
            page_size: 1,
        };
        self.launch(plan, KvKind::Ragged, kv, q, out, lse)
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
        if plan.kind != KvKind::Paged {
            return Err(Error::invalid(
                OP,
                "plan",
                "a ragged plan run on a paged pool",
            ));
        }
        let c = pool.config();
        if c.page_size != plan.page_size || c.num_pages != plan.num_pages_seen {
            return Err(Error::invalid(
                OP,
                "plan",
                "the plan was made for a pool of another geometry",
            ));
        }
        pool.check_heads(OP, &self.heads)?;
        let (k, v) = pool
            .device_buffers()
            .ok_or_else(|| Error::invalid(OP, "pool", "a GPU pool is required"))?;
        self.gpu.check_buffer(OP, k)?;
        let st = c.strides();
        let kv = KvAddr {
            k: k.addr(),
            v: v.addr(),
            stride_page: st.stride_page as u64,
            stride_n: st.stride_n,
            stride_h: st.stride_h,
            page_size: c.page_size as u32,
        };
        self.launch(plan, KvKind::Paged, kv, q, out, lse)
    }

    fn launch<T: Float16>(
        &self,
        plan: &BatchPrefillPlan,
        kind: KvKind,
        kv: KvAddr,
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
            what: "q/out elements (planned Σ qo_len × heads × head_dim)",
            elems: plan.qo_tokens * h.num_qo_heads * h.head_dim,
            lse_elems: plan.qo_tokens * h.num_qo_heads,
            exact: self.graph.is_none(),
            gpu: &self.gpu,
            dtype: self.dtype,
        }
        .check(q, out, lse.as_deref())?;
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
        let base = plan.meta.addr();
        let at = |o: usize| base + (o * 4) as u64;
        let d = h.head_dim as u32;
        let g = h.group() as u32;
        let hq = h.num_qo_heads as u32;
        let lse_addr = lse.as_deref().map_or(0, |l| l.addr());
        let p = PrefillParams {
            q: q.addr(),
            o: out.addr(),
            lse: lse_addr,
            k: kv.k,
            v: kv.v,
            k_stride_page: kv.stride_page,
            v_stride_page: kv.stride_page,
            items: at(plan.caps.off_items()),
            num_items: at(0),
            requests: at(plan.caps.off_requests()),
            kv_indices: at(plan.caps.off_pages()),
            part_o: plan.part_o.addr(),
            part_lse: plan.part_lse.addr(),
            units: if plan.ctas > 0 {
                at(plan.caps.off_units())
            } else {
                0
            },
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
            logit: LogitTransform::new(self.opts.scale(&h), self.opts.soft_cap),
        };
        let dims = LaunchDims {
            grid,
            block: (32 * plan.tile.warps(), 1, 1),
            smem_bytes: plan.tile.smem_bytes(h.head_dim),
        };
        // Persistent plans run the unit-list kernel (`prefill_hopper_persistent`), the others
        // the one-CTA-per-item kernels; ragged Hopper runs their TMA form where it applies.
        let kernel = if plan.ctas > 0 {
            persistent_kernel_name(kind, self.dtype, h.head_dim)
        } else {
            kernel_name(kind, self.dtype, h.head_dim, plan.tile)
        };
        let hopper = plan.tile == PrefillTile::Rows128Wgmma;
        let maps = if hopper && kind == KvKind::Ragged && self.tma && self.graph.is_none() {
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
        unsafe { launch_prefill(&self.gpu, kernel, plan.tile, maps, dims, p)? };
        if merge_rows > 0 {
            let mp = MergeParams {
                v: plan.part_o.addr(),
                s: plan.part_lse.addr(),
                o: out.addr(),
                lse: lse_addr,
                rows: at(plan.caps.off_rows()),
                num_rows_dev: at(1),
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
            unsafe { merge::launch(&self.gpu, &self.merge_kernel(), mp)? };
        }
        Ok(())
    }
}

/// The prefill kernel symbol for a K/V kind, dtype, head dim and tile.
fn kernel_name(kind: KvKind, dtype: DType, head_dim: usize, tile: PrefillTile) -> String {
    let k = match kind {
        KvKind::Ragged => "ragged",
        KvKind::Paged => "paged",
    };
    format!("prefill_{k}_{}_d{head_dim}{}", dtype.name(), tile.suffix())
}

/// The persistent Hopper prefill kernel symbol (the `wgmma` tile's unit-list form).
fn persistent_kernel_name(kind: KvKind, dtype: DType, head_dim: usize) -> String {
    kernel_name(kind, dtype, head_dim, PrefillTile::Rows128Wgmma) + "p"
}

/// The single-request (ragged) kernel symbol.
pub(crate) fn ragged_kernel_name(dtype: DType, head_dim: usize, tile: PrefillTile) -> String {
    kernel_name(KvKind::Ragged, dtype, head_dim, tile)
}

/// Kernel-name suffix of the Hopper tile's TMA forms (ragged K/V): `_ht`, `_hpt`.
pub(crate) const TMA_SUFFIX: &str = "t";

/// Launches prefill kernel `kernel` (of `tile`): the Hopper tile's entries take the tensor-map
/// block as their second parameter, and with `maps` set their TMA form runs (suffix
/// [`TMA_SUFFIX`]; the `cp.async` forms get zeros); the other tiles take `p` only.
///
/// # Safety
/// As [`Gpu::launch`] for `kernel`'s contract; `maps` describe the launch's own K/V rows.
pub(crate) unsafe fn launch_prefill(
    gpu: &Gpu,
    mut kernel: String,
    tile: PrefillTile,
    maps: Option<KvTensorMaps>,
    dims: LaunchDims,
    p: PrefillParams,
) -> Result<()> {
    if tile != PrefillTile::Rows128Wgmma {
        // SAFETY: forwarded contract.
        return unsafe { gpu.launch(&kernel, dims, p) };
    }
    if maps.is_some() {
        kernel.push_str(TMA_SUFFIX);
    }
    // SAFETY: forwarded contract; the Hopper entries take `(PrefillParams, KvTensorMaps)`.
    unsafe { gpu.launch2(&kernel, dims, p, maps.unwrap_or_default()) }
}

/// One of ragged K or V: base address and element strides of rows and heads.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RaggedRows {
    pub addr: u64,
    pub stride_n: u64,
    pub stride_h: u64,
}

/// The Hopper tile's tensor maps of ragged K and V (`rows` rows each), enabled; `None` when
/// TMA cannot describe either (the launch then runs the `cp.async` form).
pub(crate) fn ragged_tensor_maps(
    dtype: DType,
    heads: &HeadConfig,
    rows: usize,
    k: RaggedRows,
    v: RaggedRows,
) -> Result<Option<KvTensorMaps>> {
    let geometry = |r: RaggedRows| RowsGeometry {
        addr: r.addr,
        rows: rows as u64,
        heads: heads.num_kv_heads as u32,
        head_dim: heads.head_dim as u32,
        stride_n: r.stride_n,
        stride_h: r.stride_h,
    };
    let (Some(k), Some(v)) = (
        encode_rows(dtype, &geometry(k))?,
        encode_rows(dtype, &geometry(v))?,
    ) else {
        return Ok(None);
    };
    Ok(Some(KvTensorMaps {
        k,
        v,
        enabled: 1,
        reserved: [0; 3],
    }))
}

/// K/V addressing of one launch.
#[derive(Clone, Copy, Debug)]
struct KvAddr {
    k: u64,
    v: u64,
    stride_page: u64,
    stride_n: u32,
    stride_h: u32,
    page_size: u32,
}

/// The head geometries the prefill kernels support: D 64/128/256, groups 1–8, ≤ 65535 KV heads.
pub(crate) fn check_prefill_heads(op: &'static str, heads: &HeadConfig) -> Result<()> {
    if !matches!(heads.head_dim, 64 | 128 | 256) {
        return Err(Error::unsupported(
            op,
            "head_dim",
            format!("{} (supported: 64, 128, 256)", heads.head_dim),
        ));
    }
    if !(1..=8).contains(&heads.group()) {
        return Err(Error::unsupported(
            op,
            "group size",
            format!("{} (supported: 1..=8)", heads.group()),
        ));
    }
    if heads.num_kv_heads > 65_535 || u32::try_from(heads.num_qo_heads * heads.head_dim).is_err() {
        return Err(Error::Overflow {
            op,
            what: "heads (grid.y holds at most 65535 KV heads)",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_per_query_counts_the_visible_pairs() {
        let causal = AttentionOptions {
            causal: true,
            ..Default::default()
        };
        let full = AttentionOptions::default();
        // One square causal request: (1 + … + n) / n = (n + 1) / 2.
        assert_eq!(mean_keys_per_query(&[4096], &[4096], &causal), 2048);
        // An append of 512 over 4096: 3584 earlier keys plus (1 + … + 512) / 512.
        assert_eq!(mean_keys_per_query(&[512], &[4096], &causal), 3584 + 256);
        assert_eq!(mean_keys_per_query(&[512, 512], &[4096, 4096], &full), 4096);
        let win = AttentionOptions {
            window_left: Some(100),
            ..causal
        };
        assert_eq!(mean_keys_per_query(&[4096], &[4096], &win), 101);
        assert_eq!(mean_keys_per_query(&[], &[], &causal), 0);
    }

    /// Causal items of `batch` requests of `len` tokens in 32-token query tiles (the Hopper
    /// tile at group 4), one chunk each: item t ends at its last query's position.
    fn causal_items(batch: usize, len: u32) -> Vec<PrefillItem> {
        (0..batch as u32)
            .flat_map(|r| {
                (0..len / 32).map(move |t| PrefillItem {
                    request: r,
                    t0: 32 * t,
                    kv_begin: 0,
                    kv_end: 32 * t + 32,
                    part: u32::MAX,
                    chunk: 0,
                    nchunks: 1,
                    pad: 0,
                })
            })
            .collect()
    }

    #[test]
    fn persistence_follows_the_measured_crossover() {
        // 16 × 1024 (~4.6 tiles per item) and 8 × 2048 (~8.6) persistent, 1 × 4096 (~16.6)
        // and longer not.
        assert!(persistent_auto(&causal_items(16, 1024)));
        assert!(persistent_auto(&causal_items(8, 2048)));
        assert!(!persistent_auto(&causal_items(1, 4096)));
        assert!(!persistent_auto(&causal_items(1, 16384)));
        assert!(!persistent_auto(&[]));
    }

    #[test]
    fn auto_tile_follows_the_measured_crossovers() {
        let (h, a) = (Arch::Sm90a, Arch::Sm80);
        // bf16 D 128 group 4: 16×1024 (512 keys/query), 8×2048 (1024) and the 8×512/4096
        // append go to wgmma, fewer keys per query to the wide tile; short appends to 64 rows
        // everywhere.
        assert_eq!(
            PrefillTile::auto(16 * 1024, 16, 512, 4, 128, h),
            PrefillTile::Rows128Wgmma
        );
        assert_eq!(
            PrefillTile::auto(16 * 512, 16, 256, 4, 128, h),
            PrefillTile::Rows128Wide
        );
        assert_eq!(
            PrefillTile::auto(8 * 2048, 8, 1024, 4, 128, h),
            PrefillTile::Rows128Wgmma
        );
        assert_eq!(
            PrefillTile::auto(8 * 512, 8, 3840, 4, 128, h),
            PrefillTile::Rows128Wgmma
        );
        assert_eq!(
            PrefillTile::auto(64 * 16, 64, 2040, 4, 128, h),
            PrefillTile::Rows64
        );
        assert_eq!(
            PrefillTile::auto(8 * 2048, 8, 1024, 4, 128, a),
            PrefillTile::Rows128Wide
        );
        // D 64 group 3 (SmolLM2): wgmma for long prompts, 64 rows for 8×512; D 256: 64 rows.
        assert_eq!(
            PrefillTile::auto(4096, 1, 2048, 3, 64, h),
            PrefillTile::Rows128Wgmma
        );
        assert_eq!(
            PrefillTile::auto(8 * 512, 8, 256, 3, 64, h),
            PrefillTile::Rows64
        );
        assert_eq!(
            PrefillTile::auto(4096, 1, 2048, 4, 256, h),
            PrefillTile::Rows64
        );
        for head_dim in [64, 128, 256] {
            for arch in Arch::ALL {
                let t = PrefillTile::auto(4096, 1, 2048, 4, head_dim, arch);
                assert!(PrefillTile::available(head_dim, arch).contains(&t));
            }
        }
    }
}
