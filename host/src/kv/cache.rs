//! `PagedKvCache`: the serving engine's KV store. One set of page tables on the host
//! ([`PageTable`]) shared by every layer's page pool ([`KvPool`], on the GPU or in host memory):
//! a sequence's token `t` lives in the same page slot in every layer.
//!
//! The serving loop, per step:
//! 1. [`PagedKvCache::begin_append`] reserves the new tokens of every sequence once (all-or-
//!    nothing), runs copy-on-write page copies in every layer, and uploads the append metadata
//!    once;
//! 2. per layer, [`PagedKvCache::append_layer`] writes that layer's new K/V rows (one launch);
//! 3. [`PagedKvCache::batch_pages`] feeds the attention planner (`ops::BatchDecode::plan`) once;
//! 4. per layer, attention reads [`PagedKvCache::pool`]`(layer)` through that plan.
use super::page_table::{AppendPlan, PageTable, SeqId};
use super::BatchPages;
use super::{
    AppendMeta, AppendTarget, DeviceAppendMeta, KvPool, KvPoolConfig, PoolSize, RowStrides, Rows,
    RowsMut,
};
use crate::checked;
use crate::dtype::Float16;
use crate::error::{Error, Result};
use crate::fp8::KvScales;
use crate::runtime::Gpu;

const OP: &str = "kv_cache";

/// Paged KV cache: page tables + one page pool per layer.
pub struct PagedKvCache<T> {
    table: PageTable,
    pools: Vec<KvPool<T>>,
    /// Device copy of the current step's append metadata (GPU caches), rewritten by every
    /// `begin_append`.
    meta_buf: Option<crate::runtime::DeviceBuffer<i32>>,
}

/// One step's reservation, made by [`PagedKvCache::begin_append`]: where each new row goes,
/// already uploaded for GPU caches. Valid for the cache that made it until the next change of
/// its page tables: [`PagedKvCache::append_layer`] refuses a step of another cache, or a stale
/// one, with [`Error::StaleHandle`] (its rows would land in pages the step does not own).
pub struct AppendStep {
    /// Bound to its table by the plan's owner id and generation.
    plan: AppendPlan,
    device: Option<DeviceAppendMeta>,
    rows: usize,
}

impl AppendStep {
    /// Rows each layer must supply (Σ new tokens).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The host metadata (batch indices, positions, page tables after the reservation).
    pub fn plan(&self) -> &AppendPlan {
        &self.plan
    }

    /// Device addresses of the uploaded batch indices, positions, `kv_indptr` and
    /// `kv_indices` (GPU caches; `None` for host caches and empty steps): what each layer's
    /// append launch passes to the kernel. A CUDA graph that captured those launches replays
    /// them correctly only for a step whose addresses are the same (see
    /// [`PagedKvCache::reserve_append_meta`]).
    pub fn device_addresses(&self) -> Option<[u64; 4]> {
        self.device.as_ref().map(|d| d.addrs)
    }
}

fn split_size(size: PoolSize, layers: usize) -> PoolSize {
    match size {
        PoolSize::Pages(n) => PoolSize::Pages(n),
        PoolSize::Bytes(b) => PoolSize::Bytes(b / layers.max(1)),
        PoolSize::FreeMemoryFraction(f) => PoolSize::FreeMemoryFraction(f / layers.max(1) as f64),
    }
}

impl<T: Float16> PagedKvCache<T> {
    /// A single-layer cache on `gpu`, sized by `size` (page count, bytes, or a fraction of free
    /// GPU memory). `cfg.num_pages` is ignored.
    pub fn new_gpu(gpu: &Gpu, cfg: KvPoolConfig, size: PoolSize) -> Result<Self> {
        Self::new_gpu_layers(gpu, cfg, size, 1)
    }

    /// A cache of `layers` pools on `gpu` sharing one set of page tables. `size` is the whole
    /// cache's budget (a byte or memory-fraction budget is split evenly across layers; a page
    /// count is the page count of every layer).
    pub fn new_gpu_layers(
        gpu: &Gpu,
        cfg: KvPoolConfig,
        size: PoolSize,
        layers: usize,
    ) -> Result<Self> {
        if layers == 0 {
            return Err(Error::invalid(OP, "layers", "must be positive"));
        }
        let mut pools = checked::with_capacity(OP, "layers", layers)?;
        let first = KvPool::new_gpu(gpu, cfg, split_size(size, layers))?;
        let c = *first.config();
        pools.push(first);
        for _ in 1..layers {
            pools.push(KvPool::new_gpu(gpu, c, PoolSize::Pages(c.num_pages))?);
        }
        Ok(Self {
            table: PageTable::new(c.num_pages, c.page_size)?,
            pools,
            meta_buf: None,
        })
    }

