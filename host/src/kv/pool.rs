//! The page pool: one allocation of `num_pages` pages for K and one for V, on the GPU or in
//! host memory (the CPU backend), plus the raw append/gather copies over FlashInfer-style
//! metadata, validated on the host before any launch.
//!
//! Device side: `kernels-gpu/src/append.rs` (`append_kv_b16`, `gather_kv_b16`).
use ferrinfer_kernels::abi::AppendParams;
use ferrinfer_kernels::math::layout::PageStrides;

use super::page_table::{BatchPages, PageCopy};
use crate::checked::{self, I32_LIMIT};
use crate::dtype::Float16;
use crate::error::{Error, Result};
use crate::runtime::{DeviceBuffer, Gpu, LaunchDims};

const OP: &str = "kv_pool";

/// Page layout (FlashInfer's two): NHD `[page, P, heads, D]` or HND `[page, heads, P, D]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvLayout {
    /// `[page_size, num_kv_heads, head_dim]` per page.
    Nhd,
    /// `[num_kv_heads, page_size, head_dim]` per page.
    Hnd,
}

/// How large to make the pool.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PoolSize {
    /// Exactly this many pages.
    Pages(usize),
    /// As many pages as fit in this many bytes (K and V together).
    Bytes(usize),
    /// This fraction of the GPU's currently free memory (GPU pools only).
    FreeMemoryFraction(f64),
}

/// Geometry of a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvPoolConfig {
    /// Pages in the pool.
    pub num_pages: usize,
    /// Tokens per page.
    pub page_size: usize,
    /// KV heads.
    pub num_kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Page layout.
    pub layout: KvLayout,
}

impl KvPoolConfig {
    /// Elements per page (one of K or V). Saturates at `usize::MAX` for a geometry no pool
    /// accepts (every pool validates it, so a pool's config never saturates).
    pub fn page_elems(&self) -> usize {
        self.page_size
            .saturating_mul(self.num_kv_heads)
            .saturating_mul(self.head_dim)
    }

    /// Bytes of one page of K plus one of V (16-bit elements); saturates like
    /// [`KvPoolConfig::page_elems`].
    pub fn page_bytes(&self) -> usize {
        self.page_elems().saturating_mul(4)
    }

    /// Capacity in tokens (saturates like [`KvPoolConfig::page_elems`]).
    pub fn capacity_tokens(&self) -> usize {
        self.num_pages.saturating_mul(self.page_size)
    }

    /// Elements of one of the K/V pool allocations (`num_pages · page_elems`), checked.
    fn pool_elems(&self) -> Result<usize> {
        checked::product(
            OP,
            "pool size",
            &[
                self.num_pages,
                self.page_size,
                self.num_kv_heads,
                self.head_dim,
            ],
        )
    }

    /// Kernel-side strides (32-bit: [`KvPoolConfig`]s of pools are validated to fit).
    pub fn strides(&self) -> PageStrides {
        let (p, h, d) = (
            self.page_size as u32,
            self.num_kv_heads as u32,
            self.head_dim as u32,
        );
        match self.layout {
            KvLayout::Nhd => PageStrides::nhd(p, h, d),
            KvLayout::Hnd => PageStrides::hnd(p, h, d),
        }
    }

    /// Element offset of `(page, entry, head)`. In range for a pool's config and in-range
    /// arguments; saturates (never wraps) otherwise, so a bad offset fails the slice bounds
    /// check of its user.
    pub fn offset(&self, page: usize, entry: usize, head: usize) -> usize {
        let s = self.strides();
        page.saturating_mul(s.stride_page as usize)
            .saturating_add(entry.saturating_mul(s.stride_n as usize))
            .saturating_add(head.saturating_mul(s.stride_h as usize))
    }

    fn validate(&self) -> Result<()> {
        if self.page_size == 0 || self.num_kv_heads == 0 || self.num_pages == 0 {
            return Err(Error::invalid(
                OP,
                "config",
                format!("{self:?}: sizes must be positive"),
            ));
        }
        if !matches!(self.head_dim, 64 | 128 | 256) {
            return Err(Error::unsupported(
                OP,
                "head_dim",
                format!("{} (supported: 64, 128, 256)", self.head_dim),
            ));
        }
        // Page ids and rows per page end up in i32 tables; strides are u32 kernel parameters.
        checked::at_most(OP, "num_pages", self.num_pages, I32_LIMIT)?;
        checked::at_most(OP, "page_size", self.page_size, I32_LIMIT)?;
        let page = checked::product(
            OP,
            "page size",
            &[self.page_size, self.num_kv_heads, self.head_dim],
        )?;
        checked::to_u32(OP, "elements per page", page)?;
        // Both pools, in bytes, must be addressable.
        checked::product(OP, "pool bytes", &[self.pool_elems()?, 2, size_of::<u16>()])?;
        Ok(())
    }
}

