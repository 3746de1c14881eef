//! `PagedKvCache`: the serving engine's KV store. Page tables on the host ([`PageTable`]) over
//! a page pool on the GPU or in host memory ([`KvPool`]).
//!
//! The serving loop, per step: `append` the new tokens' K/V of every sequence (one launch; the
//! page table grows and copy-on-write copies run first), `batch_pages` for the attention
//! planner, then attention per layer reads the pool through those tables.
use super::page_table::{BatchPages, PageTable, SeqId};
use super::pool::{AppendMeta, KvPool, KvPoolConfig, PoolSize, RowStrides, Rows, RowsMut};
use crate::dtype::Float16;
use crate::error::{Error, Result};
use crate::runtime::Gpu;

const OP: &str = "kv_cache";

/// Paged KV cache: page tables + page pool.
pub struct PagedKvCache<T> {
    table: PageTable,
    pool: KvPool<T>,
}

impl<T: Float16> PagedKvCache<T> {
    /// A cache whose pool lives on `gpu`, sized by `size` (page count, bytes, or a fraction of
    /// free GPU memory). `cfg.num_pages` is ignored.
    pub fn new_gpu(gpu: &Gpu, cfg: KvPoolConfig, size: PoolSize) -> Result<Self> {
        let pool = KvPool::new_gpu(gpu, cfg, size)?;
        let c = *pool.config();
        Ok(Self {
            table: PageTable::new(c.num_pages, c.page_size)?,
            pool,
        })
    }

    /// A cache in host memory (CPU backend).
    pub fn new_cpu(cfg: KvPoolConfig, size: PoolSize) -> Result<Self> {
        let pool = KvPool::new_cpu(cfg, size)?;
        let c = *pool.config();
        Ok(Self {
            table: PageTable::new(c.num_pages, c.page_size)?,
            pool,
        })
    }

    /// Pool geometry.
    pub fn config(&self) -> &KvPoolConfig {
        self.pool.config()
    }

    /// Capacity in tokens.
    pub fn capacity_tokens(&self) -> usize {
        self.pool.config().capacity_tokens()
    }

    /// The page tables.
    pub fn table(&self) -> &PageTable {
        &self.table
    }

    /// The page pool.
    pub fn pool(&self) -> &KvPool<T> {
        &self.pool
    }

    /// The page pool, mutably: for raw appends with caller-made metadata (validated like any
    /// other input). The page tables are not consulted by raw appends.
    pub fn pool_mut(&mut self) -> &mut KvPool<T> {
        &mut self.pool
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

    /// Appends `n_b` new tokens to each sequence `id_b`: rows `[Σ_{c<b} n_c, Σ_{c≤b} n_c)` of
    /// `k`/`v` (`[total, heads, head_dim]` with the given strides) go to the end of sequence b.
    /// All-or-nothing: on any error (unknown sequence, out of pages, rows too short) the tables
    /// and the pool are unchanged.
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
        // Rows first (they do not depend on the tables), then the all-or-nothing reservation:
        // after it succeeds the metadata is ours and valid by construction.
        self.pool.check_rows("k rows", &k, ks, total)?;
        self.pool.check_rows("v rows", &v, vs, total)?;
        let plan = self.table.plan_append(reqs)?;
        let meta = AppendMeta {
            batch_indices: &plan.batch_indices,
            positions: &plan.positions,
            pages: &plan.pages,
        };
        self.pool.copy_pages(&plan.copies)?;
        self.pool.append(&meta, k, ks, v, vs)
    }

    /// Copies a sequence's K and V out to contiguous rows `[len, heads, head_dim]`.
    pub fn gather_into(
        &mut self,
        id: SeqId,
        k: RowsMut<'_, T>,
        ks: RowStrides,
        v: RowsMut<'_, T>,
        vs: RowStrides,
    ) -> Result<()> {
        let pages = self.table.batch_pages(&[id])?;
        self.pool.gather(&pages, 0, k, ks, v, vs)
    }

    /// A sequence's K and V as host vectors `[len, heads, head_dim]` (downloads for GPU pools).
    pub fn gather(&mut self, id: SeqId) -> Result<(Vec<T>, Vec<T>)> {
        let c = *self.pool.config();
        let len = self.table.len(id)?;
        let n = len * c.num_kv_heads * c.head_dim;
        let s = RowStrides::contiguous(c.num_kv_heads, c.head_dim);
        match self.pool.gpu().cloned() {
            Some(gpu) => {
                let mut kd = gpu.alloc::<T>(n.max(1))?;
                let mut vd = gpu.alloc::<T>(n.max(1))?;
                self.gather_into(id, RowsMut::Device(&mut kd), s, RowsMut::Device(&mut vd), s)?;
                let mut k = gpu.download(&kd)?;
                let mut v = gpu.download(&vd)?;
                k.truncate(n);
                v.truncate(n);
                Ok((k, v))
            }
            None => {
                let mut k = vec![T::default(); n];
                let mut v = vec![T::default(); n];
                self.gather_into(id, RowsMut::Host(&mut k), s, RowsMut::Host(&mut v), s)?;
                Ok((k, v))
            }
        }
    }
}
