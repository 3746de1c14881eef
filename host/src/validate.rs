//! Input checks shared by the GPU ops (`ops/`) and the CPU backend (`cpu/`): one rule per
//! input, one typed error ([`Error`]) per failure, whichever backend runs.
//!
//! Checks that only one backend needs (a device buffer's context, a kernel's launch limits)
//! stay with that backend; everything about the caller's batch description lives here.
use crate::error::{Error, Result};
use crate::heads::HeadConfig;
use crate::kv::KvPoolConfig;
use crate::ops::single_decode::KvStrides;
use crate::options::AttentionOptions;

/// `Err(Shape)` unless a buffer of `len` elements holds the `need` that `what` requires.
pub(crate) fn at_least(
    op: &'static str,
    what: &'static str,
    need: usize,
    len: usize,
) -> Result<()> {
    if len < need {
        return Err(Error::shape(op, what, format!(">= {need}"), len));
    }
    Ok(())
}

/// A context length the kernels and the CPU backend index in `i32`: at most 2^31 − 1.
pub(crate) fn kv_len(op: &'static str, kv_len: usize) -> Result<()> {
    if kv_len > i32::MAX as usize {
        return Err(Error::invalid(
            op,
            "kv_len",
            format!("{kv_len} exceeds 2^31-1"),
        ));
    }
    Ok(())
}

/// A K or V tensor of `len` elements (`what`: "k elements" or "v elements") holds `kv_len`
/// tokens of `heads`' KV heads at `strides`; returns the elements it must hold.
pub(crate) fn kv_extent(
    op: &'static str,
    what: &'static str,
    heads: &HeadConfig,
    strides: KvStrides,
    kv_len: usize,
    len: usize,
) -> Result<usize> {
    let need = strides.required_len(heads, kv_len).ok_or(Error::Overflow {
        op,
        what: "kv extent",
    })?;
    at_least(op, what, need, len)?;
    Ok(need)
}

/// A CSR offset array: starts at 0 and never decreases. With `rows`, its last entry must not
/// exceed `rows` (the rows of the tensor it indexes).
pub(crate) fn indptr(
    op: &'static str,
    what: &'static str,
    indptr: &[i32],
    rows: Option<usize>,
) -> Result<()> {
    if indptr.first() != Some(&0) || indptr.windows(2).any(|w| w[1] < w[0]) {
        return Err(Error::invalid(
            op,
            what,
            "must start at 0 and be non-decreasing",
        ));
    }
    if let (Some(rows), Some(&last)) = (rows, indptr.last()) {
        if last as usize > rows {
            return Err(Error::shape(
                op,
                what,
                format!("last entry ≤ {rows} rows"),
                last,
            ));
        }
    }
    Ok(())
}

/// The offsets of a ragged batch (request `b`: query rows `qo_indptr[b]..qo_indptr[b+1]`, K/V
/// rows `kv_indptr[b]..kv_indptr[b+1]`): two arrays of the same length, at least 1, each a
/// valid [`indptr`] (within `rows = (query rows, K/V rows)` when given), and every request's
/// `qo_len ≤ kv_len` (its queries are the last tokens of its context).
pub(crate) fn ragged_indptr(
    op: &'static str,
    qo_indptr: &[i32],
    kv_indptr: &[i32],
    rows: Option<(usize, usize)>,
) -> Result<()> {
    if qo_indptr.len() != kv_indptr.len() || qo_indptr.is_empty() {
        return Err(Error::shape(
            op,
            "indptr lengths",
            qo_indptr.len(),
            kv_indptr.len(),
        ));
    }
    indptr(op, "qo_indptr", qo_indptr, rows.map(|r| r.0))?;
    indptr(op, "kv_indptr", kv_indptr, rows.map(|r| r.1))?;
    for (b, (q, k)) in qo_indptr.windows(2).zip(kv_indptr.windows(2)).enumerate() {
        let (ql, kl) = (q[1] - q[0], k[1] - k[0]);
        if ql > kl {
            return Err(Error::invalid(
                op,
                "qo_len",
                format!("request {b}: {ql} > kv_len {kl}"),
            ));
        }
    }
    Ok(())
}