    /// A single-layer cache in host memory (CPU backend).
    pub fn new_cpu(cfg: KvPoolConfig, size: PoolSize) -> Result<Self> {
        Self::new_cpu_layers(cfg, size, 1)
    }

    /// A cache of `layers` host-memory pools sharing one set of page tables.
    pub fn new_cpu_layers(cfg: KvPoolConfig, size: PoolSize, layers: usize) -> Result<Self> {
        if layers == 0 {
            return Err(Error::invalid(OP, "layers", "must be positive"));
        }
        // Fallible: a layer count no allocator can hold is an error, not an abort.
        let mut pools = checked::with_capacity(OP, "layers", layers)?;
        let first = KvPool::new_cpu(cfg, split_size(size, layers))?;
        let c = *first.config();
        pools.push(first);
        for _ in 1..layers {
            pools.push(KvPool::new_cpu(c, PoolSize::Pages(c.num_pages))?);
        }
        Ok(Self {
            table: PageTable::new(c.num_pages, c.page_size)?,
            pools,
            meta_buf: None,
        })
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.pools.len()
    }

    /// Pool geometry (the same for every layer).
    pub fn config(&self) -> &KvPoolConfig {
        self.pools[0].config()
    }

    /// Capacity in tokens.
    pub fn capacity_tokens(&self) -> usize {
        self.config().capacity_tokens()
    }

    /// The page tables.
    pub fn table(&self) -> &PageTable {
        &self.table
    }

    /// The page pool of `layer`.
    pub fn pool(&self, layer: usize) -> Result<&KvPool<T>> {
        self.pools.get(layer).ok_or_else(|| {
            Error::invalid(
                OP,
                "layer",
                format!("{layer} not in [0, {})", self.pools.len()),
            )
        })
    }

    /// The page pool of `layer`, mutably: for raw appends with caller-made metadata (validated
    /// like any other input). The page tables are not consulted by raw appends.
    pub fn pool_mut(&mut self, layer: usize) -> Result<&mut KvPool<T>> {
        let n = self.pools.len();
        self.pools
            .get_mut(layer)
            .ok_or_else(|| Error::invalid(OP, "layer", format!("{layer} not in [0, {n})")))
    }

    /// Starts an empty sequence.
    pub fn add_sequence(&mut self) -> SeqId {
        self.table.add_sequence()
    }

    /// Frees a sequence's pages (shared pages stay with their other owners).
    pub fn free(&mut self, id: SeqId) -> Result<()> {
        self.table.free(id)
    }

    /// Forks a sequence: the child shares the parent's pages (copy-on-write of the partial page).
    pub fn fork(&mut self, parent: SeqId) -> Result<SeqId> {
        self.table.fork(parent)
    }

    /// Shortens a sequence.
    pub fn truncate(&mut self, id: SeqId, len: usize) -> Result<()> {
        self.table.truncate(id, len)
    }

    /// Length of a sequence in tokens.
    pub fn len(&self, id: SeqId) -> Result<usize> {
        self.table.len(id)
    }

    /// Whether the cache holds no sequence.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// CSR page tables of a batch (FlashInfer's `kv_indptr`, `kv_indices`, `kv_last_page_len`).
    pub fn batch_pages(&self, ids: &[SeqId]) -> Result<BatchPages> {
        self.table.batch_pages(ids)
    }

    /// Reserves `n_b` new tokens at the end of each sequence `id_b` (all-or-nothing: on error —
    /// unknown sequence, out of pages — the tables are unchanged), performs the copy-on-write
    /// page copies in every layer, and (GPU) uploads the append metadata once. Then call
    /// [`PagedKvCache::append_layer`] once per layer with that layer's new K/V rows.
    pub fn begin_append(&mut self, reqs: &[(SeqId, usize)]) -> Result<AppendStep> {
        let total = checked::sum(OP, "append rows", reqs.iter().map(|r| r.1))?;
        let plan = self.table.plan_append(reqs)?;
        match self.copy_and_upload(&plan, total) {
            Ok(device) => Ok(AppendStep {
                plan,
                device,
                rows: total,
            }),
            Err(e) => {
                // A failed call changes nothing in the tables: the reservation is the table's
                // latest change, so its rollback cannot be refused.
                self.table.rollback(&plan)?;
                // But the rollback would make the previous step current again, and a failed
                // upload may have rewritten or reallocated the metadata buffer that step's
                // device addresses point into: earlier steps stay refused.
                self.table.invalidate_plans();
                Err(e)
            }
        }
    }

