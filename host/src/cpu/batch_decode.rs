//! CPU batch decode over a host-memory page pool: the same semantics as
//! [`crate::ops::BatchDecode`] (window, soft-cap, lse, empty requests → 0 / −inf).
//! Each request's pages are gathered to contiguous rows and decoded with [`super::single_decode`];
//! requests run in parallel (rayon).
use rayon::prelude::*;

use crate::dtype::Float16;
use crate::error::{Error, Result};
use crate::heads::HeadConfig;
use crate::kv::{BatchPages, KvPool};
use crate::options::AttentionOptions;

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
    heads.validate(OP)?;
    opts.validate(OP)?;
    let c = *pool.config();
    if c.num_kv_heads != heads.num_kv_heads || c.head_dim != heads.head_dim {
        return Err(Error::shape(
            OP,
            "pool heads/head_dim",
            format!("{}/{}", heads.num_kv_heads, heads.head_dim),
            format!("{}/{}", c.num_kv_heads, c.head_dim),
        ));
    }
    pool.validate_pages(pages)?;
    let (kp, vp) = pool
        .host_buffers()
        .ok_or_else(|| Error::invalid(OP, "pool", "a host-memory (CPU) pool is required"))?;
    let b = pages.batch_size();
    let row = heads.num_qo_heads * heads.head_dim;
    if q.len() < b * row {
        return Err(Error::shape(
            OP,
            "q elements",
            format!(">= {}", b * row),
            q.len(),
        ));
    }
    if out.len() < b * row {
        return Err(Error::shape(
            OP,
            "out elements",
            format!(">= {}", b * row),
            out.len(),
        ));
    }
    if let Some(l) = lse.as_deref() {
        if l.len() < b * heads.num_qo_heads {
            return Err(Error::shape(
                OP,
                "lse elements",
                format!(">= {}", b * heads.num_qo_heads),
                l.len(),
            ));
        }
    }
    let strides = super::KvStrides::contiguous(heads);
    let kv_row = heads.num_kv_heads * heads.head_dim;
    let gather = |bi: usize| {
        let len = pages.kv_len(bi, c.page_size);
        let mut k = Vec::with_capacity(len * kv_row);
        let mut v = Vec::with_capacity(len * kv_row);
        for t in 0..len {
            let page = pages.kv_indices[pages.kv_indptr[bi] as usize + t / c.page_size] as usize;
            for h in 0..c.num_kv_heads {
                let o = c.offset(page, t % c.page_size, h);
                k.extend_from_slice(&kp[o..o + c.head_dim]);
                v.extend_from_slice(&vp[o..o + c.head_dim]);
            }
        }
        (len, k, v)
    };
    let hq = heads.num_qo_heads;
    let results: Vec<Result<()>> = match lse {
        Some(l) => out[..b * row]
            .par_chunks_mut(row)
            .zip(l[..b * hq].par_chunks_mut(hq))
            .enumerate()
            .map(|(bi, (o, l))| {
                let (len, k, v) = gather(bi);
                super::single_decode(
                    heads,
                    opts,
                    &q[bi * row..(bi + 1) * row],
                    &k,
                    strides,
                    &v,
                    strides,
                    len,
                    o,
                    Some(l),
                )
            })
            .collect(),
        None => out[..b * row]
            .par_chunks_mut(row)
            .enumerate()
            .map(|(bi, o)| {
                let (len, k, v) = gather(bi);
                super::single_decode(
                    heads,
                    opts,
                    &q[bi * row..(bi + 1) * row],
                    &k,
                    strides,
                    &v,
                    strides,
                    len,
                    o,
                    None,
                )
            })
            .collect(),
    };
    results.into_iter().collect()
}
