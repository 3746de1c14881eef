//! The page pool: one allocation of `num_pages` pages for K and one for V, on the GPU or in
//! host memory (the CPU backend, [`super::storage`]), plus the raw append/gather copies over
//! FlashInfer-style metadata, validated here on the host before any copy. The device copies
//! are launched by [`crate::ops::kv_copy`].
//!
//! A pool stores elements `S` and is appended rows of `T` (f16/bf16): `S = T` (the default,
//! a plain copy) or fp8 codes ([`Fp8`], quantised as rows are written, with [`KvScales`]).
use std::marker::PhantomData;
use std::sync::Mutex;

pub use super::append_meta::{AppendMeta, DeviceAppendMeta};
use super::page_table::PageCopy;
use super::pool_config::{KvLayout, KvPoolConfig, PoolSize, RowStrides};
pub use super::rows::{Rows, RowsMut};
use super::storage::{host_rows_out, page_of, DevicePages, HostPages, PageStorage, StoreRows};
use super::{AppendTarget, BatchPages};
use crate::checked;
use crate::dtype::{Float16, KvElem};
use crate::error::{Error, Result};
use crate::fp8::KvScales;
use crate::ops::kv_copy::{self, upload_parts, CopyKernels, RowsAddr};
use crate::ops::PagedKvSpans;
use crate::runtime::{DeviceBuffer, DeviceSpan, Gpu};
use ferrinfer_kernels::math::layout::PageStrides;

mod fp8;
mod half;

const OP: &str = "kv_pool";

/// A pool of K and V pages holding elements `S`, appended rows of `T` (f16/bf16): `S = T`, or
/// fp8 codes ([`Fp8`]).
pub struct KvPool<T, S = T> {
    cfg: KvPoolConfig,
    storage: Box<dyn PageStorage<S>>,
    /// The row (and query) type; `fn() -> T` keeps the pool `Send + Sync` whatever `T` is.
    _rows: PhantomData<fn() -> T>,
}

impl<T: Float16, S: KvElem> KvPool<T, S> {
    /// A pool on the GPU. `cfg.num_pages` is ignored in favour of `size`.
    pub fn new_gpu(gpu: &Gpu, mut cfg: KvPoolConfig, size: PoolSize) -> Result<Self> {
        let (free, _total) = gpu.context().mem_get_info()?;
        cfg.num_pages = size.pages(page_bytes::<S>(&cfg), Some(free))?;
        cfg.validate()?;
        let n = cfg.pool_elems()?;
        let kernels = CopyKernels::resolve(gpu, T::DTYPE, S::KV_DTYPE)?;
        Ok(Self {
            cfg,
            storage: Box::new(DevicePages {
                gpu: gpu.clone(),
                k: gpu.alloc::<S>(n)?,
                v: gpu.alloc::<S>(n)?,
                kernels,
                meta: None,
                staging: Vec::new(),
                pinned: Box::new(Mutex::new(None)),
            }),
            _rows: PhantomData,
        })
    }

    /// A pool in host memory for the CPU backend. `cfg.num_pages` is ignored in favour of `size`.
    pub fn new_cpu(mut cfg: KvPoolConfig, size: PoolSize) -> Result<Self> {
        cfg.num_pages = size.pages(page_bytes::<S>(&cfg), None)?;
        cfg.validate()?;
        let n = cfg.pool_elems()?;
        Ok(Self {
            cfg,
            storage: Box::new(HostPages {
                k: checked::filled(OP, "K pool", n, S::default())?,
                v: checked::filled(OP, "V pool", n, S::default())?,
            }),
            _rows: PhantomData,
        })
    }

    /// Fills the whole pool by repeating `pattern_k` / `pattern_v` (benchmarks and demos that
    /// need non-zero KV without uploading gigabytes from the host).
    pub fn fill_tiled(&mut self, pattern_k: &[S], pattern_v: &[S]) -> Result<()> {
        if pattern_k.is_empty() || pattern_k.len() != pattern_v.len() {
            return Err(Error::invalid(
                OP,
                "fill pattern",
                "k and v patterns must be non-empty and of equal length",
            ));
        }
        self.storage.fill_tiled(pattern_k, pattern_v)
    }

