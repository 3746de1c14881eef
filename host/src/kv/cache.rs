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
use super::page_table::{AppendPlan, BatchPages, PageTable, SeqId};
use super::pool::{
    AppendMeta, DeviceAppendMeta, KvPool, KvPoolConfig, PoolSize, RowStrides, Rows, RowsMut,
};
use crate::dtype::Float16;
use crate::error::{Error, Result};
use crate::runtime::Gpu;

const OP: &str = "kv_cache";

/// Paged KV cache: page tables + one page pool per layer.
pub struct PagedKvCache<T> {
    table: PageTable,
    pools: Vec<KvPool<T>>,
    /// Bumped by every change of the tables, so a stale [`AppendStep`] is refused.
    generation: u64,
    /// Device copy of the current step's append metadata (GPU caches), rewritten by every
    /// `begin_append`.
    meta_buf: Option<crate::runtime::DeviceBuffer<i32>>,
}

/// One step's reservation, made by [`PagedKvCache::begin_append`]: where each new row goes,
/// already uploaded for GPU caches. Valid until the next change of the page tables.
pub struct AppendStep {
    plan: AppendPlan,
    device: Option<DeviceAppendMeta>,
    rows: usize,
    generation: u64,
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
        let first = KvPool::new_gpu(gpu, cfg, split_size(size, layers))?;
        let c = *first.config();
        let mut pools = vec![first];
        for _ in 1..layers {
            pools.push(KvPool::new_gpu(gpu, c, PoolSize::Pages(c.num_pages))?);
        }
        Ok(Self {
            table: PageTable::new(c.num_pages, c.page_size)?,
            pools,
            generation: 0,
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
        let first = KvPool::new_cpu(cfg, split_size(size, layers))?;
        let c = *first.config();
        let mut pools = vec![first];
        for _ in 1..layers {
            pools.push(KvPool::new_cpu(c, PoolSize::Pages(c.num_pages))?);
        }
        Ok(Self {
            table: PageTable::new(c.num_pages, c.page_size)?,
            pools,
            generation: 0,
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
        self.table.free(id)?;
        self.generation += 1;
        Ok(())
    }

    /// Forks a sequence: the child shares the parent's pages (copy-on-write of the partial page).
    pub fn fork(&mut self, parent: SeqId) -> Result<SeqId> {
        let id = self.table.fork(parent)?;
        self.generation += 1;
        Ok(id)
    }

    /// Shortens a sequence.
    pub fn truncate(&mut self, id: SeqId, len: usize) -> Result<()> {
        self.table.truncate(id, len)?;
        self.generation += 1;
        Ok(())
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
        let total = reqs
            .iter()
            .try_fold(0usize, |a, r| a.checked_add(r.1))
            .ok_or(Error::Overflow {
                op: OP,
                what: "append rows",
            })?;
        let plan = self.table.plan_append(reqs)?;
        for pool in &mut self.pools {
            pool.copy_pages(&plan.copies)?;
        }
        let device = if self.pools[0].gpu().is_some() && total > 0 {
            let meta = AppendMeta {
                batch_indices: &plan.batch_indices,
                positions: &plan.positions,
                pages: &plan.pages,
            };
            // Into the cache's own buffer, reused every step: no per-step allocation (a freed
            // device buffer can synchronise the device). Valid until the next begin_append,
            // which bumps the generation that append_layer checks.
            Some(self.pools[0].upload_append_meta_into(&meta, &mut self.meta_buf)?)
        } else {
            None
        };
        self.generation += 1;
        Ok(AppendStep {
            plan,
            device,
            rows: total,
            generation: self.generation,
        })
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
        if step.generation != self.generation {
            return Err(Error::invalid(
                OP,
                "append step",
                "the page tables changed since begin_append",
            ));
        }
        let pool = self.pool_mut(layer)?;
        pool.check_rows("k rows", &k, ks, step.rows)?;
        pool.check_rows("v rows", &v, vs, step.rows)?;
        match (&step.device, k, v) {
            (Some(meta), Rows::Device(kd), Rows::Device(vd)) => {
                pool.append_uploaded(meta, kd, ks, vd, vs)
            }
            (None, k, v) => {
                let meta = AppendMeta {
                    batch_indices: &step.plan.batch_indices,
                    positions: &step.plan.positions,
                    pages: &step.plan.pages,
                };
                pool.append(&meta, k, ks, v, vs)
            }
            _ => Err(Error::invalid(
                OP,
                "rows",
                "rows must live where the pool lives",
            )),
        }
    }

    /// Single-layer convenience: [`PagedKvCache::begin_append`] + [`PagedKvCache::append_layer`]
    /// for layer 0. The rows are checked before anything is reserved, so a short buffer leaves
    /// the cache unchanged.
    pub fn append(
        &mut self,
        reqs: &[(SeqId, usize)],
        k: Rows<'_, T>,
        ks: RowStrides,
        v: Rows<'_, T>,
        vs: RowStrides,
    ) -> Result<()> {
        let total = reqs
            .iter()
            .try_fold(0usize, |a, r| a.checked_add(r.1))
            .ok_or(Error::Overflow {
                op: OP,
                what: "append rows",
            })?;
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
        let n = len * c.num_kv_heads * c.head_dim;
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
                let mut k = vec![T::default(); n];
                let mut v = vec![T::default(); n];
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