    /// The device half of [`PagedKvCache::begin_append`]: copy-on-write copies in every layer,
    /// then (GPU) the metadata upload.
    fn copy_and_upload(
        &mut self,
        plan: &AppendPlan,
        total: usize,
    ) -> Result<Option<DeviceAppendMeta>> {
        for pool in &mut self.pools {
            pool.copy_pages(&plan.copies)?;
        }
        Ok(if self.pools[0].gpu().is_some() && total > 0 {
            let meta = AppendMeta {
                batch_indices: &plan.batch_indices,
                positions: &plan.positions,
                pages: &plan.pages,
            };
            // Into the cache's own buffer, reused every step: no per-step allocation (a freed
            // device buffer can synchronise the device). Valid until the next begin_append,
            // which changes the generation that append_layer checks.
            Some(self.pools[0].upload_append_meta_into(&meta, &mut self.meta_buf)?)
        } else {
            None
        })
    }

    /// Sizes the device buffer of the per-step append metadata (GPU caches; a no-op on host
    /// caches) for steps of up to `rows` new rows over up to `seqs` sequences holding up to
    /// `pages` pages, so that such steps never reallocate it. The metadata is packed as batch
    /// indices, positions, `kv_indptr`, `kv_indices`: in a buffer that is not reallocated the
    /// first three parts, and where the last begins, depend only on the step's row and
    /// sequence counts, so every decode step of one batch size uploads to the same addresses
    /// ([`AppendStep::device_addresses`]) — what a captured CUDA graph of a step relies on.
    pub fn reserve_append_meta(&mut self, rows: usize, seqs: usize, pages: usize) -> Result<()> {
        let Some(gpu) = self.pools[0].gpu() else {
            return Ok(());
        };
        let need = checked::sum(OP, "append metadata", [rows, rows, seqs, 1, pages])?;
        if self.meta_buf.as_ref().is_none_or(|b| b.len() < need) {
            // The table's generation moves, so a step made before (pointing into the old
            // buffer) is refused from now on.
            let buf = gpu.alloc::<i32>(need)?;
            self.table.invalidate_plans();
            self.meta_buf = Some(buf);
        }
        Ok(())
    }

    /// Writes one layer's new K/V rows for a step made by [`PagedKvCache::begin_append`]: rows
    /// `[Σ_{c<b} n_c, Σ_{c≤b} n_c)` of `k`/`v` (`[rows, heads, head_dim]`, strided) go to the
    /// end of sequence b. One kernel launch on GPU caches.
    pub fn append_layer(
        &mut self,
        layer: usize,
        step: &AppendStep,
        k: Rows<'_, T>,
        ks: RowStrides,
        v: Rows<'_, T>,
        vs: RowStrides,
    ) -> Result<()> {
        self.check_current(step)?;
        let pool = self.pool_mut(layer)?;
        pool.check_rows("k rows", &k, ks, step.rows)?;
        pool.check_rows("v rows", &v, vs, step.rows)?;
        match &step.device {
            Some(meta) => {
                // A GPU cache: `check_rows` above refused host rows.
                let (Some(kd), Some(vd)) = (k.device_span(), v.device_span()) else {
                    return Err(Error::invalid(
                        OP,
                        "rows",
                        "rows must live where the pool lives",
                    ));
                };
                pool.append_uploaded_scaled(meta, kd, ks, vd, vs, KvScales::ONE)
            }
            None => {
                let meta = AppendMeta {
                    batch_indices: &step.plan.batch_indices,
                    positions: &step.plan.positions,
                    pages: &step.plan.pages,
                };
                pool.append(&meta, k, ks, v, vs)
            }
        }
    }

