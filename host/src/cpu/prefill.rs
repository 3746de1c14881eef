//! CPU single-request prefill: each query token is a decode over the keys its masks allow
//! (the causal bound becomes the sequence length, the window is re-expressed relative to it),
//! so prefill shares the decode path's math; a custom mask ([`PackedMask`]) hides further keys
//! of each query's row. Semantics as [`crate::ops::SinglePrefill`].
use rayon::prelude::*;

use super::decode::{BatchRope, Extras, RopeTable, RowRope};
use super::KvStrides;
use crate::checked;
use crate::dtype::{Float16, KvElem};
use crate::error::{Error, Result};
use crate::fp8::{Fp8, Fp8Format, KvScales};
use crate::heads::HeadConfig;
use crate::mask::PackedMask;
use crate::options::AttentionOptions;
use crate::rope::RopeConfig;
use crate::validate;

const OP: &str = "cpu_single_prefill";

/// Prefill: q and out `[qo_len, Hq, D]`, K and V `[kv_len, Hkv, D]` contiguous, lse
/// `[qo_len, Hq]`; query token `t` sits at position `kv_len − qo_len + t` (`qo_len ≤ kv_len`).
#[allow(clippy::too_many_arguments)]
pub fn single_prefill<T: Float16>(
    heads: &HeadConfig,
    opts: &AttentionOptions,
    q: &[T],
    k: &[T],
    v: &[T],
    qo_len: usize,
    kv_len: usize,
    out: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    let one = KvScales::ONE;
    single(
        heads, opts, q, k, v, qo_len, kv_len, out, lse, None, None, one,
    )
}

/// [`single_prefill`] under a custom mask of one request ([`PackedMask`], combined with the
/// causal flag and window of `opts`).
#[allow(clippy::too_many_arguments)]
pub fn single_prefill_masked<T: Float16>(
    heads: &HeadConfig,
    opts: &AttentionOptions,
    q: &[T],
    k: &[T],
    v: &[T],
    qo_len: usize,
    kv_len: usize,
    mask: &PackedMask,
    out: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    mask.check(OP, std::iter::once((qo_len, kv_len)))?;
    let m = Some((&mask.bits[..], mask.indptr[0] as usize * 8));
    single(
        heads,
        opts,
        q,
        k,
        v,
        qo_len,
        kv_len,
        out,
        lse,
        m,
        None,
        KvScales::ONE,
    )
}

/// One request; `mask`: packed bits and the bit of the request's entry (0, 0). K/V elements
/// `S` read with `scales`.
#[allow(clippy::too_many_arguments)]
fn single<T: Float16, S: KvElem>(
    heads: &HeadConfig,
    opts: &AttentionOptions,
    q: &[T],
    k: &[S],
    v: &[S],
    qo_len: usize,
    kv_len: usize,
    out: &mut [T],
    lse: Option<&mut [f32]>,
    mask: Option<(&[u8], usize)>,
    rope: Option<RowRope<'_>>,
    scales: KvScales,
) -> Result<()> {
    heads.validate(OP)?;
    opts.validate(OP)?;
    scales.validate(OP)?;
    if qo_len > kv_len {
        return Err(Error::invalid(
            OP,
            "qo_len",
            format!("{qo_len} > kv_len {kv_len}"),
        ));
    }
    let row = checked::mul(OP, "q elements", heads.num_qo_heads, heads.head_dim)?;
    let n = checked::mul(OP, "q elements", qo_len, row)?;
    if q.len() < n || out.len() < n {
        return Err(Error::shape(
            OP,
            "q/out elements",
            format!(">= {n}"),
            q.len().min(out.len()),
        ));
    }
    // Checked even when qo_len = 0 (nothing is computed, but the extent must not wrap).
    let nkv = checked::product(
        OP,
        "k/v elements",
        &[kv_len, heads.num_kv_heads, heads.head_dim],
    )?;
    if k.len() < nkv || v.len() < nkv {
        return Err(Error::shape(
            OP,
            "k/v elements",
            format!(">= {nkv}"),
            k.len().min(v.len()),
        ));
    }
    let hq = heads.num_qo_heads;

    let nl = checked::mul(OP, "lse elements", qo_len, hq)?;
    if let Some(l) = lse.as_deref() {
        validate::at_least(OP, "lse elements", nl, l.len())?;
    }
    let s = KvStrides::contiguous(heads);
    let one = |t: usize, o: &mut [T], l: Option<&mut [f32]>| {
        let pos = kv_len - qo_len + t;
        let hi = if opts.causal { pos + 1 } else { kv_len };
        // Keys ≥ pos − w, re-expressed for a "decode" at position hi − 1.
        let window = opts.window_left.map(|w| (hi - 1) - pos.saturating_sub(w));
        let o2 = AttentionOptions {
            window_left: window,
            causal: false,
            ..*opts
        };
        let qt = &q[t * row..(t + 1) * row];
        let extras = Extras {
            mask_row: mask.map(|(bits, base)| (bits, base + t * kv_len)),
            // The query keeps its own position (the decode's range ends at hi − 1 ≤ pos).
            rope: rope.map(|r| RowRope {
                q_pos: r.k_pos0 + pos as u32,
                ..r
            }),
        };
        let kv = super::decode::KvView::strided(k, s, v, s);
        super::decode::single_decode_scaled(heads, &o2, qt, kv, hi, scales, extras, o, l)
    };
    let results: Vec<Result<()>> = match lse {
        Some(l) => out[..n]
            .par_chunks_mut(row)
            .zip(l[..nl].par_chunks_mut(hq))
            .enumerate()
            .map(|(t, (o, l))| one(t, o, Some(l)))
            .collect(),
        None => out[..n]
            .par_chunks_mut(row)
            .enumerate()
            .map(|(t, o)| one(t, o, None))
            .collect(),
    };
    results.into_iter().collect()
}

