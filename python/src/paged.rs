//! Paged-KV ops on a caller's cache: batch decode, paged batch prefill and the KV append.
//!
//! The cache arrives as two rank-4 views, K and V, each `[num_pages, page_size, Hkv, D]` (NHD)
//! or `[num_pages, Hkv, page_size, D]` (HND) with any strides but contiguous head rows, so both
//! FlashInfer forms — one `(pages, 2, ...)` tensor (the Python layer passes `cache[:, 0]` and
//! `cache[:, 1]`) and a `(k, v)` tuple — are read in place. Page tables are FlashInfer's CSR
//! arrays and are checked by the library's own rules (`BatchPages::validate`,
//! `AppendMeta::validate`) before a page is touched.
//!
//! The CPU backend's paged ops work on the library's own pools; here, as they do, each
//! request's pages are gathered into contiguous rows and the contiguous ops
//! (`cpu::single_decode`, `cpu::batch_prefill_ragged`) compute.
use ferrinfer::cpu::{self, KvStrides};
use ferrinfer::fp8::{E4m3, E5m2, Fp8, Fp8Format, KvScales};
use ferrinfer::kv::{AppendMeta, BatchPages};
use ferrinfer::mask::PackedMask;
use ferrinfer::{Float16, HeadConfig};
use half::{bf16, f16};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use rayon::prelude::*;

use crate::attention::{
    at_least_rank, by_kv_dtype, check_outputs, io_slices, kv_scales, ragged_prefill,
    ragged_prefill_fp8, IoSlices,
};
use crate::errors::lib;
use crate::mask::{packed, MaskArg};
use crate::tensor::{disjoint, index_array, Dt, Elem, RawTensor, Tensor};

/// A checked paged cache: K and V views of the same shape and dtype.
struct Cache {
    k: Tensor,
    v: Tensor,
    hnd: bool,
    num_pages: usize,
    page_size: usize,
    num_heads: usize,
    head_dim: usize,
}

impl Cache {
    fn new(k: RawTensor, v: RawTensor, kv_layout: &str) -> PyResult<Self> {
        let (k, v) = (Tensor::from_raw(k)?, Tensor::from_raw(v)?);
        let hnd = crate::is_hnd(kv_layout)?;
        let layout = if hnd {
            "[num_pages, num_kv_heads, page_size, head_dim] (HND)"
        } else {
            "[num_pages, page_size, num_kv_heads, head_dim] (NHD)"
        };
        k.expect_dtype(&[Dt::F16, Dt::Bf16, Dt::F8E4m3, Dt::F8E5m2])?;
        v.expect_same_dtype(&k)?;
        for t in [&k, &v] {
            t.expect_rank(4, layout)?;
            t.expect_unit_last_stride()?;
        }
        v.expect_shape(&k.shape)?;
        let (s, h) = if hnd {
            (k.shape[2], k.shape[1])
        } else {
            (k.shape[1], k.shape[2])
        };
        Ok(Cache {
            num_pages: k.shape[0],
            page_size: s,
            num_heads: h,
            head_dim: k.shape[3],
            k,
            v,
            hnd,
        })
    }

    /// Element offset of `(page, slot, head, 0)` in view `t`.
    fn offset(&self, t: &Tensor, page: usize, slot: usize, head: usize) -> usize {
        let (ss, sh) = if self.hnd {
            (t.strides[2], t.strides[1])
        } else {
            (t.strides[1], t.strides[2])
        };
        page * t.strides[0] + slot * ss + head * sh
    }

    /// Page and slot of token `i` of request `b` (tables validated).
    fn locate(&self, pages: &BatchPages, b: usize, i: usize) -> (usize, usize) {
        let p = pages.kv_indices[pages.kv_indptr[b] as usize + i / self.page_size] as usize;
        (p, i % self.page_size)
    }

    /// Request `b`'s `len` tokens of view `t` as contiguous NHD rows.
    fn gather<T: Elem>(
        &self,
        t: &Tensor,
        data: &[T],
        pages: &BatchPages,
        b: usize,
        len: usize,
    ) -> Vec<T> {
        let (h, d) = (self.num_heads, self.head_dim);
        let mut rows = Vec::with_capacity(len * h * d);
        for i in 0..len {
            let (p, s) = self.locate(pages, b, i);
            for j in 0..h {
                let o = self.offset(t, p, s, j);
                rows.extend_from_slice(&data[o..o + d]);
            }
        }
        rows
    }

