//! A paged KV cache for candle models: ferrinfer's [`kv::PagedKvCache`] (page tables, a page
//! pool per layer, copy-on-write forks) typed by a candle dtype, taking and returning candle
//! tensors.
//!
//! The pages live in ferrinfer's pool (host memory on the CPU), not in candle tensors:
//! ferrinfer's paged ops read a [`kv::KvPool`], which owns its storage, so pages held by candle
//! would have to be copied into a pool on every call. Appends copy the new rows out of the
//! candle tensors once, as a cache append does anyway.
use candle_core::{DType, Device, Result, Storage, Tensor};
use ferrinfer::kv::{self, AppendStep, KvLayout, KvPoolConfig, PoolSize, RowStrides, Rows, SeqId};
use ferrinfer::{AttentionOptions, HeadConfig};
use half::{bf16, f16};

use crate::error::{invalid, wrap};
use crate::paged::PagedAttention;
use crate::tensors::{check_device, dims, elems, indptr, same_dtype_and_device, Half};

/// The geometry of a [`PagedKvCache`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Pages in each layer's pool (shared by all sequences).
    pub num_pages: usize,
    /// Tokens per page.
    pub page_size: usize,
    /// KV heads (`Hkv`).
    pub num_kv_heads: usize,
    /// Elements per head (`D`): 64, 128 or 256, the head dims ferrinfer's page pool serves.
    pub head_dim: usize,
    /// Layers, each with its own pool and the same page tables.
    pub num_layers: usize,
}

/// ferrinfer's cache in one of the two element types it computes on.
enum Pages {
    F16(kv::PagedKvCache<f16>),
    Bf16(kv::PagedKvCache<bf16>),
}

/// Runs `$body` with `$c` bound to the typed cache, whichever dtype it holds.
macro_rules! with_cache {
    ($pages:expr, $c:ident => $body:expr) => {
        match $pages {
            Pages::F16($c) => $body,
            Pages::Bf16($c) => $body,
        }
    };
}

/// A paged KV cache whose K/V rows come from, and whose attention outputs are, candle tensors.
///
/// Per step: [`PagedKvCache::begin_append`] reserves the new tokens of each sequence (all
/// layers), [`PagedKvCache::append_layer`] writes one layer's new K/V rows, then
/// [`PagedKvCache::decode`] or [`PagedKvCache::prefill`] attends over that layer. A one-layer
/// cache can use [`PagedKvCache::append`] for both steps.
pub struct PagedKvCache {
    pages: Pages,
    dtype: DType,
    device: Device,
}

impl std::fmt::Debug for PagedKvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PagedKvCache")
            .field("dtype", &self.dtype)
            .field("device", &self.device.location())
            .field("pool", &self.pool_config())
            .field("num_layers", &self.num_layers())
            .finish()
    }
}

impl PagedKvCache {
    /// An empty cache of `dtype` (f16 or bf16) on `device` (the CPU in this build).
    ///
    /// # Errors
    /// Another dtype or device, or a geometry ferrinfer's pool refuses (zero sizes, a
    /// `head_dim` other than 64, 128 or 256, sizes that overflow).
    pub fn new(cfg: CacheConfig, dtype: DType, device: &Device) -> Result<Self> {
        const OP: &str = "PagedKvCache::new";
        check_device(OP, "the cache", device)?;
        let pool = KvPoolConfig {
            num_pages: cfg.num_pages,
            page_size: cfg.page_size,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            layout: KvLayout::Nhd,
        };
        let (size, layers) = (PoolSize::Pages(cfg.num_pages), cfg.num_layers);
        let pages = match dtype {
            DType::F16 => Pages::F16(new_pages(device, pool, size, layers)?),
            DType::BF16 => Pages::Bf16(new_pages(device, pool, size, layers)?),
            d => {
                return Err(invalid(
                    OP,
                    format!("dtype {d:?}: ferrinfer's KV pages are f16 or bf16"),
                ))
            }
        };
        Ok(Self {
            pages,
            dtype,
            device: device.clone(),
        })
    }

    /// The element type of the pages (and of every tensor this cache takes or returns).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device of the pages.
    pub fn device(&self) -> &Device {
        &self.device
    }

    fn pool_config(&self) -> KvPoolConfig {
        with_cache!(&self.pages, c => *c.config())
    }

    /// Layers of the cache.
    pub fn num_layers(&self) -> usize {
        with_cache!(&self.pages, c => c.num_layers())
    }

