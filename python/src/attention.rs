//! Single-request decode and prefill and ragged batch prefill on the caller's arrays, over
//! ferrinfer's CPU backend (`ferrinfer::cpu`). Shapes are FlashInfer's: q `[Hq, D]` (decode) or
//! `[rows, Hq, D]`, K/V `[kv_len, Hkv, D]` (NHD) or `[Hkv, kv_len, D]` (HND), lse f32 `[.., Hq]`
//! in base 2. The library validates lengths, heads and options; this file checks what only the
//! binding knows (ranks, dtypes, contiguity, aliasing) and picks the element type.
use std::borrow::Cow;

use ferrinfer::cpu::{self, KvStrides};
use ferrinfer::fp8::{E4m3, E5m2, Fp8, Fp8Format, KvScales};
use ferrinfer::mask::PackedMask;
use ferrinfer::{Float16, HeadConfig};
use half::{bf16, f16};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

use crate::errors::lib;
use crate::mask::{packed, MaskArg};
use crate::tensor::{disjoint, index_array, Dt, Elem, RawTensor, Tensor};

/// Checks that a K/V tensor holds q's type or fp8 (the types decode reads; the other ops take
/// q's type only, which their slices check).
pub(crate) fn expect_kv_dtype(t: &Tensor, q: &Tensor) -> PyResult<()> {
    if matches!(t.dtype, Dt::F8E4m3 | Dt::F8E5m2) {
        return Ok(());
    }
    t.expect_same_dtype(q)
}

/// Checks q (rank `q_rank`, contiguous, 16-bit), K and V (rank 3, same shape, q's dtype or
/// one fp8 type, head rows contiguous) and returns the head geometry and the K/V token count.
fn geometry(q: &Tensor, k: &Tensor, v: &Tensor, hnd: bool) -> PyResult<(HeadConfig, usize)> {
    q.expect_dtype(&[Dt::F16, Dt::Bf16])?;
    q.expect_contiguous()?;
    let layout = if hnd {
        "[num_kv_heads, kv_len, head_dim] (HND)"
    } else {
        "[kv_len, num_kv_heads, head_dim] (NHD)"
    };
    expect_kv_dtype(k, q)?;
    v.expect_same_dtype(k)?;
    for t in [k, v] {
        t.expect_rank(3, layout)?;
        t.expect_unit_last_stride()?;
    }
    v.expect_shape(&k.shape)?;
    let (kv_len, hkv) = if hnd {
        (k.shape[1], k.shape[0])
    } else {
        (k.shape[0], k.shape[1])
    };
    let hq = q.shape[q.shape.len() - 2];
    let d = q.shape[q.shape.len() - 1];
    if k.shape[2] != d {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "{}: head_dim {} differs from q's {d}",
            k.name, k.shape[2]
        )));
    }
    Ok((crate::heads(hq, hkv, d)?, kv_len))
}

/// K/V strides `(stride_n, stride_h)` of a rank-3 tensor in either layout.
pub(crate) fn kv_strides(t: &Tensor, hnd: bool) -> KvStrides {
    let (n, h) = if hnd {
        (t.strides[1], t.strides[0])
    } else {
        (t.strides[0], t.strides[1])
    };
    KvStrides {
        stride_n: n,
        stride_h: h,
    }
}

/// The rows of a rank-3 K or V as contiguous NHD: the caller's memory when it already is,
/// else a gathered copy (what the prefill paths of the CPU backend read).
fn nhd_rows<'a, T: Elem>(t: &Tensor, data: &'a [T], hnd: bool) -> Cow<'a, [T]> {
    let s = kv_strides(t, hnd);
    let (n, h, d) = if hnd {
        (t.shape[1], t.shape[0], t.shape[2])
    } else {
        (t.shape[0], t.shape[1], t.shape[2])
    };
    if (s.stride_n == h * d || n <= 1) && (s.stride_h == d || h <= 1) {
        return Cow::Borrowed(&data[..n * h * d]);
    }
    let mut rows = Vec::with_capacity(n * h * d);
    for i in 0..n {
        for j in 0..h {
            let o = i * s.stride_n + j * s.stride_h;
            rows.extend_from_slice(&data[o..o + d]);
        }
    }
    Cow::Owned(rows)
}

/// Output checks shared by every op: `out` has q's shape and dtype and is contiguous; `lse`
/// (f32, contiguous) has q's shape without the head dim.
pub(crate) fn check_outputs(q: &Tensor, out: &Tensor, lse: Option<&Tensor>) -> PyResult<()> {
    at_least_rank(q, 2)?;
    out.expect_same_dtype(q)?;
    out.expect_shape(&q.shape)?;
    out.expect_contiguous()?;
    if let Some(l) = lse {
        l.expect_dtype(&[Dt::F32])?;
        l.expect_shape(&q.shape[..q.shape.len() - 1])?;
        l.expect_contiguous()?;
    }
    Ok(())
}