    fn heads(&self, q: &Tensor) -> PyResult<HeadConfig> {
        at_least_rank(q, 2)?;
        q.expect_dtype(&[Dt::F16, Dt::Bf16])?;
        crate::attention::expect_kv_dtype(&self.k, q)?;
        let (hq, d) = (q.shape[q.shape.len() - 2], q.shape[q.shape.len() - 1]);
        if d != self.head_dim {
            return Err(PyValueError::new_err(format!(
                "paged_kv_cache: head_dim {} differs from q's {d}",
                self.head_dim
            )));
        }
        crate::heads(hq, self.num_heads, d)
    }
}

fn batch_pages(
    op: &'static str,
    cache: &Cache,
    indptr: RawTensor,
    indices: RawTensor,
    last: RawTensor,
) -> PyResult<BatchPages> {
    let pages = BatchPages {
        kv_indptr: index_array(indptr)?,
        kv_indices: index_array(indices)?,
        kv_last_page_len: index_array(last)?,
    };
    lib(pages.validate(op, cache.page_size, Some(cache.num_pages)))?;
    Ok(pages)
}

struct Run {
    q: Tensor,
    cache: Cache,
    pages: BatchPages,
    out: Tensor,
    lse: Option<Tensor>,
    opts: ferrinfer::AttentionOptions,
}

impl Run {
    /// [`io_slices`] of q, the cache views, out and lse.
    fn slices<T: Elem, S: Elem>(&self) -> PyResult<IoSlices<'_, T, S>> {
        let (q, c, out) = (&self.q, &self.cache, &self.out);
        // SAFETY: the Python layer holds every array for the call; outputs alias nothing
        // (`check_io`, called before any op runs).
        unsafe { io_slices(q, &c.k, &c.v, out, self.lse.as_ref()) }
    }

    fn check_io(&self) -> PyResult<()> {
        check_outputs(&self.q, &self.out, self.lse.as_ref())?;
        let mut all = vec![&self.q, &self.cache.k, &self.cache.v, &self.out];
        all.extend(self.lse.as_ref());
        let mut outs = vec![&self.out];
        outs.extend(self.lse.as_ref());
        disjoint(&outs, &all)
    }
}

/// Decode of every request over K/V of element `S` (q's type, or fp8 read with `scales`):
/// each request's pages gathered to contiguous rows, then `one` (the CPU backend's single
/// decode of that element type) per request, in parallel.
fn decode_each<T: Float16 + Elem, S: Elem>(
    r: &Run,
    one: impl Fn(
            &HeadConfig,
            &[T],
            &[S],
            &[S],
            usize,
            &mut [T],
            Option<&mut [f32]>,
        ) -> ferrinfer::Result<()>
        + Sync,
) -> PyResult<()> {
    let heads = r.cache.heads(&r.q)?;
    let b = r.pages.batch_size();
    r.q.expect_shape(&[b, heads.num_qo_heads, heads.head_dim])?;
    let (q, kc, vc, out, lse) = r.slices::<T, S>()?;
    let hq = heads.num_qo_heads;
    let row = hq * heads.head_dim;
    let lse: Vec<Option<&mut [f32]>> = match lse {
        Some(l) => l[..b * hq].chunks_mut(hq).map(Some).collect(),
        None => (0..b).map(|_| None).collect(),
    };
    let results: Vec<PyResult<()>> = out[..b * row]
        .par_chunks_mut(row)
        .zip(lse.into_par_iter())
        .enumerate()
        .map(|(i, (o, l))| {
            let len = lib(r.pages.kv_len(i, r.cache.page_size))?;
            let k = r.cache.gather(&r.cache.k, kc, &r.pages, i, len);
            let v = r.cache.gather(&r.cache.v, vc, &r.pages, i, len);
            lib(one(&heads, &q[i * row..(i + 1) * row], &k, &v, len, o, l))
        })
        .collect();
    results.into_iter().collect()
}