    /// The pool's geometry.
    pub fn config(&self) -> &KvPoolConfig {
        &self.cfg
    }

    /// The GPU holding the pool, if it is a device pool.
    pub fn gpu(&self) -> Option<&Gpu> {
        self.storage.device().map(|d| &d.gpu)
    }

    /// Device K and V pools (for attention kernels), if this is a device pool.
    pub fn device_buffers(&self) -> Option<(&DeviceBuffer<S>, &DeviceBuffer<S>)> {
        self.storage.device().map(|d| (&d.k, &d.v))
    }

    /// What a paged attention run reads, checked: the pool has the page size its plan was made
    /// for and at least its pages (`planned`: page size and page count,
    /// [`crate::validate::planned_pages`]), `heads`' KV heads, and lives in `gpu`'s context. Returns the K and V pools and the kernels' page strides.
    pub(crate) fn attention_view(
        &self,
        op: &'static str,
        gpu: &Gpu,
        heads: &crate::heads::HeadConfig,
        planned: (usize, usize),
    ) -> Result<(&DeviceBuffer<S>, &DeviceBuffer<S>, PageStrides)> {
        let c = &self.cfg;
        crate::validate::planned_pages(op, planned, (c.page_size, c.num_pages))?;
        crate::validate::pool_heads(op, c, heads)?;
        let (k, v) = self
            .device_buffers()
            .ok_or_else(|| Error::invalid(op, "pool", "a GPU pool is required"))?;
        gpu.check_buffer(op, k)?;
        Ok((k, v, c.strides()))
    }

    /// This GPU pool's pages as a caller-cache view, for the span forms of the attention ops
    /// ([`crate::ops::BatchDecode::run_spans`], [`crate::ops::BatchPrefill::run_paged_spans`])
    /// when q and out live in another library's device memory. The spans borrow the pool's
    /// buffers: they stay valid while the pool lives. A CPU pool has none (`InvalidArgument`).
    pub fn device_spans(&self) -> Result<PagedKvSpans<S>> {
        let (k, v) = self
            .device_buffers()
            .ok_or_else(|| Error::invalid(OP, "pool", "a CPU pool has no device spans"))?;
        let st = self.cfg.strides();
        let strides = [
            st.stride_page as usize,
            st.stride_n as usize,
            st.stride_h as usize,
        ];
        Ok(PagedKvSpans {
            k: k.span(),
            v: v.span(),
            num_pages: self.cfg.num_pages,
            page_size: self.cfg.page_size,
            num_kv_heads: self.cfg.num_kv_heads,
            head_dim: self.cfg.head_dim,
            k_strides: strides,
            v_strides: strides,
        })
    }

    /// Host K and V pools, if this is a CPU pool.
    pub fn host_buffers(&self) -> Option<(&[S], &[S])> {
        self.storage.host().map(|h| (&h.k[..], &h.v[..]))
    }

    /// Validates CSR page tables against this pool: monotone `kv_indptr` from 0, matching
    /// lengths, page ids in range, last-page lengths in `[1, page_size]` for non-empty entries.
    pub fn validate_pages(&self, pages: &BatchPages) -> Result<()> {
        pages.validate(OP, self.cfg.page_size, Some(self.cfg.num_pages))
    }

    /// Checks that `rows` hold `n` rows with strides `s` where this pool can read them.
    pub(crate) fn check_rows<R: cudarc::driver::DeviceRepr>(
        &self,
        what: &'static str,
        rows: &Rows<'_, R>,
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
        self.check_location(what, rows)
    }

