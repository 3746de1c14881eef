//! The CUDA forward of the ops (feature `cuda`): ferrinfer's kernels loaded into candle's CUDA
//! context and launched on the device's own stream, reading and writing candle's device buffers
//! in place (spans over the `CudaSlice`s: no copies, no host synchronisation).
//!
//! Per device the kernel module is loaded once ([`gpu`]); per head/dtype/option set one
//! ferrinfer op and its plan are kept ([`PlanCache`]) and re-planned for every call, so a call
//! after the first allocates nothing but its output. Everything is ordered on candle's stream:
//! the plan's upload, the attention kernel, and candle's own work before and after.
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::cuda_backend::cudarc::driver::{
    result, CudaSlice, DevicePtr, DevicePtrMut, SyncOnDrop,
};
use candle_core::cuda_backend::CudaDType;
use candle_core::{CudaDevice, CudaStorage, Layout, Result};
use ferrinfer::kv::{AppendStep, BatchPages, KvPool, PagedKvCache, RowStrides, Rows};
use ferrinfer::ops::{BatchDecode, BatchDecodePlan, BatchPrefill, BatchPrefillPlan};
use ferrinfer::{AttentionOptions, DeviceSpan, Float16, Gpu, HeadConfig};

use crate::error::{invalid, wrap};
use crate::tensors::Half;

/// ferrinfer's handle for candle's device `dev`, launching on the device's stream. The kernels
/// are loaded into the device's context on first use (milliseconds) and kept for the process;
/// the map keeps that context alive, so its address stays a unique key.
pub(crate) fn gpu(dev: &CudaDevice) -> Result<Gpu> {
    static LOADED: OnceLock<Mutex<HashMap<usize, Gpu>>> = OnceLock::new();
    let stream = dev.cuda_stream();
    let ctx = stream.context().clone();
    let key = Arc::as_ptr(&ctx) as usize;
    let base = {
        let mut map = LOADED
            .get_or_init(|| Mutex::new(HashMap::new()))
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match map.get(&key) {
            Some(g) => g.clone(),
            None => {
                let g = Gpu::with_context(ctx).map_err(wrap)?;
                map.insert(key, g.clone());
                g
            }
        }
    };
    base.on_stream(stream).map_err(wrap)
}

/// What a cached op was made for: context and stream, heads, dtype and options (floats by
/// their bits). The stream is part of the key because a plan's tables are rewritten by the next
/// call's upload: only stream order makes that safe. (The cached op holds its stream, so a
/// stream's address cannot be reused while its entry exists.)
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct OpKey {
    ctx: usize,
    stream: usize,
    heads: (usize, usize, usize),
    dtype: ferrinfer::DType,
    opts: (Option<u32>, Option<u32>, Option<usize>, bool),
}

impl OpKey {
    pub(crate) fn new(
        gpu: &Gpu,
        heads: &HeadConfig,
        dtype: ferrinfer::DType,
        o: &AttentionOptions,
    ) -> Self {
        Self {
            ctx: Arc::as_ptr(gpu.context()) as usize,
            stream: gpu.cu_stream() as usize,
            heads: (heads.num_qo_heads, heads.num_kv_heads, heads.head_dim),
            dtype,
            opts: (
                o.sm_scale.map(f32::to_bits),
                o.soft_cap.map(f32::to_bits),
                o.window_left,
                o.causal,
            ),
        }
    }
}

/// ferrinfer ops with their last plan, by [`OpKey`]: the op is built once, its plan's device
/// tables and pinned staging are reused by every later call (re-planned in place). Calls are
/// serialised by the mutex; their work is ordered on the op's stream, so a re-plan's upload
/// runs after the previous call's kernel has read the tables.
pub(crate) struct PlanCache<Op, Plan> {
    map: Mutex<HashMap<OpKey, (Op, Option<Plan>)>>,
}

impl<Op, Plan> PlanCache<Op, Plan> {
    pub(crate) fn new() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `f` with the op for `key` (built by `make` on first use) and its plan slot.
    pub(crate) fn with<R>(
        &self,
        key: OpKey,
        make: impl FnOnce() -> Result<Op>,
        f: impl FnOnce(&mut Op, &mut Option<Plan>) -> Result<R>,
    ) -> Result<R> {
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (op, plan) = match map.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert((make()?, None)),
        };
        f(op, plan)
    }
}

/// The elements `layout` selects of a contiguous CUDA storage as a `T` slice and the element
/// range (the public functions make their inputs contiguous first; a strided layout here is a
/// bug, reported not panicked).
pub(crate) fn slice<'a, T: CudaDType>(
    op: &str,
    storage: &'a CudaStorage,
    layout: &Layout,
) -> Result<(&'a CudaSlice<T>, usize, usize)> {
    let s = storage.as_cuda_slice::<T>()?;
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| invalid(op, "input is not contiguous"))?;
    if end > s.len() || start > end {
        return Err(invalid(op, "layout outside its storage"));
    }
    Ok((s, start, end))
}

