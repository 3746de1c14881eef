//! FlashInfer's `append_paged_kv_cache` on CUDA tensors: the library's span append on the
//! caller's stream. The index arrays come twice — host int32 copies, which are validated
//! (batch indices, positions inside the reserved pages, page ids below the cache's pages), and
//! the device int32 tensors with the same values, which the kernel reads (the Python layer
//! makes the device ones from the host ones when the caller passed host arrays).
use ferrinfer::kv::{AppendMeta, BatchPages, RowStrides};
use ferrinfer::ops::{self, AppendMetaSpans, PagedKvSpans, RowSpans};
use ferrinfer::{Float16, Gpu};
use half::{bf16, f16};
use pyo3::prelude::*;

use crate::cuda::{cuda, gpu_on, span, SpanElem};
use crate::errors::lib;
use crate::tensor::{disjoint, index_array, Dt, RawTensor, Tensor};

/// `(page, token, head)` strides and `(pages, page_size, heads)` of a rank-4 cache view.
pub fn cache_dims(t: &Tensor, hnd: bool) -> ([usize; 3], [usize; 3]) {
    let (s, sh) = (&t.strides, &t.shape);
    if hnd {
        ([s[0], s[2], s[1]], [sh[0], sh[2], sh[1]])
    } else {
        ([s[0], s[1], s[2]], [sh[0], sh[1], sh[2]])
    }
}

/// Checked cache views `k`/`v` (rank 4, `hnd` or NHD; see [`cache_views`]) as the library's
/// spans of their element `S`.
pub fn cache_spans<S: SpanElem>(
    gpu: &Gpu,
    k: &Tensor,
    v: &Tensor,
    hnd: bool,
) -> PyResult<PagedKvSpans<S>> {
    let (k_strides, [num_pages, page_size, num_kv_heads]) = cache_dims(k, hnd);
    let (v_strides, _) = cache_dims(v, hnd);
    Ok(PagedKvSpans {
        k: span::<S>(gpu, k)?,
        v: span::<S>(gpu, v)?,
        num_pages,
        page_size,
        num_kv_heads,
        head_dim: k.shape[3],
        k_strides,
        v_strides,
    })
}

/// The checked CUDA cache views `k`/`v` in `kv_layout`, of one of the `allowed` element types
/// (16-bit for append and prefill; the planned type, fp8 included, for decode).
pub fn cache_views(k: &Tensor, v: &Tensor, hnd: bool, allowed: &[Dt]) -> PyResult<()> {
    let layout = if hnd {
        "[num_pages, num_kv_heads, page_size, head_dim] (HND)"
    } else {
        "[num_pages, page_size, num_kv_heads, head_dim] (NHD)"
    };
    for t in [k, v] {
        t.expect_rank(4, layout)?;
        t.expect_unit_last_stride()?;
        t.expect_dtype(allowed)?;
    }
    v.expect_same_dtype(k)?;
    v.expect_shape(&k.shape)
}

struct Args {
    rows: [Tensor; 2],
    /// batch_indices, positions, kv_indptr, kv_indices, kv_last_page_len (host, validated).
    host: [Vec<i32>; 5],
    /// batch_indices, positions, kv_indptr, kv_indices (device, read by the kernel).
    dev: [Tensor; 4],
    cache: [Tensor; 2],
    hnd: bool,
}