/// The query offsets of a paged batch of `batch` requests: `batch + 1` entries, a valid
/// [`indptr`].
pub(crate) fn qo_indptr(op: &'static str, qo_indptr: &[i32], batch: usize) -> Result<()> {
    if qo_indptr.len() != batch + 1 {
        return Err(Error::shape(
            op,
            "qo_indptr length",
            batch + 1,
            qo_indptr.len(),
        ));
    }
    indptr(op, "qo_indptr", qo_indptr, None)
}

/// A paged plan runs on a cache of the page size it was made for, holding at least the pages
/// its page ids were checked against (`planned` and `cache`: page size, page count). The plan
/// validated every page id below its count, so any cache at least that large is safe to read.
pub(crate) fn planned_pages(
    op: &'static str,
    planned: (usize, usize),
    cache: (usize, usize),
) -> Result<()> {
    if cache.0 != planned.0 || cache.1 < planned.1 {
        return Err(Error::invalid(
            op,
            "plan",
            format!(
                "planned for page size {} and page ids below {}, the cache has page size {} and \
                 {} pages",
                planned.0, planned.1, cache.0, cache.1
            ),
        ));
    }
    Ok(())
}

/// A pool of geometry `pool` holds K/V of `heads`' KV heads and head dim.
pub(crate) fn pool_heads(op: &'static str, pool: &KvPoolConfig, heads: &HeadConfig) -> Result<()> {
    if pool.num_kv_heads != heads.num_kv_heads || pool.head_dim != heads.head_dim {
        return Err(Error::shape(
            op,
            "pool heads/head_dim",
            format!("{}/{}", heads.num_kv_heads, heads.head_dim),
            format!("{}/{}", pool.num_kv_heads, pool.head_dim),
        ));
    }
    Ok(())
}

/// Largest query group of the prefill kernels: their tiles pack whole query tokens of
/// `group` rows each into 64 or 128 rows (`tile_tokens = rows / group`), so up to 32 a tile still
/// holds two tokens or more.
pub(crate) const PREFILL_MAX_GROUP: usize = 32;

/// The head geometries the attention kernels are built for: head dims 64, 128 and 256, query
/// groups `1..=max_group` (the op family's: [`PREFILL_MAX_GROUP`], or the decode's, whose
/// kernel choice narrows it further), at most 65535 KV heads (grid.y) and a q row below 2^32
/// elements.
pub(crate) fn kernel_heads(op: &'static str, heads: &HeadConfig, max_group: usize) -> Result<()> {
    if !matches!(heads.head_dim, 64 | 128 | 256) {
        return Err(Error::unsupported(
            op,
            "head_dim",
            format!("{} (supported: 64, 128, 256)", heads.head_dim),
        ));
    }
    if !(1..=max_group).contains(&heads.group()) {
        return Err(Error::unsupported(
            op,
            "group size",
            format!("{} (supported: 1..={max_group})", heads.group()),
        ));
    }
    if heads.num_kv_heads > 65_535 || u32::try_from(heads.num_qo_heads * heads.head_dim).is_err() {
        return Err(Error::Overflow {
            op,
            what: "heads (grid.y holds at most 65535 KV heads)",
        });
    }
    Ok(())
}

/// The options of a kernel launch: [`AttentionOptions::validate`], and a window that fits the
/// kernels' 32-bit `window_left` (`u32::MAX` means no window).
pub(crate) fn kernel_options(op: &'static str, opts: &AttentionOptions) -> Result<()> {
    opts.validate(op)?;
    if let Some(w) = opts.window_left {
        if w >= u32::MAX as usize {
            return Err(Error::invalid(op, "window_left", format!("{w} too large")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indptr_rules() {
        assert!(indptr("t", "x", &[0, 2, 2, 5], Some(5)).is_ok());
        assert!(matches!(
            indptr("t", "x", &[1, 2], None),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            indptr("t", "x", &[0, 3, 2], None),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            indptr("t", "x", &[0, 6], Some(5)),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            ragged_indptr("t", &[0, 2], &[0, 2, 3], None),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            ragged_indptr("t", &[0, 3], &[0, 2], None),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(ragged_indptr("t", &[0, 2, 3], &[0, 4, 5], Some((3, 5))).is_ok());
        assert!(matches!(
            qo_indptr("t", &[0, 1], 2),
            Err(Error::Shape { .. })
        ));
    }
}