/// A span over elements `start..end` of a device slice read by a kernel on `gpu`'s stream.
/// cudarc's read record (the returned guard) must be dropped after the launch is queued.
pub(crate) fn read_span<'a, T: Half>(
    gpu: &'a Gpu,
    (s, start, end): (&'a CudaSlice<T>, usize, usize),
) -> Result<(DeviceSpan<T>, SyncOnDrop<'a>)> {
    let (ptr, guard) = s.device_ptr(gpu.stream());
    let addr = ptr + (start * std::mem::size_of::<T>()) as u64;
    // SAFETY: `addr..` is `end - start` elements of a live candle buffer of this context (the
    // slice is borrowed for the guard's lifetime, which outlives the queued launch's use of it:
    // candle frees buffers in stream order on the same stream).
    let span = unsafe { gpu.span::<T>(addr, end - start) }.map_err(wrap)?;
    Ok((span, guard))
}

/// A new device buffer of `n` elements for an op's output, every byte 0xFF first (NaN in f16
/// and bf16), so an element a kernel failed to write reads as NaN, never as a stale value.
pub(crate) fn output<T: Half>(dev: &CudaDevice, gpu: &Gpu, n: usize) -> Result<CudaSlice<T>> {
    // SAFETY: filled right below, in stream order, before any use.
    let mut out = unsafe { dev.alloc::<T>(n.max(1)) }?;
    // The raw driver call below needs the context current on this thread.
    gpu.context()
        .bind_to_thread()
        .map_err(|e| invalid("cuda", format!("binding the context: {e}")))?;
    {
        let (ptr, _guard) = out.device_ptr_mut(gpu.stream());
        // SAFETY: `n.max(1)` elements of a buffer just allocated on this stream.
        unsafe {
            result::memset_d8_async(
                ptr,
                0xFF,
                n.max(1) * std::mem::size_of::<T>(),
                gpu.cu_stream(),
            )
        }
        .map_err(|e| invalid("cuda", format!("output fill: {e}")))?;
    }
    Ok(out)
}

/// A span over a whole output buffer written by a kernel on `gpu`'s stream, with cudarc's
/// write record.
pub(crate) fn write_span<'a, T: Half>(
    gpu: &'a Gpu,
    out: &'a mut CudaSlice<T>,
    n: usize,
) -> Result<(DeviceSpan<T>, SyncOnDrop<'a>)> {
    let (ptr, guard) = out.device_ptr_mut(gpu.stream());
    // SAFETY: `n` elements of a live buffer of this context, borrowed mutably for the guard.
    let span = unsafe { gpu.span::<T>(ptr, n) }.map_err(wrap)?;
    Ok((span, guard))
}

/// The cached plan re-planned in place by `into`, or the first plan made by `new`.
fn replan<P>(
    slot: &mut Option<P>,
    into: impl FnOnce(&mut P) -> ferrinfer::Result<()>,
    new: impl FnOnce() -> ferrinfer::Result<P>,
) -> Result<&mut P> {
    match slot {
        Some(p) => {
            into(p).map_err(wrap)?;
            Ok(p)
        }
        None => Ok(slot.insert(new().map_err(wrap)?)),
    }
}

/// The three kinds of cached op: prefill over ragged K/V (also single-request decode and
/// prefill), prefill over a paged pool, decode over a paged pool.
type Prefills = PlanCache<BatchPrefill, BatchPrefillPlan>;
type Decodes = PlanCache<BatchDecode, BatchDecodePlan>;

fn ragged_ops() -> &'static Prefills {
    static OPS: OnceLock<Prefills> = OnceLock::new();
    OPS.get_or_init(PlanCache::new)
}

fn paged_prefill_ops() -> &'static Prefills {
    static OPS: OnceLock<Prefills> = OnceLock::new();
    OPS.get_or_init(PlanCache::new)
}

fn paged_decode_ops() -> &'static Decodes {
    static OPS: OnceLock<Decodes> = OnceLock::new();
    OPS.get_or_init(PlanCache::new)
}