fn decode_impl<T: Float16 + Elem>(r: &Run, rope: Option<(f32, f32)>, _: KvScales) -> PyResult<()> {
    let d = r.cache.head_dim;
    let rope = crate::rope_llama(rope, d);
    let opts = &r.opts;
    decode_each::<T, T>(r, |heads, q, k, v, len, o, l| {
        let s = KvStrides::contiguous(heads);
        match &rope {
            None => cpu::single_decode(heads, opts, q, k, s, v, s, len, o, l),
            Some(rc) => cpu::single_decode_rope(heads, opts, rc, 0, q, k, s, v, s, len, o, l),
        }
    })
}

/// [`decode_impl`] over an fp8 cache read with `scales` (no RoPE: refused).
fn decode_fp8_impl<T: Float16 + Elem, F: Fp8Format>(
    r: &Run,
    rope: Option<(f32, f32)>,
    scales: KvScales,
) -> PyResult<()>
where
    Fp8<F>: Elem,
{
    crate::attention::no_rope_with_fp8(rope)?;
    let opts = &r.opts;
    decode_each::<T, Fp8<F>>(r, |heads, q, k, v, len, o, l| {
        let s = KvStrides::contiguous(heads);
        cpu::single_decode_fp8(heads, opts, q, k, s, v, s, len, scales, o, l)
    })
}

/// Every request's pages gathered into contiguous `[Σ kv_len, Hkv, D]` K and V rows of
/// element `S`, with their offsets.
fn gather_all<S: Elem>(r: &Run, kc: &[S], vc: &[S]) -> PyResult<(Vec<S>, Vec<S>, Vec<i32>)> {
    let (mut k, mut v, mut kv_indptr) = (Vec::new(), Vec::new(), vec![0i32]);
    for b in 0..r.pages.batch_size() {
        let len = lib(r.pages.kv_len(b, r.cache.page_size))?;
        k.extend(r.cache.gather(&r.cache.k, kc, &r.pages, b, len));
        v.extend(r.cache.gather(&r.cache.v, vc, &r.pages, b, len));
        // Every length fits i32 (BatchPages::validate); the sum is checked.
        let end = i64::from(kv_indptr[b]) + len as i64;
        kv_indptr.push(i32::try_from(end).map_err(|_| {
            PyValueError::new_err("paged_kv_cache: total kv length exceeds 2^31-1")
        })?);
    }
    Ok((k, v, kv_indptr))
}

/// Paged prefill: every request's pages gathered into ragged K/V rows of element `S`, then
/// `compute` over heads, q rows with their offsets, the K/V rows with theirs, out and lse.
fn prefill_over<T: Float16 + Elem, S: Elem>(
    r: &Run,
    qo_indptr: &[i32],
    compute: impl FnOnce(
        &HeadConfig,
        (&[T], &[i32]),
        (&[S], &[S], &[i32]),
        &mut [T],
        Option<&mut [f32]>,
    ) -> PyResult<()>,
) -> PyResult<()> {
    let heads = r.cache.heads(&r.q)?;
    r.q.expect_rank(3, "[nnz_qo, num_qo_heads, head_dim]")?;
    let (q, kc, vc, out, lse) = r.slices::<T, S>()?;
    let (k, v, kv_indptr) = gather_all(r, kc, vc)?;
    let n = r.q.numel()?;
    compute(
        &heads,
        (&q[..n], qo_indptr),
        (&k, &v, &kv_indptr),
        &mut out[..n],
        lse,
    )
}

fn prefill_impl<T: Float16 + Elem>(
    r: &Run,
    qo_indptr: &[i32],
    mask: Option<&PackedMask>,
    rope: Option<(f32, f32)>,
    _: KvScales,
) -> PyResult<()> {
    let o = &r.opts;
    prefill_over::<T, T>(r, qo_indptr, |h, q, kv, out, lse| {
        ragged_prefill(h, o, q, kv, mask, rope, out, lse)
    })
}

/// [`prefill_impl`] over an fp8 cache read with `scales`.
fn prefill_fp8_impl<T: Float16 + Elem, F: Fp8Format>(
    r: &Run,
    qo_indptr: &[i32],
    mask: Option<&PackedMask>,
    rope: Option<(f32, f32)>,
    scales: KvScales,
) -> PyResult<()>
where
    Fp8<F>: Elem,
{
    let o = &r.opts;
    prefill_over::<T, Fp8<F>>(r, qo_indptr, |h, q, kv, out, lse| {
        ragged_prefill_fp8(h, o, q, kv, (mask, rope, scales), out, lse)
    })
}