    /// `Ok` when `rows` live where the pages live (and, on a device, in its context).
    fn check_location<R>(&self, what: &'static str, rows: &Rows<'_, R>) -> Result<()> {
        match (self.storage.device(), rows) {
            (Some(d), Rows::Device(b)) => d.gpu.check_buffer(OP, b),
            (Some(d), Rows::Span(s)) => d.gpu.check_span(OP, s),
            (None, Rows::Host(_)) => Ok(()),
            _ => Err(Error::invalid(
                OP,
                what,
                "rows must live where the pool lives (device rows for a GPU pool, host rows for \
                 a CPU pool)",
            )),
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
        meta.validate(OP, self.cfg.page_size, self.cfg.num_pages)
    }

    fn upload_meta(&mut self, parts: &[&[i32]; 4]) -> Result<[u64; 4]> {
        let Some(d) = self.storage.device_mut() else {
            return Err(Error::invalid(OP, "storage", "not a device pool"));
        };
        upload_parts(&d.gpu, &d.pinned, parts, &mut d.staging, &mut d.meta)
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
    /// the GPU (see `DevicePages::pinned`).
    pub(crate) fn upload_append_meta_into(
        &self,
        meta: &AppendMeta<'_>,
        buf: &mut Option<DeviceBuffer<i32>>,
    ) -> Result<DeviceAppendMeta> {
        let Some(d) = self.storage.device() else {
            return Err(Error::invalid(
                OP,
                "storage",
                "device metadata needs a GPU pool",
            ));
        };
        self.validate_meta(meta)?;
        let addrs = upload_parts(
            &d.gpu,
            &d.pinned,
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
            ctx_id: d.gpu.ctx_id(),
        })
    }

    /// [`KvPool::append_uploaded`] with `scales` (`KvScales::ONE` for 16-bit pages) and rows as
    /// spans: the one path of owned buffers, caller rows ([`Rows::Span`]) and fp8 pools.
    pub(crate) fn append_uploaded_scaled(
        &mut self,
        meta: &DeviceAppendMeta,
        k: DeviceSpan<T>,
        ks: RowStrides,
        v: DeviceSpan<T>,
        vs: RowStrides,
        scales: KvScales,
    ) -> Result<()> {
        self.check_meta(meta)?;
        self.check_rows("k rows", &Rows::Span(k), ks, meta.nnz)?;
        self.check_rows("v rows", &Rows::Span(v), vs, meta.nnz)?;
        if meta.nnz == 0 {
            return Ok(());
        }
        self.launch_append(meta.addrs, meta.nnz, k, ks, v, vs, scales)
    }

    /// `Err` unless `meta` was uploaded for this pool's geometry and device.
    fn check_meta(&self, meta: &DeviceAppendMeta) -> Result<()> {
        let same_ctx = self
            .storage
            .device()
            .is_some_and(|d| d.gpu.ctx_id() == meta.ctx_id);
        if meta.cfg != self.cfg || !same_ctx {
            return Err(Error::invalid(
                OP,
                "metadata",
                "uploaded for a pool of another geometry or device",
            ));
        }
        Ok(())
    }

    /// Where the rows of uploaded metadata `meta` go in this GPU pool, for a kernel that
    /// writes them itself ([`AppendTarget`]); checked as [`KvPool::append_uploaded_scaled`]
    /// checks it.
    pub(crate) fn append_target(&mut self, meta: &DeviceAppendMeta) -> Result<AppendTarget<'_, S>> {
        self.check_meta(meta)?;
        let Some(d) = self.storage.device() else {
            return unreachable_storage();
        };
        Ok(AppendTarget {
            k_pool: d.k.addr(),
            v_pool: d.v.addr(),
            meta: meta.addrs,
            rows: meta.nnz,
            cfg: self.cfg,
            ctx_id: meta.ctx_id,
            _cache: PhantomData,
        })
    }

    /// Launches the append of `nnz` validated rows (metadata at device addresses `a`).
    #[allow(clippy::too_many_arguments)]
    fn launch_append(
        &self,
        a: [u64; 4],
        nnz: usize,
        kb: DeviceSpan<T>,
        ks: RowStrides,
        vb: DeviceSpan<T>,
        vs: RowStrides,
        scales: KvScales,
    ) -> Result<()> {
        let Some(d) = self.storage.device() else {
            return unreachable_storage();
        };
        let rows = RowsAddr {
            k: kb.addr(),
            ks,
            v: vb.addr(),
            vs,
        };
        // SAFETY: callers validated every batch index, position and page id against the pool
        // and the page tables, the row extents and 16-byte strides.
        unsafe { kv_copy::launch_append(d, &self.cfg, a, nnz, rows, scales) }
    }

