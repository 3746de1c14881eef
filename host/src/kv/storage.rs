//! Where a pool's pages live: the [`PageStorage`] trait and its two implementations, host
//! memory ([`HostPages`], for the CPU backend) and device memory ([`DevicePages`], with the
//! append/gather kernels resolved for it and the pinned staging of their metadata), and how
//! appended rows become stored elements on the host ([`StoreRows`]: a copy, or fp8
//! quantisation).
//!
//! The pool ([`super::KvPool`]) validates every request against its geometry and page tables,
//! then hands the bytes to its storage; the device copies themselves are launched by
//! [`crate::ops::kv_copy`].
use std::sync::Mutex;

use super::{BatchPages, KvPoolConfig, RowStrides};
use crate::dtype::{Float16, KvElem};
use crate::error::{Error, Result};
use crate::fp8::{Fp8, Fp8Format};
use crate::ops::kv_copy::CopyKernels;
use crate::runtime::{DeviceBuffer, Gpu, PinnedStaging};

const OP: &str = "kv_pool";

/// K and V pages of one pool (same length each), wherever they live.
pub(crate) trait PageStorage<T>: Send + Sync {
    /// Fills K and V by repeating `pk` / `pv` (non-empty, of equal length).
    fn fill_tiled(&mut self, pk: &[T], pv: &[T]) -> Result<()>;

    /// Copies `len` elements from offset `src` to offset `dst`, in K and in V.
    fn copy_within(&mut self, src: usize, dst: usize, len: usize) -> Result<()>;

    /// The device pages, if the pool is on a GPU.
    fn device(&self) -> Option<&DevicePages<T>> {
        None
    }

    /// The device pages, mutably.
    fn device_mut(&mut self) -> Option<&mut DevicePages<T>> {
        None
    }

    /// The host pages, if the pool is in host memory.
    fn host(&self) -> Option<&HostPages<T>> {
        None
    }

    /// The host pages, mutably.
    fn host_mut(&mut self) -> Option<&mut HostPages<T>> {
        None
    }
}

/// Pages in host memory (the CPU backend).
pub(crate) struct HostPages<T> {
    pub k: Vec<T>,
    pub v: Vec<T>,
}

impl<T: Copy + Send + Sync> PageStorage<T> for HostPages<T> {
    fn fill_tiled(&mut self, pk: &[T], pv: &[T]) -> Result<()> {
        for (c, p) in self.k.chunks_mut(pk.len()).zip(std::iter::repeat(pk)) {
            c.copy_from_slice(&p[..c.len()]);
        }
        for (c, p) in self.v.chunks_mut(pv.len()).zip(std::iter::repeat(pv)) {
            c.copy_from_slice(&p[..c.len()]);
        }
        Ok(())
    }

    fn copy_within(&mut self, src: usize, dst: usize, len: usize) -> Result<()> {
        self.k.copy_within(src..src + len, dst);
        self.v.copy_within(src..src + len, dst);
        Ok(())
    }

    fn host(&self) -> Option<&HostPages<T>> {
        Some(self)
    }

    fn host_mut(&mut self) -> Option<&mut HostPages<T>> {
        Some(self)
    }
}

/// Pages in device memory, with the copy kernels resolved for them.
pub(crate) struct DevicePages<T> {
    pub gpu: Gpu,
    pub k: DeviceBuffer<T>,
    pub v: DeviceBuffer<T>,
    /// The append/gather kernels (and the append variant in use).
    pub kernels: CopyKernels,
    /// Device copy of the last append/gather metadata (grown on demand).
    pub meta: Option<DeviceBuffer<i32>>,
    /// Host staging of that metadata.
    pub staging: Vec<i32>,
    /// Pinned staging for metadata uploads: the copies are asynchronous, so a serving loop's
    /// host work for step n+1 overlaps the GPU's work for step n (a pageable upload would
    /// wait for the stream to drain). A mutex because `upload_append_meta` takes `&self`.
    pub pinned: Box<Mutex<Option<PinnedStaging>>>,
}

impl<T> PageStorage<T> for DevicePages<T>
where
    T: cudarc::driver::DeviceRepr + Copy + Send + Sync,
{
    fn fill_tiled(&mut self, pattern_k: &[T], pattern_v: &[T]) -> Result<()> {
        let gpu = &self.gpu;
        let (pk, pv) = (gpu.upload(pattern_k)?, gpu.upload(pattern_v)?);
        let n = self.k.len();
        let mut off = 0;
        while off < n {
            let len = pattern_k.len().min(n - off);
            if len == pattern_k.len() {
                gpu.copy_into(&pk, &mut self.k, off)?;
                gpu.copy_into(&pv, &mut self.v, off)?;
            } else {
                gpu.write_range(&mut self.k, off, &pattern_k[..len])?;
                gpu.write_range(&mut self.v, off, &pattern_v[..len])?;
            }
            off += len;
        }
        gpu.synchronize()
    }

    fn copy_within(&mut self, src: usize, dst: usize, len: usize) -> Result<()> {
        self.gpu.copy_within(&mut self.k, src, dst, len)?;
        self.gpu.copy_within(&mut self.v, src, dst, len)
    }

    fn device(&self) -> Option<&DevicePages<T>> {
        Some(self)
    }

    fn device_mut(&mut self) -> Option<&mut DevicePages<T>> {
        Some(self)
    }
}

/// Copies tokens `[0, len)` of entry `b` from host pools into strided rows (bounds validated by
/// the callers; a page slot outside the tables is still an error, never an index panic).
#[allow(clippy::too_many_arguments)]
pub(crate) fn host_rows_out<T: Copy>(
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
pub(crate) fn page_of(
    pages: &BatchPages,
    b: usize,
    pos: usize,
    page_size: usize,
) -> Result<(usize, usize)> {
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

/// How appended rows of `T` become stored elements: a copy, or fp8 quantisation with the
/// tensor's scale (the same function the device append runs).
pub(crate) trait StoreRows<T>: KvElem {
    /// Writes `src` into `dst` (same length).
    fn store(src: &[T], dst: &mut [Self], scale: f32);
}

impl<T: Float16> StoreRows<T> for T {
    fn store(src: &[T], dst: &mut [T], _scale: f32) {
        dst.copy_from_slice(src);
    }
}

impl<T: Float16, F: Fp8Format> StoreRows<T> for Fp8<F> {
    fn store(src: &[T], dst: &mut [Self], scale: f32) {
        for (d, x) in dst.iter_mut().zip(src) {
            *d = Fp8::quantize(x.to_f32(), scale);
        }
    }
}