/// Batch prefill over ragged (packed) K/V, FlashInfer's ragged wrapper: request `b` has query
/// rows `qo_indptr[b]..qo_indptr[b+1]` of q `[nnz_q, Hq, D]` and K/V rows
/// `kv_indptr[b]..kv_indptr[b+1]` of k, v `[nnz_kv, Hkv, D]`; out like q, lse `[nnz_q, Hq]`.
/// Each request must have `qo_len ≤ kv_len`.
#[allow(clippy::too_many_arguments)]
pub fn batch_prefill_ragged<T: Float16>(
    heads: &HeadConfig,
    opts: &AttentionOptions,
    q: &[T],
    qo_indptr: &[i32],
    k: &[T],
    v: &[T],
    kv_indptr: &[i32],
    out: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    let kv = (k, v, kv_indptr);
    ragged(
        heads,
        opts,
        q,
        qo_indptr,
        kv,
        None,
        None,
        KvScales::ONE,
        out,
        lse,
    )
}

/// [`batch_prefill_ragged`] over fp8 K/V ([`Fp8`] codes) read with `scales` (real = code ×
/// scale); q and out stay 16-bit. A scale that is not finite and > 0 is an
/// [`Error::InvalidArgument`] naming it.
#[allow(clippy::too_many_arguments)]
pub fn batch_prefill_ragged_fp8<T: Float16, F: Fp8Format>(
    heads: &HeadConfig,
    opts: &AttentionOptions,
    q: &[T],
    qo_indptr: &[i32],
    k: &[Fp8<F>],
    v: &[Fp8<F>],
    kv_indptr: &[i32],
    scales: KvScales,
    out: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    scales.validate(OP)?;
    let kv = (k, v, kv_indptr);
    ragged(heads, opts, q, qo_indptr, kv, None, None, scales, out, lse)
}

/// [`batch_prefill_ragged`] under a custom mask ([`PackedMask`]: one `[qo_len, kv_len]` bit
/// matrix per request, combined with the causal flag and window of `opts`).
#[allow(clippy::too_many_arguments)]
pub fn batch_prefill_ragged_masked<T: Float16>(
    heads: &HeadConfig,
    opts: &AttentionOptions,
    q: &[T],
    qo_indptr: &[i32],
    k: &[T],
    v: &[T],
    kv_indptr: &[i32],
    mask: &PackedMask,
    out: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    let kv = (k, v, kv_indptr);
    ragged(
        heads,
        opts,
        q,
        qo_indptr,
        kv,
        Some(mask),
        None,
        KvScales::ONE,
        out,
        lse,
    )
}