    /// [`KvPool::append`], storing rows with `scales` ([`StoreRows`]).
    fn append_scaled(
        &mut self,
        meta: &AppendMeta<'_>,
        k: Rows<'_, T>,
        ks: RowStrides,
        v: Rows<'_, T>,
        vs: RowStrides,
        scales: KvScales,
    ) -> Result<()>
    where
        S: StoreRows<T>,
    {
        self.validate_append(meta, &k, ks, &v, vs)?;
        let nnz = meta.batch_indices.len();
        if nnz == 0 {
            return Ok(());
        }
        let cfg = self.cfg;
        match (self.storage.device().is_some(), k, v) {
            (true, k, v) => {
                // Device rows (validated above: a GPU pool takes device rows only).
                let (Some(kb), Some(vb)) = (k.device_span(), v.device_span()) else {
                    return unreachable_storage();
                };
                let a = self.upload_meta(&[
                    meta.batch_indices,
                    meta.positions,
                    &meta.pages.kv_indptr,
                    &meta.pages.kv_indices,
                ])?;
                self.launch_append(a, nnz, kb, ks, vb, vs, scales)
            }
            (false, Rows::Host(kh), Rows::Host(vh)) => {
                let Some(HostPages { k: kp, v: vp }) = self.storage.host_mut() else {
                    return unreachable_storage();
                };
                for (n, (&b, &pos)) in meta.batch_indices.iter().zip(meta.positions).enumerate() {
                    let (page, entry) =
                        page_of(meta.pages, b as usize, pos as usize, cfg.page_size)?;
                    for h in 0..cfg.num_kv_heads {
                        let dst = cfg.offset(page, entry, h);
                        let sk = n * ks.stride_n + h * ks.stride_h;
                        let sv = n * vs.stride_n + h * vs.stride_h;
                        let d = cfg.head_dim;
                        S::store(&kh[sk..sk + d], &mut kp[dst..dst + d], scales.k);
                        S::store(&vh[sv..sv + d], &mut vp[dst..dst + d], scales.v);
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

    /// Checks that this pool holds the KV heads and head dim of `heads` (for op `op`).
    pub fn check_heads(&self, op: &'static str, heads: &crate::heads::HeadConfig) -> Result<()> {
        crate::validate::pool_heads(op, &self.cfg, heads)
    }

    /// The host pool's K and V arrays (the CPU decode reads them in place); `Err` for a device
    /// pool.
    pub(crate) fn host_kv(&self) -> Result<(&[S], &[S])> {
        match self.storage.host() {
            Some(HostPages { k, v }) => Ok((k, v)),
            None => Err(Error::invalid(
                OP,
                "pool",
                "a host-memory (CPU) pool is required",
            )),
        }
    }

    /// Copies request `b`'s K and V rows, in token order, into caller slices of exactly
    /// `kv_len · heads · head_dim` elements each, contiguous `[kv_len, heads, head_dim]` (the
    /// CPU prefill gathers a batch into one buffer, one copy per row). Host pools only;
    /// `pages` must be validated.
    pub(crate) fn gather_host_into(
        &self,
        pages: &BatchPages,
        b: usize,
        k: &mut [S],
        v: &mut [S],
    ) -> Result<()> {
        let (kp, vp) = self.host_kv()?;
        let c = self.cfg;
        let len = pages.kv_len(b, c.page_size)?;
        let s = RowStrides::contiguous(c.num_kv_heads, c.head_dim);
        host_rows_out(&c, kp, vp, pages, b, len, k, s, v, s)
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
                self.storage.copy_within(s + off, d + off, len)?;
            }
        }
        Ok(())
    }
}

/// Bytes of one page of K plus one of V for elements `S` (what pool sizes in bytes count).
fn page_bytes<S>(cfg: &KvPoolConfig) -> usize {
    cfg.page_elems()
        .saturating_mul(2 * std::mem::size_of::<S>())
        .max(1)
}

fn unreachable_storage<T>() -> Result<T> {
    Err(Error::invalid(OP, "storage", "rows/pool kind mismatch"))
}