/// Attention over contiguous K/V on candle's device: request `b` owns q rows
/// `qo_indptr[b]..[b+1]` and K/V rows `kv_indptr[b]..[b+1]` (one request for single decode
/// and prefill). Returns the output buffer (`q`'s element count).
#[allow(clippy::too_many_arguments)]
pub(crate) fn ragged<T: Half>(
    op: &'static str,
    heads: &HeadConfig,
    opts: &AttentionOptions,
    qo_indptr: &[i32],
    kv_indptr: &[i32],
    q: (&CudaStorage, &Layout),
    k: (&CudaStorage, &Layout),
    v: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let dev = &q.0.device;
    let gpu = gpu(dev)?;
    let (qs, ks, vs) = (
        slice::<T>(op, q.0, q.1)?,
        slice::<T>(op, k.0, k.1)?,
        slice::<T>(op, v.0, v.1)?,
    );
    let n = qs.2 - qs.1;
    let mut out = output::<T>(dev, &gpu, n)?;
    if n > 0 {
        let (q, _rq) = read_span(&gpu, qs)?;
        let (k, _rk) = read_span(&gpu, ks)?;
        let (v, _rv) = read_span(&gpu, vs)?;
        let (o, _wo) = write_span(&gpu, &mut out, n)?;
        let key = OpKey::new(&gpu, heads, <T as Float16>::DTYPE, opts);
        let make = || BatchPrefill::new(&gpu, *heads, <T as Float16>::DTYPE, *opts).map_err(wrap);
        ragged_ops().with(key, make, |pf, plan| {
            pf.set_gpu(&gpu).map_err(wrap)?;
            let plan = replan(
                plan,
                |p| pf.plan_ragged_into(qo_indptr, kv_indptr, p),
                || pf.plan_ragged(qo_indptr, kv_indptr),
            )?;
            // SAFETY: every span names live candle memory of this context, borrowed (with its
            // cudarc record) until after the launch is queued; `out` is a new buffer no input
            // overlaps.
            unsafe { pf.run_ragged_spans(plan, q, k, v, o, None) }.map_err(wrap)
        })?;
    }
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

/// Attention over one GPU pool of a paged cache: decode (`qo_indptr` `None`: one q row per
/// entry of `pages`) or prefill. Returns the output buffer (`q`'s element count).
pub(crate) fn paged<T: Half>(
    op: &'static str,
    heads: &HeadConfig,
    opts: &AttentionOptions,
    pool: &KvPool<T>,
    pages: &BatchPages,
    qo_indptr: Option<&[i32]>,
    q: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let dev = &q.0.device;
    let gpu = gpu(dev)?;
    let qs = slice::<T>(op, q.0, q.1)?;
    let n = qs.2 - qs.1;
    let kv = pool.device_spans().map_err(wrap)?;
    let cfg = *pool.config();
    let mut out = output::<T>(dev, &gpu, n)?;
    if n > 0 {
        let (q, _rq) = read_span(&gpu, qs)?;
        let (o, _wo) = write_span(&gpu, &mut out, n)?;
        let key = OpKey::new(&gpu, heads, <T as Float16>::DTYPE, opts);
        // SAFETY (both runs): q and out as in `ragged`; the pool's buffers outlive the call
        // (the cache is borrowed by the op that called this).
        match qo_indptr {
            None => {
                let make =
                    || BatchDecode::new(&gpu, *heads, <T as Float16>::DTYPE, *opts).map_err(wrap);
                paged_decode_ops().with(key, make, |dc, plan| {
                    dc.set_gpu(&gpu).map_err(wrap)?;
                    let plan = replan(
                        plan,
                        |p| dc.plan_into(pages, &cfg, p),
                        || dc.plan(pages, &cfg),
                    )?;
                    // SAFETY: see above.
                    unsafe { dc.run_spans(plan, q, &kv, o, None) }.map_err(wrap)
                })?;
            }
            Some(qo) => {
                let make =
                    || BatchPrefill::new(&gpu, *heads, <T as Float16>::DTYPE, *opts).map_err(wrap);
                paged_prefill_ops().with(key, make, |pf, plan| {
                    pf.set_gpu(&gpu).map_err(wrap)?;
                    let plan = replan(
                        plan,
                        |p| pf.plan_paged_into(qo, pages, &cfg, p),
                        || pf.plan_paged(qo, pages, &cfg),
                    )?;
                    // SAFETY: see above.
                    unsafe { pf.run_paged_spans(plan, q, &kv, o, None) }.map_err(wrap)
                })?;
            }
        }
    }
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

/// Appends one layer's new K/V rows from candle CUDA tensors (`[Σ n, Hkv, D]`, contiguous)
/// to a GPU cache: one copy kernel on candle's stream, reading the tensors in place.
pub(crate) fn append<T: Half>(
    op: &'static str,
    cache: &mut PagedKvCache<T>,
    layer: usize,
    step: &AppendStep,
    k: (&CudaStorage, &Layout),
    v: (&CudaStorage, &Layout),
    strides: RowStrides,
) -> Result<()> {
    let gpu = gpu(&k.0.device)?;
    let (ks, vs) = (slice::<T>(op, k.0, k.1)?, slice::<T>(op, v.0, v.1)?);
    let (k, _rk) = read_span(&gpu, ks)?;
    let (v, _rv) = read_span(&gpu, vs)?;
    cache
        .append_layer(layer, step, Rows::Span(k), strides, Rows::Span(v), strides)
        .map_err(wrap)
}