    /// `Err(StaleHandle)` unless `step` is this cache's current step: bound to its tables
    /// (owner id) and their state (generation), since a step of another cache with the same
    /// geometry, or one from before a fork/truncate/free/next step, would write rows into pages
    /// it does not own.
    fn check_current(&self, step: &AppendStep) -> Result<()> {
        if !step.plan.is_current_for(&self.table) {
            return Err(Error::StaleHandle {
                op: OP,
                what: "append step",
                detail: "made by another cache, or the page tables changed since begin_append"
                    .into(),
            });
        }
        Ok(())
    }

    /// Layer `layer`'s destination for `step`'s rows, for a kernel that writes them itself
    /// instead of [`PagedKvCache::append_layer`] (RoPE fused into the append:
    /// [`crate::ops::ModelKernels::qkv_rope_append`]). The same checks as `append_layer`;
    /// GPU caches only, and a step with rows (an empty step has nothing to write: skip it).
    pub fn append_target(
        &mut self,
        layer: usize,
        step: &AppendStep,
    ) -> Result<AppendTarget<'_, T>> {
        self.check_current(step)?;
        let Some(meta) = &step.device else {
            return Err(Error::invalid(
                OP,
                "append target",
                "needs a GPU cache and a step with rows",
            ));
        };
        self.pool_mut(layer)?.append_target(meta)
    }

    /// Single-layer convenience: [`PagedKvCache::begin_append`] + [`PagedKvCache::append_layer`]
    /// for layer 0. The rows are checked before anything is reserved, so a short buffer leaves
    /// the cache unchanged. A cache of several layers is refused (it would reserve the tokens
    /// for every layer but write only layer 0's K/V): use `begin_append` and one
    /// `append_layer` per layer.
    pub fn append(
        &mut self,
        reqs: &[(SeqId, usize)],
        k: Rows<'_, T>,
        ks: RowStrides,
        v: Rows<'_, T>,
        vs: RowStrides,
    ) -> Result<()> {
        if self.pools.len() != 1 {
            return Err(Error::invalid(
                OP,
                "append",
                format!(
                    "append writes one layer, the cache has {}: use begin_append + append_layer",
                    self.pools.len()
                ),
            ));
        }
        let total = checked::sum(OP, "append rows", reqs.iter().map(|r| r.1))?;
        self.pools[0].check_rows("k rows", &k, ks, total)?;
        self.pools[0].check_rows("v rows", &v, vs, total)?;
        let step = self.begin_append(reqs)?;
        self.append_layer(0, &step, k, ks, v, vs)
    }

    /// Copies a sequence's K and V of `layer` out to contiguous rows `[len, heads, head_dim]`.
    pub fn gather_into(
        &mut self,
        layer: usize,
        id: SeqId,
        k: RowsMut<'_, T>,
        ks: RowStrides,
        v: RowsMut<'_, T>,
        vs: RowStrides,
    ) -> Result<()> {
        let pages = self.table.batch_pages(&[id])?;
        self.pool_mut(layer)?.gather(&pages, 0, k, ks, v, vs)
    }

    /// A sequence's K and V of `layer` as host vectors `[len, heads, head_dim]` (downloads for
    /// GPU pools).
    pub fn gather(&mut self, layer: usize, id: SeqId) -> Result<(Vec<T>, Vec<T>)> {
        let c = *self.pool(layer)?.config();
        let len = self.table.len(id)?;
        let n = checked::product(OP, "gathered rows", &[len, c.num_kv_heads, c.head_dim])?;
        let s = RowStrides::contiguous(c.num_kv_heads, c.head_dim);
        match self.pool(layer)?.gpu().cloned() {
            Some(gpu) => {
                let mut kd = gpu.alloc::<T>(n.max(1))?;
                let mut vd = gpu.alloc::<T>(n.max(1))?;
                self.gather_into(
                    layer,
                    id,
                    RowsMut::Device(&mut kd),
                    s,
                    RowsMut::Device(&mut vd),
                    s,
                )?;
                let mut k = gpu.download(&kd)?;
                let mut v = gpu.download(&vd)?;
                k.truncate(n);
                v.truncate(n);
                Ok((k, v))
            }
            None => {
                let mut k = checked::filled(OP, "gathered K", n, T::default())?;
                let mut v = checked::filled(OP, "gathered V", n, T::default())?;
                self.gather_into(
                    layer,
                    id,
                    RowsMut::Host(&mut k),
                    s,
                    RowsMut::Host(&mut v),
                    s,
                )?;
                Ok((k, v))
            }
        }
    }
}