/// `batch_decode_paged(q, k_cache, v_cache, kv_layout, kv_indptr, kv_indices,
/// kv_last_page_len, out, lse, sm_scale, soft_cap, window_left, rope=None, k_scale=None,
/// v_scale=None)`; `rope` = `(rope_scale, rope_theta)` of FlashInfer's `ROPE_LLAMA`; the cache
/// may be fp8 (`float8_e4m3fn` / `float8_e5m2`), read as code × scale.
#[pyfunction]
#[pyo3(signature = (q, k_cache, v_cache, kv_layout, kv_indptr, kv_indices, kv_last_page_len, out, lse, sm_scale, soft_cap, window_left, rope=None, k_scale=None, v_scale=None))]
#[allow(clippy::too_many_arguments)]
fn batch_decode_paged(
    py: Python<'_>,
    q: RawTensor,
    k_cache: RawTensor,
    v_cache: RawTensor,
    kv_layout: &str,
    kv_indptr: RawTensor,
    kv_indices: RawTensor,
    kv_last_page_len: RawTensor,
    out: RawTensor,
    lse: Option<RawTensor>,
    sm_scale: Option<f32>,
    soft_cap: Option<f32>,
    window_left: Option<usize>,
    rope: Option<(f32, f32)>,
    k_scale: Option<f32>,
    v_scale: Option<f32>,
) -> PyResult<()> {
    let cache = Cache::new(k_cache, v_cache, kv_layout)?;
    let scales = kv_scales(&cache.k, k_scale, v_scale)?;
    let r = Run {
        pages: batch_pages(
            "batch_decode",
            &cache,
            kv_indptr,
            kv_indices,
            kv_last_page_len,
        )?,
        q: Tensor::from_raw(q)?,
        cache,
        out: Tensor::from_raw(out)?,
        lse: lse.map(Tensor::from_raw).transpose()?,
        opts: crate::options(false, sm_scale, soft_cap, window_left),
    };
    r.check_io()?;
    py.detach(|| {
        by_kv_dtype!(
            r.q,
            r.cache.k,
            decode_impl,
            decode_fp8_impl(&r, rope, scales)
        )
    })
}

/// `batch_prefill_paged(q, k_cache, v_cache, kv_layout, qo_indptr, kv_indptr, kv_indices,
/// kv_last_page_len, out, lse, causal, sm_scale, soft_cap, window_left, mask=None, rope=None,
/// k_scale=None, v_scale=None)`; the cache may be fp8, read as code × scale.
#[pyfunction]
#[pyo3(signature = (q, k_cache, v_cache, kv_layout, qo_indptr, kv_indptr, kv_indices, kv_last_page_len, out, lse, causal, sm_scale, soft_cap, window_left, mask=None, rope=None, k_scale=None, v_scale=None))]
#[allow(clippy::too_many_arguments)]
fn batch_prefill_paged(
    py: Python<'_>,
    q: RawTensor,
    k_cache: RawTensor,
    v_cache: RawTensor,
    kv_layout: &str,
    qo_indptr: RawTensor,
    kv_indptr: RawTensor,
    kv_indices: RawTensor,
    kv_last_page_len: RawTensor,
    out: RawTensor,
    lse: Option<RawTensor>,
    causal: bool,
    sm_scale: Option<f32>,
    soft_cap: Option<f32>,
    window_left: Option<usize>,
    mask: MaskArg,
    rope: Option<(f32, f32)>,
    k_scale: Option<f32>,
    v_scale: Option<f32>,
) -> PyResult<()> {
    let cache = Cache::new(k_cache, v_cache, kv_layout)?;
    let scales = kv_scales(&cache.k, k_scale, v_scale)?;
    let qo_indptr = index_array(qo_indptr)?;
    let r = Run {
        pages: batch_pages(
            "batch_prefill",
            &cache,
            kv_indptr,
            kv_indices,
            kv_last_page_len,
        )?,
        q: Tensor::from_raw(q)?,
        cache,
        out: Tensor::from_raw(out)?,
        lse: lse.map(Tensor::from_raw).transpose()?,
        opts: crate::options(causal, sm_scale, soft_cap, window_left),
    };
    if qo_indptr.len() != r.pages.batch_size() + 1 {
        return Err(PyValueError::new_err(format!(
            "qo_indptr: {} entries for a batch of {} (expected batch + 1)",
            qo_indptr.len(),
            r.pages.batch_size()
        )));
    }
    r.check_io()?;
    let mask = mask.map(packed);
    py.detach(|| {
        by_kv_dtype!(
            r.q,
            r.cache.k,
            prefill_impl,
            prefill_fp8_impl(&r, &qo_indptr, mask.as_ref(), rope, scales)
        )
    })
}