/// Element strides of contiguous-side K/V rows `[n, heads, head_dim]`: element `(n, h, d)` at
/// `n*stride_n + h*stride_h + d` (a fused QKV projection leaves wider strides).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowStrides {
    /// Between rows (tokens).
    pub stride_n: usize,
    /// Between heads.
    pub stride_h: usize,
}

impl RowStrides {
    /// Dense `[n, heads, head_dim]`.
    pub fn contiguous(num_kv_heads: usize, head_dim: usize) -> Self {
        Self {
            // Saturates for a geometry no pool accepts; such strides fail `check_rows`.
            stride_n: num_kv_heads.saturating_mul(head_dim),
            stride_h: head_dim,
        }
    }
}

/// Rows on the contiguous side of an append/gather: device memory for GPU pools, host memory
/// for CPU pools.
#[derive(Clone, Copy, Debug)]
pub enum Rows<'a, T> {
    /// Device buffer.
    Device(&'a DeviceBuffer<T>),
    /// Host slice.
    Host(&'a [T]),
}

impl<T: cudarc::driver::DeviceRepr> Rows<'_, T> {
    fn len(&self) -> usize {
        match self {
            Rows::Device(b) => b.len(),
            Rows::Host(s) => s.len(),
        }
    }
}

enum Storage<T> {
    Cuda {
        gpu: Gpu,
        k: DeviceBuffer<T>,
        v: DeviceBuffer<T>,
        meta: Option<DeviceBuffer<i32>>,
        /// Pinned staging for metadata uploads: the copies are asynchronous, so a serving loop's
        /// host work for step n+1 overlaps the GPU's work for step n (a pageable upload would
        /// wait for the stream to drain). A mutex because `upload_append_meta` takes `&self`.
        pinned: Box<std::sync::Mutex<Option<crate::runtime::PinnedStaging>>>,
    },
    Cpu {
        k: Vec<T>,
        v: Vec<T>,
    },
}

/// A pool of K and V pages.
pub struct KvPool<T> {
    cfg: KvPoolConfig,
    storage: Storage<T>,
    staging: Vec<i32>,
    /// Resident append blocks per wave (occupancy query, cached; 0 = not queried yet). Atomic so
    /// that a pool can be shared across threads.
    resident_blocks: std::sync::atomic::AtomicU32,
    append_kernel: &'static str,
    /// Dynamic shared memory per thread of the selected append kernel (cp.async variants).
    append_smem_per_thread: u32,
}

/// Append metadata validated and uploaded to the device once, for repeated launches (one per
/// layer in a serving step, or a benchmark loop). Only valid for the pool that made it.
pub struct DeviceAppendMeta {
    /// Device addresses of the batch indices, positions, kv_indptr and kv_indices.
    addrs: [u64; 4],
    /// The buffer holding it when this value owns it (`upload_append_meta`); `None` when it
    /// lives in a buffer the caller keeps alive and unchanged while the value is in use (the
    /// KV cache's per-step buffer, guarded by its generation check).
    _owned: Option<DeviceBuffer<i32>>,
    nnz: usize,
    /// Geometry and context the metadata was validated against: any pool with both (every layer
    /// of a cache) may use it.
    cfg: KvPoolConfig,
    ctx_id: usize,
}

/// Ragged append metadata as FlashInfer's `append_paged_kv_cache` takes it.
#[derive(Clone, Copy, Debug)]
pub struct AppendMeta<'a> {
    /// Batch entry of each new row.
    pub batch_indices: &'a [i32],
    /// Absolute position of each new row (must lie inside its sequence's reserved length).
    pub positions: &'a [i32],
    /// Page tables of the batch.
    pub pages: &'a BatchPages,
}

impl<T: Float16> KvPool<T> {
    fn resolve(size: PoolSize, page_bytes: usize, free_bytes: Option<usize>) -> Result<usize> {
        // A geometry whose page size saturates is refused by `validate` right after.
        let page_bytes = page_bytes.max(1);
        match size {
            PoolSize::Pages(n) => Ok(n),
            PoolSize::Bytes(b) => Ok(b / page_bytes),
            PoolSize::FreeMemoryFraction(f) => {
                if !(f > 0.0 && f <= 1.0) {
                    return Err(Error::invalid(
                        OP,
                        "free memory fraction",
                        format!("{f} not in (0, 1]"),
                    ));
                }
                let free = free_bytes.ok_or_else(|| {
                    Error::invalid(OP, "pool size", "a free-memory fraction needs a GPU pool")
                })?;
                Ok((free as f64 * f) as usize / page_bytes)
            }
        }
    }

