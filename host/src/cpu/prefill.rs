//! CPU single-request prefill: each query token is a decode over the keys its masks allow
//! (the causal bound becomes the sequence length, the window is re-expressed relative to it),
//! so prefill shares the decode path's math. Semantics as [`crate::ops::SinglePrefill`].
use rayon::prelude::*;

use super::KvStrides;
use crate::dtype::Float16;
use crate::error::{Error, Result};
use crate::heads::HeadConfig;
use crate::options::AttentionOptions;

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
    heads.validate(OP)?;
    opts.validate(OP)?;
    if qo_len > kv_len {
        return Err(Error::invalid(
            OP,
            "qo_len",
            format!("{qo_len} > kv_len {kv_len}"),
        ));
    }
    let row = heads.num_qo_heads * heads.head_dim;
    let n = qo_len.checked_mul(row).ok_or(Error::Overflow {
        op: OP,
        what: "q elements",
    })?;
    if q.len() < n || out.len() < n {
        return Err(Error::shape(
            OP,
            "q/out elements",
            format!(">= {n}"),
            q.len().min(out.len()),
        ));
    }
    let nkv = kv_len * heads.num_kv_heads * heads.head_dim;
    if k.len() < nkv || v.len() < nkv {
        return Err(Error::shape(
            OP,
            "k/v elements",
            format!(">= {nkv}"),
            k.len().min(v.len()),
        ));
    }
    let hq = heads.num_qo_heads;

    if let Some(l) = lse.as_deref() {
        if l.len() < qo_len * hq {
            return Err(Error::shape(
                OP,
                "lse elements",
                format!(">= {}", qo_len * hq),
                l.len(),
            ));
        }
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
        super::single_decode(heads, &o2, &q[t * row..(t + 1) * row], k, s, v, s, hi, o, l)
    };
    let results: Vec<Result<()>> = match lse {
        Some(l) => out[..n]
            .par_chunks_mut(row)
            .zip(l[..qo_len * hq].par_chunks_mut(hq))
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
