//! KV append and gather on the GPU: copies between contiguous (strided) K/V rows and a device
//! pool's pages over FlashInfer-style metadata (batch index and position per row, CSR page
//! tables). The pool ([`crate::kv::KvPool`]) validates every input first; this module resolves
//! the kernels (once per pool, and again when the append variant changes), uploads the
//! metadata through pinned staging and launches.
//!
//! Device side: `kernels-gpu/src/append.rs` (`append_kv_b16*`, `gather_kv_b16`, and
//! `append_fp8_*`, which quantises 16-bit rows into fp8 pools with the scales).
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use ferrinfer_kernels::abi::{AppendFp8Params, AppendParams};
use ferrinfer_kernels::kernel_key::{CopyKernel, KernelKey};

use crate::dtype::{DType, KvDtype};
use crate::error::{Error, Result};
use crate::fp8::{Fp8Kind, KvScales};
use crate::kv::storage::DevicePages;
use crate::kv::{KvPoolConfig, RowStrides};
use crate::runtime::{DeviceBuffer, Gpu, Kernel, LaunchDims, PinnedStaging};

mod spans;

pub use spans::{append_spans, AppendMetaSpans, RowSpans};

const OP: &str = "kv_pool";

/// The copy kernels of one device pool, resolved when the pool is made.
pub(crate) struct CopyKernels {
    append: Kernel,
    /// Dynamic shared memory per thread of the append variant (`cp.async` variants).
    append_smem_per_thread: u32,
    /// The gather kernel (16-bit pools only: an fp8 pool is read by attention, not gathered).
    gather: Option<Kernel>,
    /// Whether `append` quantises into fp8 (takes [`AppendFp8Params`]).
    quantizes: bool,
    /// Resident append blocks per wave (occupancy query, cached; 0 = not queried yet). Atomic
    /// so that a pool can be shared across threads.
    resident_blocks: AtomicU32,
}

/// Block `(head_dim/8, heads ≤ 256 threads)` of the copy kernels for `cfg`.
fn block(cfg: &KvPoolConfig) -> (u32, u32) {
    let lanes = (cfg.head_dim / 8) as u32;
    let hy = (cfg.num_kv_heads as u32).min((256 / lanes).max(1));
    (lanes, hy)
}

impl CopyKernels {
    /// The default append kernel (one row per thread per iteration) and the gather kernel of
    /// the 16-bit pools.
    pub(crate) fn resolve_b16(gpu: &Gpu) -> Result<Self> {
        Ok(Self {
            append: gpu.kernel(KernelKey::Copy(CopyKernel::Append), 0)?,
            append_smem_per_thread: 0,
            gather: Some(gpu.kernel(KernelKey::Copy(CopyKernel::Gather), 0)?),
            quantizes: false,
            resident_blocks: AtomicU32::new(0),
        })
    }

    /// The copy kernels of a pool storing `store` elements appended rows of `rows`: the 16-bit
    /// copies when they are the same type, the quantising append for an fp8 pool.
    pub(crate) fn resolve(gpu: &Gpu, rows: DType, store: KvDtype) -> Result<Self> {
        let fp8 = match store {
            s if s == KvDtype::from(rows) => return Self::resolve_b16(gpu),
            KvDtype::E4m3 => Fp8Kind::E4m3,
            KvDtype::E5m2 => Fp8Kind::E5m2,
            _ => {
                return Err(Error::unsupported(
                    OP,
                    "pool element type",
                    format!("{rows} rows into a {store} pool"),
                ))
            }
        };
        let key = KernelKey::Copy(CopyKernel::AppendFp8(rows.key(), fp8));
        Ok(Self {
            append: gpu.kernel(key, 0)?,
            append_smem_per_thread: 0,
            gather: None,
            quantizes: true,
            resident_blocks: AtomicU32::new(0),
        })
    }