/// [`batch_prefill_ragged`] with RoPE inside attention (FlashInfer's `ROPE_LLAMA`): q and
/// every key are rotated on the fly by `rope`, key `t` of request `b` at position
/// `offsets[b] + t`, query token `i` at `offsets[b] + kv_len − qo_len + i` (its causal
/// position); offsets 0 when `None`.
#[allow(clippy::too_many_arguments)]
pub fn batch_prefill_ragged_rope<T: Float16>(
    heads: &HeadConfig,
    opts: &AttentionOptions,
    rope: &RopeConfig,
    offsets: Option<&[i32]>,
    q: &[T],
    qo_indptr: &[i32],
    k: &[T],
    v: &[T],
    kv_indptr: &[i32],
    out: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    validate::indptr(OP, "kv_indptr", kv_indptr, None)?;
    let lens: Vec<usize> = kv_indptr
        .windows(2)
        .map(|w| (w[1] - w[0]) as usize)
        .collect();
    let table = RopeTable::new(OP, rope, heads.head_dim, offsets, &lens)?;
    let kv = (k, v, kv_indptr);
    let r = Some(table.batch());
    ragged(
        heads,
        opts,
        q,
        qo_indptr,
        kv,
        None,
        r,
        KvScales::ONE,
        out,
        lse,
    )
}

/// [`batch_prefill_paged`] with RoPE inside attention (as [`batch_prefill_ragged_rope`]).
#[allow(clippy::too_many_arguments)]
pub fn batch_prefill_paged_rope<T: Float16>(
    heads: &HeadConfig,
    opts: &AttentionOptions,
    rope: &RopeConfig,
    offsets: Option<&[i32]>,
    q: &[T],
    qo_indptr: &[i32],
    pool: &crate::kv::KvPool<T>,
    pages: &crate::kv::BatchPages,
    out: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    pool.validate_pages(pages)?;
    let ps = pool.config().page_size;
    let lens = (0..pages.batch_size())
        .map(|b| pages.kv_len(b, ps))
        .collect::<Result<Vec<_>>>()?;
    let table = RopeTable::new(OP, rope, heads.head_dim, offsets, &lens)?;
    let (r, one) = (Some(table.batch()), KvScales::ONE);
    paged(
        heads, opts, q, qo_indptr, pool, pages, None, r, one, out, lse,
    )
}

/// Ragged K and V with their row offsets.
type RaggedKv<'a, S> = (&'a [S], &'a [S], &'a [i32]);

#[allow(clippy::too_many_arguments)]
fn ragged<T: Float16, S: KvElem>(
    heads: &HeadConfig,
    opts: &AttentionOptions,
    q: &[T],
    qo_indptr: &[i32],
    (k, v, kv_indptr): RaggedKv<'_, S>,
    mask: Option<&PackedMask>,
    rope: Option<BatchRope<'_>>,
    scales: KvScales,
    out: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    heads.validate(OP)?;
    // Validated here too, not only per request: an empty batch must be refused like decode's.
    opts.validate(OP)?;
    let qrow = checked::mul(OP, "q row", heads.num_qo_heads, heads.head_dim)?;
    let kvrow = checked::mul(OP, "k/v row", heads.num_kv_heads, heads.head_dim)?;
    let rows = (
        q.len().min(out.len()) / qrow.max(1),
        k.len().min(v.len()) / kvrow.max(1),
    );
    validate::ragged_indptr(OP, qo_indptr, kv_indptr, Some(rows))?;
    if let Some(m) = mask {
        let len = |p: &[i32], b: usize| (p[b + 1] - p[b]) as usize;
        let lens = (0..qo_indptr.len() - 1).map(|b| (len(qo_indptr, b), len(kv_indptr, b)));
        m.check(OP, lens)?;
    }
    if let Some(l) = lse.as_deref() {
        let rows = *qo_indptr.last().unwrap_or(&0) as usize;
        let need = checked::mul(OP, "lse elements", rows, heads.num_qo_heads)?;
        validate::at_least(OP, "lse elements", need, l.len())?;
    }
    let mut lse = lse;
    for b in 0..qo_indptr.len() - 1 {
        let (q0, q1) = (qo_indptr[b] as usize, qo_indptr[b + 1] as usize);
        let (k0, k1) = (kv_indptr[b] as usize, kv_indptr[b + 1] as usize);
        let l = lse
            .as_deref_mut()
            .map(|l| &mut l[q0 * heads.num_qo_heads..q1 * heads.num_qo_heads]);
        single(
            heads,
            opts,
            &q[q0 * qrow..q1 * qrow],
            &k[k0 * kvrow..k1 * kvrow],
            &v[k0 * kvrow..k1 * kvrow],
            q1 - q0,
            k1 - k0,
            &mut out[q0 * qrow..q1 * qrow],
            l,
            mask.map(|m| (&m.bits[..], m.indptr[b] as usize * 8)),
            rope.map(|r| r.row(b, 0)),
            scales,
        )?;
    }
    Ok(())
}