fn append_typed<T: Float16 + SpanElem>(gpu: &Gpu, a: &Args) -> PyResult<()> {
    let [k, v] = &a.cache;
    let cache = cache_spans::<T>(gpu, k, v, a.hnd)?;
    let [kr, vr] = &a.rows;
    let strides = |t: &Tensor| RowStrides {
        stride_n: t.strides[0],
        stride_h: t.strides[1],
    };
    let rows = RowSpans {
        k: span::<T>(gpu, kr)?,
        ks: strides(kr),
        v: span::<T>(gpu, vr)?,
        vs: strides(vr),
    };
    let [bi, pos, indptr, indices, last] = &a.host;
    let pages = BatchPages {
        kv_indptr: indptr.clone(),
        kv_indices: indices.clone(),
        kv_last_page_len: last.clone(),
    };
    let meta = AppendMeta {
        batch_indices: bi,
        positions: pos,
        pages: &pages,
    };
    let i32_span = |t: &Tensor| -> PyResult<ferrinfer::DeviceSpan<i32>> {
        t.expect_dtype(&[Dt::I32])?;
        t.expect_rank(1, "of int32")?;
        t.expect_contiguous()?;
        // SAFETY: a checked CUDA tensor of this device held by the Python layer for the call.
        lib(unsafe { gpu.span::<i32>(t.addr as u64, t.span()?) })
    };
    let [d_bi, d_pos, d_indptr, d_indices] = &a.dev;
    let meta_dev = AppendMetaSpans {
        batch_indices: i32_span(d_bi)?,
        positions: i32_span(d_pos)?,
        kv_indptr: i32_span(d_indptr)?,
        kv_indices: i32_span(d_indices)?,
    };
    // SAFETY: checked CUDA tensors of this device held for the call; the device index arrays
    // are the caller's copies of the host ones (the Python layer makes or passes them together),
    // and the rows were checked disjoint from the cache.
    lib(unsafe { ops::append_spans(gpu, &cache, &meta, &meta_dev, &rows) })
}

/// Appends rows `[nnz, num_kv_heads, head_dim]` (head rows contiguous) into a CUDA cache on
/// `stream`; see the module docs for the two copies of the index arrays.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn append_paged_kv_cache_cuda(
    stream: usize,
    device: usize,
    append_key: RawTensor,
    append_value: RawTensor,
    host: [RawTensor; 5],
    dev: [RawTensor; 4],
    k_cache: RawTensor,
    v_cache: RawTensor,
    kv_layout: &str,
) -> PyResult<()> {
    let hnd = crate::is_hnd(kv_layout)?;
    let rows = [cuda(append_key, device)?, cuda(append_value, device)?];
    let cache = [cuda(k_cache, device)?, cuda(v_cache, device)?];
    cache_views(&cache[0], &cache[1], hnd, &[Dt::F16, Dt::Bf16])?;
    for r in &rows {
        r.expect_rank(3, "[nnz, num_kv_heads, head_dim]")?;
        r.expect_unit_last_stride()?;
        r.expect_same_dtype(&cache[0])?;
    }
    let [h0, h1, h2, h3, h4] = host;
    let host = [
        index_array(h0)?,
        index_array(h1)?,
        index_array(h2)?,
        index_array(h3)?,
        index_array(h4)?,
    ];
    let [d0, d1, d2, d3] = dev;
    let dev = [
        cuda(d0, device)?,
        cuda(d1, device)?,
        cuda(d2, device)?,
        cuda(d3, device)?,
    ];
    let (pages_dims, heads_dim) = (cache_dims(&cache[0], hnd).1, cache[0].shape[3]);
    for r in &rows {
        r.expect_shape(&[host[0].len(), pages_dims[2], heads_dim])?;
    }
    // K and V of one `(pages, 2, ...)` tensor interleave by page (their spans overlap) and
    // are written at distinct elements by construction; only the rows must not overlap them.
    disjoint(&[&cache[0]], &[&rows[0], &rows[1]])?;
    disjoint(&[&cache[1]], &[&rows[0], &rows[1]])?;
    let gpu = gpu_on(device, stream)?;
    let a = Args {
        rows,
        host,
        dev,
        cache,
        hnd,
    };
    match a.cache[0].dtype {
        Dt::F16 => append_typed::<f16>(&gpu, &a),
        _ => append_typed::<bf16>(&gpu, &a),
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(append_paged_kv_cache_cuda, m)?)
}
