//! CPU batch decode over a host-memory page pool: the same semantics as
//! [`crate::ops::BatchDecode`] (window, soft-cap, lse, empty requests → 0 / −inf).
//! Each request is decoded by the single-request body, reading its rows from the pool's pages
//! in place; requests run in parallel (rayon).
use rayon::prelude::*;

use crate::checked;
use crate::dtype::{Float16, KvElem};
use crate::error::Result;
use crate::fp8::{Fp8, Fp8Format, KvScales};
use crate::heads::HeadConfig;
use crate::kv::{BatchPages, KvPool};
use crate::options::AttentionOptions;
use crate::rope::RopeConfig;
use crate::validate;

use super::decode::{BatchRope, Extras, KvRows, KvView, RopeTable};

const OP: &str = "cpu_batch_decode";

/// Decode for every request of `pages`: q and out `[batch, Hq, D]`, lse `[batch, Hq]`.
pub fn batch_decode<T: Float16>(
    heads: &HeadConfig,
    opts: &AttentionOptions,
    q: &[T],
    pool: &KvPool<T>,
    pages: &BatchPages,
    out: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    scaled(heads, opts, q, pool, pages, KvScales::ONE, None, out, lse)
}

/// [`batch_decode`] with RoPE inside attention, the twin of
/// [`crate::ops::BatchDecode::set_rope`]: q and every key are rotated on the fly by `rope` (the
/// cache holds unrotated keys); key `t` of request `b` sits at position `offsets[b] + t`
/// (offsets 0 when `None`), the query at `offsets[b] + kv_len − 1`.
#[allow(clippy::too_many_arguments)]
pub fn batch_decode_rope<T: Float16>(
    heads: &HeadConfig,
    opts: &AttentionOptions,
    rope: &RopeConfig,
    offsets: Option<&[i32]>,
    q: &[T],
    pool: &KvPool<T>,
    pages: &BatchPages,
    out: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    let page_size = pool.config().page_size;
    let lens = (0..pages.batch_size())
        .map(|b| pages.kv_len(b, page_size))
        .collect::<Result<Vec<_>>>()?;
    let table = RopeTable::new(OP, rope, heads.head_dim, offsets, &lens)?;
    let r = table.batch();
    scaled(
        heads,
        opts,
        q,
        pool,
        pages,
        KvScales::ONE,
        Some(r),
        out,
        lse,
    )
}

/// [`batch_decode`] over an fp8 page pool read with `scales` (real K/V = code × scale); q and
/// out stay 16-bit. A scale that is not finite and > 0 is an `InvalidArgument` naming it.
#[allow(clippy::too_many_arguments)]
pub fn batch_decode_fp8<T: Float16, F: Fp8Format>(
    heads: &HeadConfig,
    opts: &AttentionOptions,
    q: &[T],
    pool: &KvPool<T, Fp8<F>>,
    pages: &BatchPages,
    scales: KvScales,
    out: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    scaled(heads, opts, q, pool, pages, scales, None, out, lse)
}

#[allow(clippy::too_many_arguments)]
fn scaled<T: Float16, S: KvElem>(
    heads: &HeadConfig,
    opts: &AttentionOptions,
    q: &[T],
    pool: &KvPool<T, S>,
    pages: &BatchPages,
    scales: KvScales,
    rope: Option<BatchRope<'_>>,
    out: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    heads.validate(OP)?;
    opts.validate(OP)?;
    scales.validate(OP)?;
    crate::validate::pool_heads(OP, pool.config(), heads)?;
    pool.validate_pages(pages)?;
    let b = pages.batch_size();
    let row = checked::mul(OP, "q row", heads.num_qo_heads, heads.head_dim)?;
    let n = checked::mul(OP, "q elements", b, row)?;
    let nl = checked::mul(OP, "lse elements", b, heads.num_qo_heads)?;
    validate::at_least(OP, "q elements", n, q.len())?;
    validate::at_least(OP, "out elements", n, out.len())?;
    if let Some(l) = lse.as_deref() {
        validate::at_least(OP, "lse elements", nl, l.len())?;
    }
    let (kp, vp) = pool.host_kv()?;
    let cfg = *pool.config();
    // One request: the decode (with its rotation under RoPE) over its pages, in place.
    let one = |bi: usize, o: &mut [T], l: Option<&mut [f32]>| -> Result<()> {
        let len = pages.kv_len(bi, cfg.page_size)?;
        let (p0, p1) = (
            pages.kv_indptr[bi] as usize,
            pages.kv_indptr[bi + 1] as usize,
        );
        let kv = KvView {
            k: kp,
            v: vp,
            rows: KvRows::Paged {
                pages: &pages.kv_indices[p0..p1],
                cfg,
            },
        };
        let qb = &q[bi * row..(bi + 1) * row];
        let extras = Extras {
            mask_row: None,
            // An empty request attends nothing; its query position is moot.
            rope: rope.map(|r| r.row(bi, len.saturating_sub(1))),
        };
        super::decode::single_decode_scaled(heads, opts, qb, kv, len, scales, extras, o, l)
    };
    let hq = heads.num_qo_heads;
    let results: Vec<Result<()>> = match lse {
        Some(l) => out[..n]
            .par_chunks_mut(row)
            .zip(l[..nl].par_chunks_mut(hq))
            .enumerate()
            .map(|(bi, (o, l))| one(bi, o, Some(l)))
            .collect(),
        None => out[..n]
            .par_chunks_mut(row)
            .enumerate()
            .map(|(bi, o)| one(bi, o, None))
            .collect(),
    };
    results.into_iter().collect()
}