    /// A pool on the GPU. `cfg.num_pages` is ignored in favour of `size`.
    pub fn new_gpu(gpu: &Gpu, mut cfg: KvPoolConfig, size: PoolSize) -> Result<Self> {
        let (free, _total) = gpu.context().mem_get_info()?;
        cfg.num_pages = Self::resolve(size, cfg.page_bytes().max(1), Some(free))?;
        cfg.validate()?;
        let n = cfg.pool_elems()?;
        Ok(Self {
            cfg,
            storage: Storage::Cuda {
                gpu: gpu.clone(),
                k: gpu.alloc::<T>(n)?,
                v: gpu.alloc::<T>(n)?,
                meta: None,
                pinned: Box::new(std::sync::Mutex::new(None)),
            },
            staging: Vec::new(),
            resident_blocks: std::sync::atomic::AtomicU32::new(0),
            append_kernel: "append_kv_b16",
            append_smem_per_thread: 0,
        })
    }

    /// A pool in host memory for the CPU backend. `cfg.num_pages` is ignored in favour of `size`.
    pub fn new_cpu(mut cfg: KvPoolConfig, size: PoolSize) -> Result<Self> {
        cfg.num_pages = Self::resolve(size, cfg.page_bytes().max(1), None)?;
        cfg.validate()?;
        let n = cfg.pool_elems()?;
        Ok(Self {
            cfg,
            storage: Storage::Cpu {
                k: checked::filled(OP, "K pool", n, T::default())?,
                v: checked::filled(OP, "V pool", n, T::default())?,
            },
            staging: Vec::new(),
            resident_blocks: std::sync::atomic::AtomicU32::new(0),
            append_kernel: "append_kv_b16",
            append_smem_per_thread: 0,
        })
    }

    /// Fills the whole pool by repeating `pattern_k` / `pattern_v` (benchmarks and demos that
    /// need non-zero KV without uploading gigabytes from the host).
    pub fn fill_tiled(&mut self, pattern_k: &[T], pattern_v: &[T]) -> Result<()> {
        if pattern_k.is_empty() || pattern_k.len() != pattern_v.len() {
            return Err(Error::invalid(
                OP,
                "fill pattern",
                "k and v patterns must be non-empty and of equal length",
            ));
        }
        match &mut self.storage {
            Storage::Cuda { gpu, k, v, .. } => {
                let (pk, pv) = (gpu.upload(pattern_k)?, gpu.upload(pattern_v)?);
                let n = k.len();
                let mut off = 0;
                while off < n {
                    let len = pattern_k.len().min(n - off);
                    if len == pattern_k.len() {
                        gpu.copy_into(&pk, k, off)?;
                        gpu.copy_into(&pv, v, off)?;
                    } else {
                        gpu.write_range(k, off, &pattern_k[..len])?;
                        gpu.write_range(v, off, &pattern_v[..len])?;
                    }
                    off += len;
                }
                gpu.synchronize()
            }
            Storage::Cpu { k, v } => {
                for (c, p) in k
                    .chunks_mut(pattern_k.len())
                    .zip(std::iter::repeat(pattern_k))
                {
                    c.copy_from_slice(&p[..c.len()]);
                }
                for (c, p) in v
                    .chunks_mut(pattern_v.len())
                    .zip(std::iter::repeat(pattern_v))
                {
                    c.copy_from_slice(&p[..c.len()]);
                }
                Ok(())
            }
        }
    }