/// `q`-like tensors end in `[heads, head_dim]`: refuse lower ranks before indexing shapes.
pub(crate) fn at_least_rank(t: &Tensor, rank: usize) -> PyResult<()> {
    if t.shape.len() < rank {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "{}: expected at least {rank} dimensions, got shape {:?}",
            t.name, t.shape
        )));
    }
    Ok(())
}

pub(crate) fn wrong_dtype(q: &Tensor) -> PyErr {
    PyTypeError::new_err(format!(
        "{}: dtype {} (float16 or bfloat16)",
        q.name,
        q.dtype.name()
    ))
}

/// Calls `$f::<f16>` or `$f::<bf16>` by the dtype of `$q`.
macro_rules! by_dtype {
    ($q:expr, $f:ident($($arg:expr),*)) => {
        match $q.dtype {
            Dt::F16 => $f::<f16>($($arg),*),
            Dt::Bf16 => $f::<bf16>($($arg),*),
            _ => Err($crate::attention::wrong_dtype(&$q)),
        }
    };
}

/// Calls `$f::<T>` (16-bit K/V of q's type `T`) or `$f8::<T, F>` (fp8 K/V of format `F`) by
/// the dtypes of `$q` and `$k`.
macro_rules! by_kv_dtype {
    ($q:expr, $k:expr, $f:ident, $f8:ident($($arg:expr),*)) => {
        match ($q.dtype, $k.dtype) {
            (Dt::F16, Dt::F8E4m3) => $f8::<f16, E4m3>($($arg),*),
            (Dt::F16, Dt::F8E5m2) => $f8::<f16, E5m2>($($arg),*),
            (Dt::Bf16, Dt::F8E4m3) => $f8::<bf16, E4m3>($($arg),*),
            (Dt::Bf16, Dt::F8E5m2) => $f8::<bf16, E5m2>($($arg),*),
            (Dt::F16, _) => $f::<f16>($($arg),*),
            (Dt::Bf16, _) => $f::<bf16>($($arg),*),
            _ => Err($crate::attention::wrong_dtype(&$q)),
        }
    };
}
pub(crate) use by_kv_dtype;

/// `k_scale` / `v_scale` as the library's scales: any finite value > 0 for fp8 K/V (checked by
/// the op); with 16-bit K/V only 1 (FlashInfer's default) — other values are refused, not
/// applied differently.
pub(crate) fn kv_scales(
    k: &Tensor,
    k_scale: Option<f32>,
    v_scale: Option<f32>,
) -> PyResult<KvScales> {
    let s = KvScales {
        k: k_scale.unwrap_or(1.0),
        v: v_scale.unwrap_or(1.0),
    };
    if !matches!(k.dtype, Dt::F8E4m3 | Dt::F8E5m2) && s != KvScales::ONE {
        return Err(pyo3::exceptions::PyNotImplementedError::new_err(format!(
            "k_scale={} / v_scale={}: scales apply to fp8 K/V caches only (this cache is {})",
            s.k,
            s.v,
            k.dtype.name()
        )));
    }
    Ok(s)
}

struct Args {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    hnd: bool,
    out: Tensor,
    lse: Option<Tensor>,
    opts: ferrinfer::AttentionOptions,
}

impl Args {
    #[allow(clippy::too_many_arguments)]
    fn new(
        q: RawTensor,
        k: RawTensor,
        v: RawTensor,
        kv_layout: &str,
        out: RawTensor,
        lse: Option<RawTensor>,
        opts: ferrinfer::AttentionOptions,
    ) -> PyResult<Self> {
        let a = Args {
            q: Tensor::from_raw(q)?,
            k: Tensor::from_raw(k)?,
            v: Tensor::from_raw(v)?,
            hnd: crate::is_hnd(kv_layout)?,
            out: Tensor::from_raw(out)?,
            lse: lse.map(Tensor::from_raw).transpose()?,
            opts,
        };
        check_outputs(&a.q, &a.out, a.lse.as_ref())?;
        let mut all = vec![&a.q, &a.k, &a.v, &a.out];
        all.extend(a.lse.as_ref());
        let mut outs = vec![&a.out];
        outs.extend(a.lse.as_ref());
        disjoint(&outs, &all)?;
        Ok(a)
    }
}