    /// Selects append kernel `kernel` with `per_thread` bytes of dynamic shared memory per
    /// thread (see [`append_variant`]).
    pub(crate) fn set_append(
        &mut self,
        gpu: &Gpu,
        cfg: &KvPoolConfig,
        (kernel, per_thread): (CopyKernel, u32),
    ) -> Result<()> {
        let (lanes, hy) = block(cfg);
        self.append = gpu.kernel(KernelKey::Copy(kernel), per_thread * lanes * hy)?;
        self.append_smem_per_thread = per_thread;
        self.resident_blocks.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Block `(head_dim/8, heads ≤ 256 threads)`; grid = one block per row up to one wave of
    /// resident blocks of the append kernel (occupancy query, cached). Small appends (a decode
    /// step) thus get one row per block; large ones grid-stride.
    fn dims(
        &self,
        gpu: &Gpu,
        cfg: &KvPoolConfig,
        rows: usize,
        smem_per_thread: u32,
    ) -> Result<LaunchDims> {
        let (lanes, hy) = block(cfg);
        let smem = smem_per_thread * lanes * hy;
        let resident = match self.resident_blocks.load(Ordering::Relaxed) {
            r if r > 0 => r,
            _ => {
                let per_sm = self
                    .append
                    .function()
                    .occupancy_max_active_blocks_per_multiprocessor(
                        lanes * hy,
                        smem as usize,
                        None,
                    )?
                    .max(1);
                let r = per_sm * gpu.info().sm_count;
                self.resident_blocks.store(r, Ordering::Relaxed);
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
}

/// The append kernel for `rows` rows per thread per iteration (1, 2, 4 or 8; 102 and 104: the
/// `cp.async` double-buffered variants with 2 and 4 rows) and, for 1 row, streaming (`.cs`)
/// stores, with its dynamic shared memory per thread.
pub(crate) fn append_variant(rows: usize, streaming_stores: bool) -> Result<(CopyKernel, u32)> {
    let kernel = match (rows, streaming_stores) {
        (1, false) => CopyKernel::Append,
        (1, true) => CopyKernel::AppendStreaming,
        (2, false) => CopyKernel::AppendRows2,
        (4, false) => CopyKernel::AppendRows4,
        (8, false) => CopyKernel::AppendRows8,
        (102, false) => CopyKernel::AppendAsync2,
        (104, false) => CopyKernel::AppendAsync4,
        _ => {
            return Err(Error::unsupported(
                OP,
                "append variant",
                format!(
                    "{rows} rows, streaming {streaming_stores} (supported: 1/2/4/8 rows; \
                     streaming with 1 row)"
                ),
            ))
        }
    };
    let per_thread = match rows {
        102 => 2 * 2 * 32,
        104 => 2 * 4 * 32,
        _ => 0,
    };
    Ok((kernel, per_thread))
}

/// Contiguous rows of one copy: K and V base addresses and strides.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowsAddr {
    pub k: u64,
    pub ks: RowStrides,
    pub v: u64,
    pub vs: RowStrides,
}

fn params<T: cudarc::driver::DeviceRepr>(
    pool: &DevicePages<T>,
    cfg: &KvPoolConfig,
    rows: RowsAddr,
    meta: [u64; 4],
    nnz: usize,
    seq: u32,
) -> AppendParams {
    AppendParams {
        k_rows: rows.k,
        v_rows: rows.v,
        k_pool: pool.k.addr(),
        v_pool: pool.v.addr(),
        batch_indices: meta[0],
        positions: meta[1],
        kv_indptr: meta[2],
        kv_indices: meta[3],
        nnz: nnz as u32,
        num_heads: cfg.num_kv_heads as u32,
        k_rows_stride_n: rows.ks.stride_n as u32,
        k_rows_stride_h: rows.ks.stride_h as u32,
        v_rows_stride_n: rows.vs.stride_n as u32,
        v_rows_stride_h: rows.vs.stride_h as u32,
        pool: cfg.strides(),
        seq,
        reserved: 0,
    }
}

/// Launches the append kernel: `nnz` rows to the positions in metadata `meta` (device
/// addresses of batch indices, positions, kv_indptr, kv_indices).
///
/// # Safety
/// Every batch index, position and page id of `meta` was validated against the pool and its
/// page tables; `rows` hold `nnz` rows with 16-byte strides.
pub(crate) unsafe fn launch_append<T: cudarc::driver::DeviceRepr>(
    pool: &DevicePages<T>,
    cfg: &KvPoolConfig,
    meta: [u64; 4],
    nnz: usize,
    rows: RowsAddr,
    scales: KvScales,
) -> Result<()> {
    let k = &pool.kernels;
    let dims = k.dims(&pool.gpu, cfg, nnz, k.append_smem_per_thread)?;
    let p = params(pool, cfg, rows, meta, nnz, 0);
    // SAFETY: per this function's contract (the quantising kernel: the same copy, with the
    // scales the pool validated).
    unsafe {
        if k.quantizes {
            let p = AppendFp8Params {
                base: p,
                k_scale: scales.k,
                v_scale: scales.v,
            };
            pool.gpu.launch_kernel(&k.append, dims, p)
        } else {
            pool.gpu.launch_kernel(&k.append, dims, p)
        }
    }
}

/// Launches the gather kernel: tokens `[0, len)` of batch entry `seq` (page tables at
/// `kv_indptr`/`kv_indices`) to `rows`.
///
/// # Safety
/// The page tables were validated against the pool; `rows` hold `len` rows.
pub(crate) unsafe fn launch_gather<T: cudarc::driver::DeviceRepr>(
    pool: &DevicePages<T>,
    cfg: &KvPoolConfig,
    kv_indptr: u64,
    kv_indices: u64,
    seq: usize,
    len: usize,
    rows: RowsAddr,
) -> Result<()> {
    let k = &pool.kernels;
    let dims = k.dims(&pool.gpu, cfg, len, 0)?;
    let p = params(
        pool,
        cfg,
        rows,
        [0, 0, kv_indptr, kv_indices],
        len,
        seq as u32,
    );
    let Some(gather) = &k.gather else {
        return Err(Error::unsupported(OP, "gather", "from an fp8 pool"));
    };
    // SAFETY: per this function's contract.
    unsafe { pool.gpu.launch_kernel(gather, dims, p) }
}

/// Concatenates the four metadata arrays into `host`, grows `buf` to hold them and uploads them
/// asynchronously through the pool's pinned staging (stream-ordered: nothing waits for the
/// GPU). Returns each array's device address.
pub(crate) fn upload_parts(
    gpu: &Gpu,
    pinned: &Mutex<Option<PinnedStaging>>,
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