    /// Tuning knob for the append kernel: rows each thread moves per iteration (1 — the
    /// default — 2, 4 or 8; more rows keep more loads in flight per thread but need more
    /// registers, so fewer threads are resident) and, for 1 row, streaming (`.cs`) stores.
    /// `benches/append.rs` compares them.
    pub fn set_append_variant(&mut self, rows: usize, streaming_stores: bool) -> Result<()> {
        self.append_kernel = match (rows, streaming_stores) {
            (1, false) => "append_kv_b16",
            (1, true) => "append_kv_b16_cs",
            (2, false) => "append_kv_b16_r2",
            (4, false) => "append_kv_b16_r4",
            (8, false) => "append_kv_b16_r8",
            (102, false) => "append_kv_b16_async2",
            (104, false) => "append_kv_b16_async4",
            // (rows + 100: cp.async double-buffered variants, see kernels-gpu/src/append.rs)
            _ => {
                return Err(Error::unsupported(
                    OP,
                    "append variant",
                    format!("{rows} rows, streaming {streaming_stores} (supported: 1/2/4/8 rows; streaming with 1 row)"),
                ))
            }
        };
        self.append_smem_per_thread = match rows {
            102 => 2 * 2 * 32,
            104 => 2 * 4 * 32,
            _ => 0,
        };
        self.resident_blocks
            .store(0, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// The pool's geometry.
    pub fn config(&self) -> &KvPoolConfig {
        &self.cfg
    }

    /// The GPU holding the pool, if it is a device pool.
    pub fn gpu(&self) -> Option<&Gpu> {
        match &self.storage {
            Storage::Cuda { gpu, .. } => Some(gpu),
            Storage::Cpu { .. } => None,
        }
    }

    /// Device K and V pools (for attention kernels), if this is a device pool.
    pub fn device_buffers(&self) -> Option<(&DeviceBuffer<T>, &DeviceBuffer<T>)> {
        match &self.storage {
            Storage::Cuda { k, v, .. } => Some((k, v)),
            Storage::Cpu { .. } => None,
        }
    }

    /// Host K and V pools, if this is a CPU pool.
    pub fn host_buffers(&self) -> Option<(&[T], &[T])> {
        match &self.storage {
            Storage::Cpu { k, v } => Some((k, v)),
            Storage::Cuda { .. } => None,
        }
    }

    /// Validates CSR page tables against this pool: monotone `kv_indptr` from 0, matching
    /// lengths, page ids in range, last-page lengths in `[1, page_size]` for non-empty entries.
    pub fn validate_pages(&self, pages: &BatchPages) -> Result<()> {
        pages.validate(OP, self.cfg.page_size, Some(self.cfg.num_pages))
    }

    /// Checks that `rows` hold `n` rows with strides `s` where this pool can read them.
    pub(crate) fn check_rows(
        &self,
        what: &'static str,
        rows: &Rows<'_, T>,
        s: RowStrides,
        n: usize,
    ) -> Result<()> {
        let (h, d) = (self.cfg.num_kv_heads, self.cfg.head_dim);
        if !s.stride_n.is_multiple_of(8) || !s.stride_h.is_multiple_of(8) {
            return Err(Error::invalid(
                OP,
                "row strides",
                format!(
                    "{what}: ({}, {}) must be multiples of 8 elements",
                    s.stride_n, s.stride_h
                ),
            ));
        }
        if u32::try_from(s.stride_n).is_err() || u32::try_from(s.stride_h).is_err() {
            return Err(Error::Overflow {
                op: OP,
                what: "row strides",
            });
        }
        if h > 1 && s.stride_h < d {
            return Err(Error::invalid(
                OP,
                "row strides",
                format!("{what}: head stride {} < head_dim {d}", s.stride_h),
            ));
        }
        let need = if n == 0 {
            0
        } else {
            let last_head = checked::mul(OP, "row extent", h - 1, s.stride_h)?;
            checked::sum(
                OP,
                "row extent",
                [
                    checked::mul(OP, "row extent", n - 1, s.stride_n)?,
                    last_head,
                    d,
                ],
            )?
        };
        if rows.len() < need {
            return Err(Error::shape(
                OP,
                what,
                format!(">= {need} elements"),
                rows.len(),
            ));
        }
        match (&self.storage, rows) {
            (Storage::Cuda { gpu, .. }, Rows::Device(b)) => gpu.check_buffer(OP, b),
            (Storage::Cpu { .. }, Rows::Host(_)) => Ok(()),
            _ => Err(Error::invalid(OP, what, "rows must live where the pool lives (device rows for a GPU pool, host rows for a CPU pool)")),
        }
    }

    /// Validates an append: metadata consistent with the pool and the rows.
    pub fn validate_append(
        &self,
        meta: &AppendMeta<'_>,
        k: &Rows<'_, T>,
        ks: RowStrides,
        v: &Rows<'_, T>,
        vs: RowStrides,
    ) -> Result<()> {
        self.validate_meta(meta)?;
        let nnz = meta.batch_indices.len();
        self.check_rows("k rows", k, ks, nnz)?;
        self.check_rows("v rows", v, vs, nnz)
    }

    /// Validates append metadata against the pool: page tables, batch indices, and positions
    /// inside each entry's reserved length.
    pub fn validate_meta(&self, meta: &AppendMeta<'_>) -> Result<()> {
        self.validate_pages(meta.pages)?;
        let nnz = meta.batch_indices.len();
        if meta.positions.len() != nnz {
            return Err(Error::shape(
                OP,
                "positions length",
                nnz,
                meta.positions.len(),
            ));
        }
        if nnz > i32::MAX as usize {
            return Err(Error::Overflow {
                op: OP,
                what: "rows",
            });
        }
        let b = meta.pages.batch_size();
        for (&bi, &pos) in meta.batch_indices.iter().zip(meta.positions) {
            if bi < 0 || bi as usize >= b {
                return Err(Error::invalid(
                    OP,
                    "batch_indices",
                    format!("{bi} not in [0, {b})"),
                ));
            }
            let len = meta.pages.kv_len(bi as usize, self.cfg.page_size)?;
            if pos < 0 || pos as usize >= len {
                return Err(Error::invalid(
                    OP,
                    "positions",
                    format!("{pos} outside the reserved length {len} of entry {bi}"),
                ));
            }
        }
        Ok(())
    }

    fn upload_meta(&mut self, parts: &[&[i32]; 4]) -> Result<[u64; 4]> {
        let Storage::Cuda {
            gpu, meta, pinned, ..
        } = &mut self.storage
        else {
            return Err(Error::invalid(OP, "storage", "not a device pool"));
        };
        upload_parts(gpu, pinned, parts, &mut self.staging, meta)
    }

    /// Block `(head_dim/8, heads ≤ 256 threads)`; grid = one block per row up to one wave of
    /// resident blocks (occupancy query, cached). Small appends (a decode step) thus get one
    /// row per block; large ones grid-stride, one row per thread per iteration (see `set_append_variant`).
    fn launch_dims(&self, gpu: &Gpu, rows: usize, smem_per_thread: u32) -> Result<LaunchDims> {
        let lanes = (self.cfg.head_dim / 8) as u32;
        let hy = (self.cfg.num_kv_heads as u32).min((256 / lanes).max(1));
        let smem = smem_per_thread * lanes * hy;
        let resident = match self
            .resident_blocks
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            r if r > 0 => r,
            _ => {
                let f = gpu.function(self.append_kernel, smem)?;
                let per_sm = f
                    .occupancy_max_active_blocks_per_multiprocessor(
                        lanes * hy,
                        smem as usize,
                        None,
                    )?
                    .max(1);
                let r = per_sm * gpu.info().sm_count;
                self.resident_blocks
                    .store(r, std::sync::atomic::Ordering::Relaxed);
                r
            }
        };
        // One row per block while rows are few; beyond, a wave of resident blocks.
        let grid = (rows as u32).clamp(1, resident);
        Ok(LaunchDims {
            grid: (grid, 1, 1),
            block: (lanes, hy, 1),
            smem_bytes: smem,
        })
    }

    /// Validates `meta` for `nnz` rows and uploads it (one asynchronous host-to-device copy into
    /// a new device buffer the result owns).
    pub fn upload_append_meta(&self, meta: &AppendMeta<'_>) -> Result<DeviceAppendMeta> {
        let mut buf = None;
        let mut m = self.upload_append_meta_into(meta, &mut buf)?;
        m._owned = buf;
        Ok(m)
    }

    /// As [`KvPool::upload_append_meta`], into `buf` (grown when too small). The result points
    /// into `buf`: the caller must keep `buf` alive and not rewrite it while using the result.
    /// Stream-ordered allocation and an async copy from pinned memory: nothing here waits for
    /// the GPU (see `Storage::Cuda::pinned`).
    pub(crate) fn upload_append_meta_into(
        &self,
        meta: &AppendMeta<'_>,
        buf: &mut Option<DeviceBuffer<i32>>,
    ) -> Result<DeviceAppendMeta> {
        let Storage::Cuda { gpu, pinned, .. } = &self.storage else {
            return Err(Error::invalid(
                OP,
                "storage",
                "device metadata needs a GPU pool",
            ));
        };
        self.validate_meta(meta)?;
        let addrs = upload_parts(
            gpu,
            pinned,
            &[
                meta.batch_indices,
                meta.positions,
                &meta.pages.kv_indptr,
                &meta.pages.kv_indices,
            ],
            &mut Vec::new(),
            buf,
        )?;
        Ok(DeviceAppendMeta {
            addrs,
            _owned: None,
            nnz: meta.batch_indices.len(),
            cfg: self.cfg,
            ctx_id: gpu.ctx_id(),
        })
    }

    /// Appends with metadata uploaded by [`KvPool::upload_append_meta`]: one kernel launch, no
    /// host-to-device copy.
    pub fn append_uploaded(
        &mut self,
        meta: &DeviceAppendMeta,
        k: &DeviceBuffer<T>,
        ks: RowStrides,
        v: &DeviceBuffer<T>,
        vs: RowStrides,
    ) -> Result<()> {
        let same_ctx =
            matches!(&self.storage, Storage::Cuda { gpu, .. } if gpu.ctx_id() == meta.ctx_id);
        if meta.cfg != self.cfg || !same_ctx {
            return Err(Error::invalid(
                OP,
                "metadata",
                "uploaded for a pool of another geometry or device",
            ));
        }
        self.check_rows("k rows", &Rows::Device(k), ks, meta.nnz)?;
        self.check_rows("v rows", &Rows::Device(v), vs, meta.nnz)?;
        if meta.nnz == 0 {
            return Ok(());
        }
        self.launch_append(meta.addrs, meta.nnz, k, ks, v, vs)
    }

    fn launch_append(
        &self,
        a: [u64; 4],
        nnz: usize,
        kb: &DeviceBuffer<T>,
        ks: RowStrides,
        vb: &DeviceBuffer<T>,
        vs: RowStrides,
    ) -> Result<()> {
        let cfg = self.cfg;
        let Storage::Cuda {
            gpu, k: kp, v: vp, ..
        } = &self.storage
        else {
            unreachable_storage()?
        };
        let p = AppendParams {
            k_rows: kb.addr(),
            v_rows: vb.addr(),
            k_pool: kp.addr(),
            v_pool: vp.addr(),
            batch_indices: a[0],
            positions: a[1],
            kv_indptr: a[2],
            kv_indices: a[3],
            nnz: nnz as u32,
            num_heads: cfg.num_kv_heads as u32,
            k_rows_stride_n: ks.stride_n as u32,
            k_rows_stride_h: ks.stride_h as u32,
            v_rows_stride_n: vs.stride_n as u32,
            v_rows_stride_h: vs.stride_h as u32,
            pool: cfg.strides(),
            seq: 0,
            reserved: 0,
        };
        let dims = self.launch_dims(gpu, nnz, self.append_smem_per_thread)?;
        // SAFETY: callers validated every batch index, position and page id against the pool
        // and the page tables, the row extents and 16-byte strides.
        unsafe { gpu.launch(self.append_kernel, dims, p) }
    }

    /// Writes new K/V rows into their pages (FlashInfer's `append_paged_kv_cache`): row `n`
    /// goes to position `positions[n]` of batch entry `batch_indices[n]`. Validated first.
    pub fn append(
        &mut self,
        meta: &AppendMeta<'_>,
        k: Rows<'_, T>,
        ks: RowStrides,
        v: Rows<'_, T>,
        vs: RowStrides,
    ) -> Result<()> {
        self.validate_append(meta, &k, ks, &v, vs)?;
        let nnz = meta.batch_indices.len();
        if nnz == 0 {
            return Ok(());
        }
        let cfg = self.cfg;
        match (&self.storage, k, v) {
            (Storage::Cuda { .. }, Rows::Device(kb), Rows::Device(vb)) => {
                let a = self.upload_meta(&[
                    meta.batch_indices,
                    meta.positions,
                    &meta.pages.kv_indptr,
                    &meta.pages.kv_indices,
                ])?;
                self.launch_append(a, nnz, kb, ks, vb, vs)
            }
            (Storage::Cpu { .. }, Rows::Host(kh), Rows::Host(vh)) => {
                let Storage::Cpu { k: kp, v: vp } = &mut self.storage else {
                    unreachable_storage()?
                };
                for (n, (&b, &pos)) in meta.batch_indices.iter().zip(meta.positions).enumerate() {
                    let (page, entry) =
                        page_of(meta.pages, b as usize, pos as usize, cfg.page_size)?;
                    for h in 0..cfg.num_kv_heads {
                        let dst = cfg.offset(page, entry, h);
                        let sk = n * ks.stride_n + h * ks.stride_h;
                        let sv = n * vs.stride_n + h * vs.stride_h;
                        kp[dst..dst + cfg.head_dim].copy_from_slice(&kh[sk..sk + cfg.head_dim]);
                        vp[dst..dst + cfg.head_dim].copy_from_slice(&vh[sv..sv + cfg.head_dim]);
                    }
                }
                Ok(())
            }
            _ => Err(Error::invalid(
                OP,
                "rows",
                "rows must live where the pool lives",
            )),
        }
    }

    /// Copies entry `b` of `pages` out to contiguous rows `[len, heads, head_dim]` (strided).
    pub fn gather(
        &mut self,
        pages: &BatchPages,
        b: usize,
        k_out: RowsMut<'_, T>,
        ks: RowStrides,
        v_out: RowsMut<'_, T>,
        vs: RowStrides,
    ) -> Result<()> {
        self.validate_pages(pages)?;
        if b >= pages.batch_size() {
            return Err(Error::invalid(
                OP,
                "batch entry",
                format!("{b} not in [0, {})", pages.batch_size()),
            ));
        }
        let len = pages.kv_len(b, self.cfg.page_size)?;
        self.check_rows("k out", &k_out.as_rows(), ks, len)?;
        self.check_rows("v out", &v_out.as_rows(), vs, len)?;
        if len == 0 {
            return Ok(());
        }
        let cfg = self.cfg;
        match (k_out, v_out) {
            (RowsMut::Device(kb), RowsMut::Device(vb)) => {
                let [_, _, indptr, indices] =
                    self.upload_meta(&[&[], &[], &pages.kv_indptr, &pages.kv_indices])?;
                let Storage::Cuda {
                    gpu, k: kp, v: vp, ..
                } = &self.storage
                else {
                    unreachable_storage()?
                };
                let p = AppendParams {
                    k_rows: kb.addr(),
                    v_rows: vb.addr(),
                    k_pool: kp.addr(),
                    v_pool: vp.addr(),
                    batch_indices: 0,
                    positions: 0,
                    kv_indptr: indptr,
                    kv_indices: indices,
                    nnz: len as u32,
                    num_heads: cfg.num_kv_heads as u32,
                    k_rows_stride_n: ks.stride_n as u32,
                    k_rows_stride_h: ks.stride_h as u32,
                    v_rows_stride_n: vs.stride_n as u32,
                    v_rows_stride_h: vs.stride_h as u32,
                    pool: cfg.strides(),
                    seq: b as u32,
                    reserved: 0,
                };
                let dims = self.launch_dims(gpu, len, 0)?;
                // SAFETY: pages validated against the pool; outputs sized for `len` rows.
                unsafe { gpu.launch("gather_kv_b16", dims, p) }
            }
            (RowsMut::Host(kh), RowsMut::Host(vh)) => {
                let Storage::Cpu { k: kp, v: vp } = &self.storage else {
                    unreachable_storage()?
                };
                host_rows_out(&cfg, kp, vp, pages, b, len, kh, ks, vh, vs)
            }
            _ => Err(Error::invalid(
                OP,
                "rows",
                "k and v outputs must both be device or both host",
            )),
        }
    }

    /// Checks that this pool holds the KV heads and head dim of `heads` (for op `op`).
    pub fn check_heads(&self, op: &'static str, heads: &crate::heads::HeadConfig) -> Result<()> {
        let c = &self.cfg;
        if c.num_kv_heads != heads.num_kv_heads || c.head_dim != heads.head_dim {
            return Err(Error::shape(
                op,
                "pool heads/head_dim",
                format!("{}/{}", heads.num_kv_heads, heads.head_dim),
                format!("{}/{}", c.num_kv_heads, c.head_dim),
            ));
        }
        Ok(())
    }

    /// Entry `b` of `pages` as new contiguous host rows `[len, heads, head_dim]` (K, V) — the
    /// CPU backend's view of one request. Host pools only; `pages` must be validated.
    pub(crate) fn gather_host(&self, pages: &BatchPages, b: usize) -> Result<(Vec<T>, Vec<T>)> {
        let Storage::Cpu { k: kp, v: vp } = &self.storage else {
            return Err(Error::invalid(
                OP,
                "pool",
                "a host-memory (CPU) pool is required",
            ));
        };
        let c = self.cfg;
        let len = pages.kv_len(b, c.page_size)?;
        let n = checked::product(OP, "gathered rows", &[len, c.num_kv_heads, c.head_dim])?;
        let k = checked::filled(OP, "gathered K", n, T::default());
        let (mut k, mut v) = (k?, checked::filled(OP, "gathered V", n, T::default())?);
        let s = RowStrides::contiguous(c.num_kv_heads, c.head_dim);
        host_rows_out(&c, kp, vp, pages, b, len, &mut k, s, &mut v, s)?;
        Ok((k, v))
    }

    /// Performs copy-on-write page copies (rows `[0, rows)` of every head, K and V).
    pub fn copy_pages(&mut self, copies: &[PageCopy]) -> Result<()> {
        let cfg = self.cfg;
        for c in copies {
            for p in [c.src, c.dst] {
                if p as usize >= cfg.num_pages {
                    return Err(Error::PageOutOfRange {
                        op: OP,
                        page: p as i64,
                        num_pages: cfg.num_pages,
                    });
                }
            }
            if c.rows as usize > cfg.page_size {
                return Err(Error::invalid(OP, "page copy rows", c.rows));
            }
        }
        // (offset in page, length) runs that hold rows [0, rows) of every head.
        let runs = |rows: usize| -> Vec<(usize, usize)> {
            match cfg.layout {
                KvLayout::Nhd => vec![(0, rows * cfg.num_kv_heads * cfg.head_dim)],
                KvLayout::Hnd => (0..cfg.num_kv_heads)
                    .map(|h| (cfg.offset(0, 0, h), rows * cfg.head_dim))
                    .collect(),
            }
        };
        let pe = cfg.page_elems();
        for c in copies {
            let (s, d) = (c.src as usize * pe, c.dst as usize * pe);
            for (off, len) in runs(c.rows as usize) {
                match &mut self.storage {
                    Storage::Cuda { gpu, k, v, .. } => {
                        gpu.copy_within(k, s + off, d + off, len)?;
                        gpu.copy_within(v, s + off, d + off, len)?;
                    }
                    Storage::Cpu { k, v } => {
                        k.copy_within(s + off..s + off + len, d + off);
                        v.copy_within(s + off..s + off + len, d + off);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Mutable rows on the contiguous side of a gather.
#[derive(Debug)]
pub enum RowsMut<'a, T> {
    /// Device buffer.
    Device(&'a mut DeviceBuffer<T>),
    /// Host slice.
    Host(&'a mut [T]),
}

impl<'a, T> RowsMut<'a, T> {
    fn as_rows(&self) -> Rows<'_, T> {
        match self {
            RowsMut::Device(b) => Rows::Device(b),
            RowsMut::Host(s) => Rows::Host(s),
        }
    }
}

/// Copies tokens `[0, len)` of entry `b` from host pools into strided rows (bounds validated by
/// the callers; a page slot outside the tables is still an error, never an index panic).
#[allow(clippy::too_many_arguments)]
fn host_rows_out<T: Copy>(
    cfg: &KvPoolConfig,
    kp: &[T],
    vp: &[T],
    pages: &BatchPages,
    b: usize,
    len: usize,
    kh: &mut [T],
    ks: RowStrides,
    vh: &mut [T],
    vs: RowStrides,
) -> Result<()> {
    for t in 0..len {
        let (page, entry) = page_of(pages, b, t, cfg.page_size)?;
        for h in 0..cfg.num_kv_heads {
            let src = cfg.offset(page, entry, h);
            let dk = t * ks.stride_n + h * ks.stride_h;
            let dv = t * vs.stride_n + h * vs.stride_h;
            kh[dk..dk + cfg.head_dim].copy_from_slice(&kp[src..src + cfg.head_dim]);
            vh[dv..dv + cfg.head_dim].copy_from_slice(&vp[src..src + cfg.head_dim]);
        }
    }
    Ok(())
}

/// `(page, entry)` of position `pos` of entry `b`: the tables were validated by the callers,
/// and a slot outside them is an error rather than an index panic all the same.
fn page_of(pages: &BatchPages, b: usize, pos: usize, page_size: usize) -> Result<(usize, usize)> {
    let slot = pages
        .kv_indptr
        .get(b)
        .and_then(|&start| usize::try_from(start).ok())
        .and_then(|start| start.checked_add(pos / page_size))
        .and_then(|slot| pages.kv_indices.get(slot))
        .and_then(|&page| usize::try_from(page).ok());
    match slot {
        Some(page) => Ok((page, pos % page_size)),
        None => Err(Error::invalid(
            OP,
            "page tables",
            format!("no page for position {pos} of entry {b}"),
        )),
    }
}

/// Concatenates the four metadata arrays into `host`, grows `buf` to hold them and uploads them
/// asynchronously through the pool's pinned staging (stream-ordered: nothing waits for the
/// GPU). Returns each array's device address.
fn upload_parts(
    gpu: &Gpu,
    pinned: &std::sync::Mutex<Option<crate::runtime::PinnedStaging>>,
    parts: &[&[i32]; 4],
    host: &mut Vec<i32>,
    buf: &mut Option<DeviceBuffer<i32>>,
) -> Result<[u64; 4]> {
    host.clear();
    let mut offs = [0usize; 4];
    for (o, p) in offs.iter_mut().zip(parts) {
        *o = host.len();
        host.extend_from_slice(p);
    }
    let need = host.len().max(1);
    if buf.as_ref().is_none_or(|b| b.len() < need) {
        *buf = Some(gpu.alloc::<i32>(need.next_power_of_two())?);
    }
    let Some(b) = buf.as_mut() else {
        return Err(Error::invalid(OP, "storage", "metadata buffer"));
    };
    {
        let mut staging = pinned.lock().unwrap_or_else(|p| p.into_inner());
        gpu.upload_pinned(&mut staging, host, b)?;
    }
    let base = b.addr();
    Ok(offs.map(|o| base + (o * 4) as u64))
}

fn unreachable_storage<T>() -> Result<T> {
    Err(Error::invalid(OP, "storage", "rows/pool kind mismatch"))
}