/// The arrays of an op as slices: q and out of element `T`, k and v of `S`, lse of f32.
pub(crate) type IoSlices<'a, T, S = T> = (
    &'a [T],
    &'a [S],
    &'a [S],
    &'a mut [T],
    Option<&'a mut [f32]>,
);

/// Borrows q, k, v, out and lse as slices.
///
/// # Safety
/// The Python layer must hold every array for the call, and `out`/`lse` must overlap no other
/// argument (checked by [`disjoint`] before).
pub(crate) unsafe fn io_slices<'a, T: Elem, S: Elem>(
    q: &'a Tensor,
    k: &'a Tensor,
    v: &'a Tensor,
    out: &'a Tensor,
    lse: Option<&'a Tensor>,
) -> PyResult<IoSlices<'a, T, S>> {
    // SAFETY: the caller's contract above.
    unsafe {
        let lse = match lse {
            Some(l) => Some(l.slice_mut::<f32>()?),
            None => None,
        };
        Ok((
            q.slice::<T>()?,
            k.slice::<S>()?,
            v.slice::<S>()?,
            out.slice_mut::<T>()?,
            lse,
        ))
    }
}

impl Args {
    /// [`io_slices`] of this call's arrays.
    fn slices<T: Elem, S: Elem>(&self) -> PyResult<IoSlices<'_, T, S>> {
        // SAFETY: the Python layer holds every array for the call; `Args::new` ruled out
        // aliasing with `disjoint`.
        unsafe { io_slices(&self.q, &self.k, &self.v, &self.out, self.lse.as_ref()) }
    }
}

fn decode_impl<T: Float16 + Elem>(a: &Args, rope: Option<(f32, f32)>, _: KvScales) -> PyResult<()> {
    a.q.expect_rank(2, "[num_qo_heads, head_dim]")?;
    let (heads, kv_len) = geometry(&a.q, &a.k, &a.v, a.hnd)?;
    let (q, k, v, out, lse) = a.slices::<T, T>()?;
    let (ks, vs) = (kv_strides(&a.k, a.hnd), kv_strides(&a.v, a.hnd));
    lib(match crate::rope_llama(rope, heads.head_dim) {
        None => cpu::single_decode(&heads, &a.opts, q, k, ks, v, vs, kv_len, out, lse),
        Some(r) => {
            cpu::single_decode_rope(&heads, &a.opts, &r, 0, q, k, ks, v, vs, kv_len, out, lse)
        }
    })
}

/// Decode over fp8 K/V read with `scales` (no RoPE: refused).
fn decode_fp8_impl<T: Float16 + Elem, F: Fp8Format>(
    a: &Args,
    rope: Option<(f32, f32)>,
    scales: KvScales,
) -> PyResult<()>
where
    Fp8<F>: Elem,
{
    a.q.expect_rank(2, "[num_qo_heads, head_dim]")?;
    no_rope_with_fp8(rope)?;
    let (heads, kv_len) = geometry(&a.q, &a.k, &a.v, a.hnd)?;
    let (q, k, v, out, lse) = a.slices::<T, Fp8<F>>()?;
    let (ks, vs) = (kv_strides(&a.k, a.hnd), kv_strides(&a.v, a.hnd));
    lib(cpu::single_decode_fp8(
        &heads, &a.opts, q, k, ks, v, vs, kv_len, scales, out, lse,
    ))
}

/// RoPE inside attention reads 16-bit keys only.
pub(crate) fn no_rope_with_fp8(rope: Option<(f32, f32)>) -> PyResult<()> {
    if rope.is_some() {
        return Err(pyo3::exceptions::PyNotImplementedError::new_err(
            "pos_encoding_mode='ROPE_LLAMA' with an fp8 K/V cache is not supported by ferrinfer",
        ));
    }
    Ok(())
}

fn prefill_impl<T: Float16 + Elem>(a: &Args, mask: Option<&PackedMask>) -> PyResult<()> {
    a.q.expect_rank(3, "[qo_len, num_qo_heads, head_dim]")?;
    let (heads, kv_len) = geometry(&a.q, &a.k, &a.v, a.hnd)?;
    let (q, k, v, out, lse) = a.slices::<T, T>()?;
    let (k, v) = (nhd_rows(&a.k, k, a.hnd), nhd_rows(&a.v, v, a.hnd));
    let (h, o, qo_len) = (&heads, &a.opts, a.q.shape[0]);
    lib(match mask {
        Some(m) => cpu::single_prefill_masked(h, o, q, &k, &v, qo_len, kv_len, m, out, lse),
        None => cpu::single_prefill(h, o, q, &k, &v, qo_len, kv_len, out, lse),
    })
}