/// Writes rows `src` (`[nnz, Hkv, D]`, strides of `rows`) into view `dst` of the cache.
fn scatter<T: Elem>(
    cache: &Cache,
    dst: &Tensor,
    rows: &Tensor,
    meta: &AppendMeta<'_>,
) -> PyResult<()> {
    // SAFETY: the Python layer holds both arrays; `rows` was checked disjoint from every cache
    // view, and only this one view of the cache is borrowed while it is written.
    let (src, out) = unsafe { (rows.slice::<T>()?, dst.slice_mut::<T>()?) };
    let (h, d) = (cache.num_heads, cache.head_dim);
    for (r, (&b, &pos)) in meta.batch_indices.iter().zip(meta.positions).enumerate() {
        let (p, s) = cache.locate(meta.pages, b as usize, pos as usize);
        for j in 0..h {
            let o = cache.offset(dst, p, s, j);
            let i = r * rows.strides[0] + j * rows.strides[1];
            out[o..o + d].copy_from_slice(&src[i..i + d]);
        }
    }
    Ok(())
}

fn append_impl<T: Elem>(
    cache: &Cache,
    k: &Tensor,
    v: &Tensor,
    meta: &AppendMeta<'_>,
) -> PyResult<()> {
    scatter::<T>(cache, &cache.k, k, meta)?;
    scatter::<T>(cache, &cache.v, v, meta)
}

/// `append_paged_kv_cache(append_key, append_value, batch_indices, positions, k_cache,
/// v_cache, kv_layout, kv_indices, kv_indptr, kv_last_page_len)`: FlashInfer's argument order.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn append_paged_kv_cache(
    py: Python<'_>,
    append_key: RawTensor,
    append_value: RawTensor,
    batch_indices: RawTensor,
    positions: RawTensor,
    k_cache: RawTensor,
    v_cache: RawTensor,
    kv_layout: &str,
    kv_indices: RawTensor,
    kv_indptr: RawTensor,
    kv_last_page_len: RawTensor,
) -> PyResult<()> {
    let cache = Cache::new(k_cache, v_cache, kv_layout)?;
    let (k, v) = (
        Tensor::from_raw(append_key)?,
        Tensor::from_raw(append_value)?,
    );
    let pages = batch_pages(
        "append_paged_kv_cache",
        &cache,
        kv_indptr,
        kv_indices,
        kv_last_page_len,
    )?;
    let (batch_indices, positions) = (index_array(batch_indices)?, index_array(positions)?);
    for t in [&k, &v] {
        t.expect_same_dtype(&cache.k)?;
        t.expect_rank(3, "[nnz, num_kv_heads, head_dim]")?;
        t.expect_unit_last_stride()?;
        t.expect_shape(&[batch_indices.len(), cache.num_heads, cache.head_dim])?;
    }
    disjoint(&[&cache.k], &[&k, &v])?;
    disjoint(&[&cache.v], &[&k, &v])?;
    let meta = AppendMeta {
        batch_indices: &batch_indices,
        positions: &positions,
        pages: &pages,
    };
    lib(meta.validate("append_paged_kv_cache", cache.page_size, cache.num_pages))?;
    py.detach(|| match k.dtype {
        Dt::F16 => append_impl::<f16>(&cache, &k, &v, &meta),
        Dt::Bf16 => append_impl::<bf16>(&cache, &k, &v, &meta),
        other => Err(PyTypeError::new_err(format!(
            "append_key: dtype {}",
            other.name()
        ))),
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(batch_decode_paged, m)?)?;
    m.add_function(wrap_pyfunction!(batch_prefill_paged, m)?)?;
    m.add_function(wrap_pyfunction!(append_paged_kv_cache, m)?)?;
    Ok(())
}