    /// A new, empty sequence.
    pub fn add_sequence(&mut self) -> SeqId {
        with_cache!(&mut self.pages, c => c.add_sequence())
    }

    /// Frees a sequence's pages (shared pages stay while another sequence holds them).
    pub fn free(&mut self, id: SeqId) -> Result<()> {
        with_cache!(&mut self.pages, c => c.free(id)).map_err(wrap)
    }

    /// A new sequence sharing `parent`'s pages (copied on its first write to a shared page).
    pub fn fork(&mut self, parent: SeqId) -> Result<SeqId> {
        with_cache!(&mut self.pages, c => c.fork(parent)).map_err(wrap)
    }

    /// Tokens cached for `id`.
    pub fn len(&self, id: SeqId) -> Result<usize> {
        with_cache!(&self.pages, c => c.len(id)).map_err(wrap)
    }

    /// Whether the cache holds no sequence.
    pub fn is_empty(&self) -> bool {
        with_cache!(&self.pages, c => c.is_empty())
    }

    /// Reserves `n` new tokens at the end of each `(sequence, n)` in every layer (all or
    /// nothing). Then call [`PagedKvCache::append_layer`] once per layer.
    pub fn begin_append(&mut self, reqs: &[(SeqId, usize)]) -> Result<AppendStep> {
        with_cache!(&mut self.pages, c => c.begin_append(reqs)).map_err(wrap)
    }