/// `single_decode(q, k, v, kv_layout, out, lse, sm_scale, soft_cap, window_left, rope=None,
/// k_scale=None, v_scale=None)`; `rope` = `(rope_scale, rope_theta)` of FlashInfer's
/// `ROPE_LLAMA`; K/V may be fp8 (`float8_e4m3fn` / `float8_e5m2`), read as code × scale.
#[pyfunction]
#[pyo3(signature = (q, k, v, kv_layout, out, lse, sm_scale, soft_cap, window_left, rope=None, k_scale=None, v_scale=None))]
#[allow(clippy::too_many_arguments)]
fn single_decode(
    py: Python<'_>,
    q: RawTensor,
    k: RawTensor,
    v: RawTensor,
    kv_layout: &str,
    out: RawTensor,
    lse: Option<RawTensor>,
    sm_scale: Option<f32>,
    soft_cap: Option<f32>,
    window_left: Option<usize>,
    rope: Option<(f32, f32)>,
    k_scale: Option<f32>,
    v_scale: Option<f32>,
) -> PyResult<()> {
    let opts = crate::options(false, sm_scale, soft_cap, window_left);
    let a = Args::new(q, k, v, kv_layout, out, lse, opts)?;
    let scales = kv_scales(&a.k, k_scale, v_scale)?;
    py.detach(|| by_kv_dtype!(a.q, a.k, decode_impl, decode_fp8_impl(&a, rope, scales)))
}

/// `single_prefill(q, k, v, kv_layout, out, lse, causal, sm_scale, soft_cap, window_left,
/// mask=None)`; `mask` = `(packed bits, byte offsets)` of one request ([`crate::mask`]).
#[pyfunction]
#[pyo3(signature = (q, k, v, kv_layout, out, lse, causal, sm_scale, soft_cap, window_left, mask=None))]
#[allow(clippy::too_many_arguments)]
fn single_prefill(
    py: Python<'_>,
    q: RawTensor,
    k: RawTensor,
    v: RawTensor,
    kv_layout: &str,
    out: RawTensor,
    lse: Option<RawTensor>,
    causal: bool,
    sm_scale: Option<f32>,
    soft_cap: Option<f32>,
    window_left: Option<usize>,
    mask: MaskArg,
) -> PyResult<()> {
    let opts = crate::options(causal, sm_scale, soft_cap, window_left);
    let a = Args::new(q, k, v, kv_layout, out, lse, opts)?;
    let mask = mask.map(packed);
    py.detach(|| by_dtype!(a.q, prefill_impl(&a, mask.as_ref())))
}

/// The ragged prefill's checks and slices (K/V of element `S`, as NHD rows), then `compute`
/// over heads, q rows with their offsets, K/V rows with theirs, out and lse.
fn ragged_over<T: Float16 + Elem, S: Elem>(
    a: &Args,
    qo_indptr: &[i32],
    kv_indptr: &[i32],
    compute: impl FnOnce(
        &HeadConfig,
        (&[T], &[i32]),
        (&[S], &[S], &[i32]),
        &mut [T],
        Option<&mut [f32]>,
    ) -> PyResult<()>,
) -> PyResult<()> {
    a.q.expect_rank(3, "[nnz_qo, num_qo_heads, head_dim]")?;
    let (heads, _) = geometry(&a.q, &a.k, &a.v, a.hnd)?;
    let (q, k, v, out, lse) = a.slices::<T, S>()?;
    let (k, v) = (nhd_rows(&a.k, k, a.hnd), nhd_rows(&a.v, v, a.hnd));
    let n = a.q.numel()?;
    compute(
        &heads,
        (&q[..n], qo_indptr),
        (&k, &v, kv_indptr),
        &mut out[..n],
        lse,
    )
}

fn ragged_impl<T: Float16 + Elem>(
    a: &Args,
    qo_indptr: &[i32],
    kv_indptr: &[i32],
    mask: Option<&PackedMask>,
    rope: Option<(f32, f32)>,
    _: KvScales,
) -> PyResult<()> {
    let o = &a.opts;
    ragged_over::<T, T>(a, qo_indptr, kv_indptr, |h, q, kv, out, lse| {
        ragged_prefill(h, o, q, kv, mask, rope, out, lse)
    })
}

/// [`ragged_impl`] over fp8 K/V read with `scales`.
fn ragged_fp8_impl<T: Float16 + Elem, F: Fp8Format>(
    a: &Args,
    qo_indptr: &[i32],
    kv_indptr: &[i32],
    mask: Option<&PackedMask>,
    rope: Option<(f32, f32)>,
    scales: KvScales,
) -> PyResult<()>
where
    Fp8<F>: Elem,
{
    let o = &a.opts;
    let extra = (mask, rope, scales);
    ragged_over::<T, Fp8<F>>(a, qo_indptr, kv_indptr, |h, q, kv, out, lse| {
        ragged_prefill_fp8(h, o, q, kv, extra, out, lse)
    })
}