/// Batch prefill (append attention) over a host-memory page pool: request `b` has query rows
/// `qo_indptr[b]..qo_indptr[b+1]` and the KV of entry `b` of `pages` (its last `qo_len` tokens
/// are the queries' own keys, as after an append).
#[allow(clippy::too_many_arguments)]
pub fn batch_prefill_paged<T: Float16>(
    heads: &HeadConfig,
    opts: &AttentionOptions,
    q: &[T],
    qo_indptr: &[i32],
    pool: &crate::kv::KvPool<T>,
    pages: &crate::kv::BatchPages,
    out: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    let one = KvScales::ONE;
    paged(
        heads, opts, q, qo_indptr, pool, pages, None, None, one, out, lse,
    )
}

/// [`batch_prefill_paged`] over an fp8 page pool, read with `scales` (as
/// [`batch_prefill_ragged_fp8`]).
#[allow(clippy::too_many_arguments)]
pub fn batch_prefill_paged_fp8<T: Float16, F: Fp8Format>(
    heads: &HeadConfig,
    opts: &AttentionOptions,
    q: &[T],
    qo_indptr: &[i32],
    pool: &crate::kv::KvPool<T, Fp8<F>>,
    pages: &crate::kv::BatchPages,
    scales: KvScales,
    out: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    scales.validate(OP)?;
    paged(
        heads, opts, q, qo_indptr, pool, pages, None, None, scales, out, lse,
    )
}

/// [`batch_prefill_paged`] under a custom mask ([`PackedMask`], as
/// [`batch_prefill_ragged_masked`]).
#[allow(clippy::too_many_arguments)]
pub fn batch_prefill_paged_masked<T: Float16>(
    heads: &HeadConfig,
    opts: &AttentionOptions,
    q: &[T],
    qo_indptr: &[i32],
    pool: &crate::kv::KvPool<T>,
    pages: &crate::kv::BatchPages,
    mask: &PackedMask,
    out: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    let one = KvScales::ONE;
    paged(
        heads,
        opts,
        q,
        qo_indptr,
        pool,
        pages,
        Some(mask),
        None,
        one,
        out,
        lse,
    )
}

#[allow(clippy::too_many_arguments)]
fn paged<T: Float16, S: KvElem>(
    heads: &HeadConfig,
    opts: &AttentionOptions,
    q: &[T],
    qo_indptr: &[i32],
    pool: &crate::kv::KvPool<T, S>,
    pages: &crate::kv::BatchPages,
    mask: Option<&PackedMask>,
    rope: Option<BatchRope<'_>>,
    scales: KvScales,
    out: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    heads.validate(OP)?;
    opts.validate(OP)?;
    validate::pool_heads(OP, pool.config(), heads)?;
    pool.validate_pages(pages)?;
    validate::qo_indptr(OP, qo_indptr, pages.batch_size())?;
    if let Some(m) = mask {
        // Checked before the gather (which allocates the whole batch's K/V).
        let ps = pool.config().page_size;
        let lens = (0..pages.batch_size())
            .map(|b| {
                Ok((
                    (qo_indptr[b + 1] - qo_indptr[b]) as usize,
                    pages.kv_len(b, ps)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        m.check(OP, lens.into_iter())?;
    }
    // Gather every request's KV to packed rows (one buffer, each row copied once), then run
    // the ragged path.
    let ps = pool.config().page_size;
    let mut kv_indptr = checked::with_capacity(OP, "kv_indptr", pages.batch_size() + 1)?;
    kv_indptr.push(0i32);
    let mut rows = 0usize;
    for b in 0..pages.batch_size() {
        rows = checked::add(OP, "kv rows", rows, pages.kv_len(b, ps)?)?;
        kv_indptr.push(checked::to_i32(OP, "kv rows", rows)?);
    }
    let kvrow = checked::mul(OP, "k/v row", heads.num_kv_heads, heads.head_dim)?;
    let elems = checked::mul(OP, "gathered K/V", rows, kvrow)?;
    let mut k = checked::filled(OP, "gathered K", elems, S::default())?;
    let mut v = checked::filled(OP, "gathered V", elems, S::default())?;
    for b in 0..pages.batch_size() {
        let r = kv_indptr[b] as usize * kvrow..kv_indptr[b + 1] as usize * kvrow;
        pool.gather_host_into(pages, b, &mut k[r.clone()], &mut v[r])?;
    }
    let kv = (&k[..], &v[..], &kv_indptr[..]);
    ragged(heads, opts, q, qo_indptr, kv, mask, rope, scales, out, lse)
}