    /// Writes one layer's new K/V rows for `step`: `k, v [Σ n, Hkv, D]`, the rows of the
    /// step's requests in order.
    ///
    /// # Errors
    /// Shapes, dtype or device not matching the cache, an unknown layer, a step of another
    /// cache or from before a change to the page tables.
    pub fn append_layer(
        &mut self,
        layer: usize,
        step: &AppendStep,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<()> {
        const OP: &str = "PagedKvCache::append_layer";
        self.check_rows(OP, k, v, step.rows())?;
        let (k, v) = (k.contiguous()?, v.contiguous()?);
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let s =
            RowStrides::contiguous(self.pool_config().num_kv_heads, self.pool_config().head_dim);
        match (&*ks, &*vs) {
            (Storage::Cpu(ks), Storage::Cpu(vs)) => with_cache!(&mut self.pages, c => {
                let (kr, vr) = (elems(OP, ks, kl)?, elems(OP, vs, vl)?);
                c.append_layer(layer, step, Rows::Host(kr), s, Rows::Host(vr), s)
                    .map_err(wrap)
            }),
            #[cfg(feature = "cuda")]
            (Storage::Cuda(ks), Storage::Cuda(vs)) => with_cache!(&mut self.pages, c => {
                crate::cuda::append(OP, c, layer, step, (ks, kl), (vs, vl), s)
            }),
            _ => Err(invalid(OP, "k and v must be on the cache's device")),
        }
    }

    /// One-layer cache: appends `k, v [Σ n, Hkv, D]` to the end of each `(sequence, n)`.
    /// Shapes are checked before anything is reserved.
    pub fn append(&mut self, reqs: &[(SeqId, usize)], k: &Tensor, v: &Tensor) -> Result<()> {
        const OP: &str = "PagedKvCache::append";
        let rows = reqs
            .iter()
            .try_fold(0usize, |a, r| a.checked_add(r.1))
            .ok_or_else(|| invalid(OP, "total rows overflow"))?;
        self.check_rows(OP, k, v, rows)?;
        if self.num_layers() != 1 {
            return Err(invalid(
                OP,
                format!(
                    "the cache has {} layers: use begin_append + append_layer",
                    self.num_layers()
                ),
            ));
        }
        let step = self.begin_append(reqs)?;
        self.append_layer(0, &step, k, v)
    }

    /// Decode attention over layer `layer`: `q [batch, Hq, D]`, row `b` the next token of
    /// `seqs[b]` (already appended, so it sees itself). Returns `[batch, Hq, D]`.
    pub fn decode(
        &self,
        layer: usize,
        q: &Tensor,
        seqs: &[SeqId],
        opts: &AttentionOptions,
    ) -> Result<Tensor> {
        const OP: &str = "PagedKvCache::decode";
        let [batch, _, _] = dims(OP, "q", "[batch, Hq, D]", q)?;
        if batch != seqs.len() {
            return Err(invalid(
                OP,
                format!("q has {batch} rows for {} sequences", seqs.len()),
            ));
        }
        self.attend(OP, layer, q, seqs, None, opts)
    }

    /// Prefill attention over layer `layer`: `q [Σ qo_len, Hq, D]`, the next `qo_len` rows the
    /// last `qo_len` (already appended) tokens of each `(sequence, qo_len)` of `reqs`, with
    /// `opts.causal` masking as usual. Returns `[Σ qo_len, Hq, D]`.
    pub fn prefill(
        &self,
        layer: usize,
        q: &Tensor,
        reqs: &[(SeqId, usize)],
        opts: &AttentionOptions,
    ) -> Result<Tensor> {
        const OP: &str = "PagedKvCache::prefill";
        let [rows, _, _] = dims(OP, "q", "[Σ qo_len, Hq, D]", q)?;
        let qo_indptr = indptr(OP, "qo lengths", reqs.iter().map(|r| r.1))?;
        if qo_indptr[reqs.len()] as usize != rows {
            return Err(invalid(
                OP,
                format!(
                    "qo lengths sum to {}, q has {rows} rows",
                    qo_indptr[reqs.len()]
                ),
            ));
        }
        let seqs: Vec<SeqId> = reqs.iter().map(|r| r.0).collect();
        self.attend(OP, layer, q, &seqs, Some(qo_indptr), opts)
    }

    /// The shared half of decode and prefill: checks `q` against the cache, then runs the op.
    fn attend(
        &self,
        op: &'static str,
        layer: usize,
        q: &Tensor,
        seqs: &[SeqId],
        qo_indptr: Option<Vec<i32>>,
        opts: &AttentionOptions,
    ) -> Result<Tensor> {
        let [_, hq, d] = dims(op, "q", "[rows, Hq, D]", q)?;
        self.check_tensor(op, "q", q)?;
        let cfg = self.pool_config();
        if d != cfg.head_dim {
            return Err(invalid(
                op,
                format!("q head_dim {d}, cache head_dim {}", cfg.head_dim),
            ));
        }
        let heads = HeadConfig::new(hq, cfg.num_kv_heads, d).map_err(wrap)?;
        opts.validate(op).map_err(wrap)?;
        let q = q.contiguous()?;
        with_cache!(&self.pages, c => {
            let attention = PagedAttention {
                name: op,
                heads,
                opts: *opts,
                pool: c.pool(layer).map_err(wrap)?,
                pages: c.batch_pages(seqs).map_err(wrap)?,
                qo_indptr,
            };
            q.apply_op1_no_bwd(&attention)
        })
    }

    /// Checks `k, v` are `[rows, Hkv, D]` tensors of the cache's dtype and device.
    fn check_rows(&self, op: &str, k: &Tensor, v: &Tensor, rows: usize) -> Result<()> {
        let cfg = self.pool_config();
        let want = [rows, cfg.num_kv_heads, cfg.head_dim];
        for (name, t) in [("k", k), ("v", v)] {
            self.check_tensor(op, name, t)?;
            if t.dims() != want {
                return Err(invalid(
                    op,
                    format!(
                        "{name} has shape {:?}, expected {want:?} ([rows, Hkv, D])",
                        t.dims()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks that `t` has the cache's dtype and lives on its device.
    fn check_tensor(&self, op: &str, name: &str, t: &Tensor) -> Result<()> {
        same_dtype_and_device(op, (name, t), &[])?;
        if !t.device().same_device(&self.device) {
            return Err(invalid(
                op,
                format!(
                    "{name} is on {:?}, the cache on {:?}",
                    t.device().location(),
                    self.device.location()
                ),
            ));
        }
        if t.dtype() != self.dtype {
            return Err(invalid(
                op,
                format!(
                    "{name} has dtype {:?}, the cache holds {:?}",
                    t.dtype(),
                    self.dtype
                ),
            ));
        }
        Ok(())
    }
}

/// ferrinfer's cache of `T` on `device`: host pools on the CPU, device pools on CUDA (on
/// candle's context and stream).
fn new_pages<T: Half>(
    device: &Device,
    pool: KvPoolConfig,
    size: PoolSize,
    layers: usize,
) -> Result<kv::PagedKvCache<T>> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            kv::PagedKvCache::new_gpu_layers(&crate::cuda::gpu(dev)?, pool, size, layers)
                .map_err(wrap)
        }
        _ => kv::PagedKvCache::new_cpu_layers(pool, size, layers).map_err(wrap),
    }
}