/// The CPU backend's ragged batch prefill over fp8 K/V read with `scales` (also the paged
/// path's, over gathered codes). Custom masks and RoPE inside attention read 16-bit K/V only,
/// as on the GPU: refused by name.
pub(crate) fn ragged_prefill_fp8<T: Float16, F: Fp8Format>(
    heads: &HeadConfig,
    opts: &ferrinfer::AttentionOptions,
    (q, qo_indptr): (&[T], &[i32]),
    (k, v, kv_indptr): (&[Fp8<F>], &[Fp8<F>], &[i32]),
    (mask, rope, scales): (Option<&PackedMask>, Option<(f32, f32)>, KvScales),
    out: &mut [T],
    lse: Option<&mut [f32]>,
) -> PyResult<()> {
    no_rope_with_fp8(rope)?;
    if mask.is_some() {
        return Err(pyo3::exceptions::PyNotImplementedError::new_err(
            "a custom mask with an fp8 K/V cache is not supported by ferrinfer",
        ));
    }
    lib(cpu::batch_prefill_ragged_fp8(
        heads, opts, q, qo_indptr, k, v, kv_indptr, scales, out, lse,
    ))
}

/// The CPU backend's ragged batch prefill, under `mask` or with RoPE (`(rope_scale,
/// rope_theta)`) when given (also the paged path's, over gathered rows).
#[allow(clippy::too_many_arguments)]
pub(crate) fn ragged_prefill<T: Float16>(
    heads: &HeadConfig,
    opts: &ferrinfer::AttentionOptions,
    (q, qo_indptr): (&[T], &[i32]),
    (k, v, kv_indptr): (&[T], &[T], &[i32]),
    mask: Option<&PackedMask>,
    rope: Option<(f32, f32)>,
    out: &mut [T],
    lse: Option<&mut [f32]>,
) -> PyResult<()> {
    let rope = crate::rope_llama(rope, heads.head_dim);
    lib(match (mask, rope) {
        (Some(_), Some(_)) => {
            return Err(pyo3::exceptions::PyNotImplementedError::new_err(
                "RoPE inside attention with a custom mask is not supported by ferrinfer",
            ))
        }
        (Some(m), None) => cpu::batch_prefill_ragged_masked(
            heads, opts, q, qo_indptr, k, v, kv_indptr, m, out, lse,
        ),
        (None, Some(r)) => cpu::batch_prefill_ragged_rope(
            heads, opts, &r, None, q, qo_indptr, k, v, kv_indptr, out, lse,
        ),
        (None, None) => {
            cpu::batch_prefill_ragged(heads, opts, q, qo_indptr, k, v, kv_indptr, out, lse)
        }
    })
}

/// `batch_prefill_ragged(q, k, v, qo_indptr, kv_indptr, kv_layout, out, lse, causal, sm_scale,
/// soft_cap, window_left, mask=None, rope=None, k_scale=None, v_scale=None)`: FlashInfer's
/// ragged prefill wrapper's `run`; K/V may be fp8, read as code × scale.
#[pyfunction]
#[pyo3(signature = (q, k, v, qo_indptr, kv_indptr, kv_layout, out, lse, causal, sm_scale, soft_cap, window_left, mask=None, rope=None, k_scale=None, v_scale=None))]
#[allow(clippy::too_many_arguments)]
fn batch_prefill_ragged(
    py: Python<'_>,
    q: RawTensor,
    k: RawTensor,
    v: RawTensor,
    qo_indptr: RawTensor,
    kv_indptr: RawTensor,
    kv_layout: &str,
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
    let opts = crate::options(causal, sm_scale, soft_cap, window_left);
    let (qo_indptr, kv_indptr) = (index_array(qo_indptr)?, index_array(kv_indptr)?);
    let a = Args::new(q, k, v, kv_layout, out, lse, opts)?;
    let scales = kv_scales(&a.k, k_scale, v_scale)?;
    let mask = mask.map(packed);
    py.detach(|| {
        by_kv_dtype!(
            a.q,
            a.k,
            ragged_impl,
            ragged_fp8_impl(&a, &qo_indptr, &kv_indptr, mask.as_ref(), rope, scales)
        )
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(single_decode, m)?)?;
    m.add_function(wrap_pyfunction!(single_prefill, m)?)?;
    m.add_function(wrap_pyfunction!(batch_prefill_ragged, m)?)?;
    Ok(())
}
