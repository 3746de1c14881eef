//! Multi-level cascade attention, planned: the levels a caller describes (FlashInfer's
//! `MultiLevelCascadeAttentionWrapper` form) checked and turned into one batch-prefill batch
//! per level. Pure host code, shared by the GPU op (`ops::cascade`) and its CPU twin
//! (`cpu::cascade`).
//!
//! Every level partitions the same `N` query tokens into contiguous groups (its `qo_indptr`)
//! and gives each group a KV page list (its [`BatchPages`] entry): level 0 usually one group,
//! the prefix every request shares; the last level one group per request, the request's own
//! tokens. Each group's keys are attended once by all its queries and the levels' states are
//! merged, which equals attention over each request's concatenated context: level 0's keys,
//! then its level-1 group's keys, ..., then its own. Levels must nest — each group of level
//! `i + 1` lies inside one group of level `i` — so that every request's levels form one chain
//! of prefixes.
//!
//! Upper levels are not causal (a shared prefix lies entirely before every query that shares
//! it); the last level is causal when the op is, with its queries the last tokens of each
//! request's own keys, as in batch prefill. Because an upper-level group's queries are not
//! positions of its keys, a group may hold more queries than keys; the prefill planner wants
//! `qo_len ≤ kv_len`, so such a group is cut into several prefill requests of at most
//! `kv_len` queries over the same pages (non-causal, so the cut changes nothing).
use super::MAX_PLAN_ENTRIES;
use crate::checked;
use crate::error::{Error, Result};
use crate::kv::BatchPages;
use crate::validate;

/// One level of a cascade, as the caller describes it.
#[derive(Clone, Copy, Debug)]
pub struct CascadeLevel<'a> {
    /// `[groups + 1]`: group `g` holds query tokens `qo_indptr[g]..qo_indptr[g + 1]`; the last
    /// entry is the step's query-token count, the same at every level.
    pub qo_indptr: &'a [i32],
    /// The groups' KV pages (entry `g`: group `g`'s keys).
    pub pages: &'a BatchPages,
}

/// One level as batch prefill runs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LevelBatch {
    /// Query offsets of the level's prefill requests (over the same `N` query tokens).
    pub qo_indptr: Vec<i32>,
    /// Their pages.
    pub pages: BatchPages,
    /// Whether the level is masked causally (only the last level, and only for a causal op).
    pub causal: bool,
}

/// Checks `levels` against a pool of `num_pages` pages of `page_size` and returns one prefill
/// batch per level, in order; `causal` is the op's mask. Errors (`op` names the caller):
/// no level, a malformed `qo_indptr` or page table, levels of different query counts
/// ([`Error::Shape`]), levels that do not nest, a group with queries but no keys above the
/// last level, a last-level request with more queries than keys ([`Error::InvalidArgument`]).
pub fn plan(
    op: &'static str,
    levels: &[CascadeLevel<'_>],
    page_size: usize,
    num_pages: usize,
    causal: bool,
) -> Result<Vec<LevelBatch>> {
    let Some(first) = levels.first() else {
        return Err(Error::invalid(
            op,
            "levels",
            "a cascade needs at least one level",
        ));
    };
    let total = first.qo_indptr.last().copied().unwrap_or(0);
    for (i, l) in levels.iter().enumerate() {
        validate::qo_indptr(op, l.qo_indptr, l.pages.batch_size())?;
        l.pages.validate(op, page_size, Some(num_pages))?;
        let n = l.qo_indptr.last().copied().unwrap_or(0);
        if n != total {
            return Err(Error::shape(
                op,
                "level query tokens (last qo_indptr entry)",
                format!("{total} (level 0)"),
                format!("{n} (level {i})"),
            ));
        }
    }
    for (i, pair) in levels.windows(2).enumerate() {
        check_nested(op, i, pair[0].qo_indptr, pair[1].qo_indptr)?;
    }
    let last = levels.len() - 1;
    levels
        .iter()
        .enumerate()
        .map(|(i, l)| level_batch(op, i, l, page_size, i == last, causal && i == last))
        .collect()
}

/// Every group boundary of the upper level is a boundary of the lower one, so each lower group
/// lies inside one upper group.
fn check_nested(op: &'static str, upper: usize, a: &[i32], b: &[i32]) -> Result<()> {
    // Both are non-decreasing (checked), so one merge-like walk finds every boundary.
    let mut j = 0;
    for &x in a {
        while j < b.len() && b[j] < x {
            j += 1;
        }
        if b.get(j) != Some(&x) {
            return Err(Error::invalid(
                op,
                "levels",
                format!(
                    "level {} does not nest in level {upper}: its groups cross query {x}, a \
                     group boundary of level {upper}",
                    upper + 1
                ),
            ));
        }
    }
    Ok(())
}

/// Level `i` as a prefill batch: the last level as given; an upper level without its empty
/// groups and with every group cut into requests of at most its key count.
fn level_batch(
    op: &'static str,
    i: usize,
    l: &CascadeLevel<'_>,
    page_size: usize,
    last: bool,
    causal: bool,
) -> Result<LevelBatch> {
    let groups = l.pages.batch_size();
    let mut requests = 0usize;
    for g in 0..groups {
        let q = (l.qo_indptr[g + 1] - l.qo_indptr[g]) as usize;
        let k = l.pages.kv_len(g, page_size)?;
        if last {
            if q > k {
                return Err(Error::invalid(
                    op,
                    "qo_len",
                    format!("last level, request {g}: {q} queries > {k} keys"),
                ));
            }
            continue;
        }
        if q > 0 && k == 0 {
            return Err(Error::invalid(
                op,
                "pages",
                format!("level {i}, group {g}: {q} queries share an empty prefix"),
            ));
        }
        requests = requests.saturating_add(q.div_ceil(k.max(1)));
    }
    if last {
        return Ok(LevelBatch {
            qo_indptr: l.qo_indptr.to_vec(),
            pages: l.pages.clone(),
            causal,
        });
    }
    checked::at_most(
        op,
        "cascade prefill requests (MAX_PLAN_ENTRIES)",
        requests,
        MAX_PLAN_ENTRIES,
    )?;
    let mut out = LevelBatch {
        qo_indptr: checked::with_capacity(op, "qo_indptr", requests + 1)?,
        pages: BatchPages {
            kv_indptr: checked::with_capacity(op, "kv_indptr", requests + 1)?,
            kv_indices: Vec::new(),
            kv_last_page_len: checked::with_capacity(op, "kv_last_page_len", requests)?,
        },
        causal,
    };
    out.qo_indptr.push(0);
    out.pages.kv_indptr.push(0);
    for g in 0..groups {
        let (q0, q1) = (l.qo_indptr[g], l.qo_indptr[g + 1]);
        let k = l.pages.kv_len(g, page_size)?;
        let ids =
            &l.pages.kv_indices[l.pages.kv_indptr[g] as usize..l.pages.kv_indptr[g + 1] as usize];
        let mut t = q0;
        while t < q1 {
            // k ≥ 1 here (checked above) and k < 2^31 (the page table's check).
            t = (t as i64 + k as i64).min(q1 as i64) as i32;
            out.qo_indptr.push(t);
            checked::reserve(&mut out.pages.kv_indices, op, "kv_indices", ids.len())?;
            out.pages.kv_indices.extend_from_slice(ids);
            let n = checked::to_i32(op, "kv_indices", out.pages.kv_indices.len())?;
            out.pages.kv_indptr.push(n);
            out.pages.kv_last_page_len.push(l.pages.kv_last_page_len[g]);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pages(lens: &[usize], page_size: usize) -> BatchPages {
        let mut p = BatchPages {
            kv_indptr: vec![0],
            ..Default::default()
        };
        let mut next = 0;
        for &l in lens {
            let n = l.div_ceil(page_size) as i32;
            p.kv_indices.extend(next..next + n);
            next += n;
            p.kv_indptr.push(next);
            p.kv_last_page_len.push(if l == 0 {
                0
            } else {
                ((l - 1) % page_size + 1) as i32
            });
        }
        p
    }

    #[test]
    fn nesting_and_expansion() {
        // 4 requests × 3 queries; level 0 shares 2 keys, level 1 two groups, level 2 own keys.
        let (p0, p1, p2) = (pages(&[2], 4), pages(&[5, 9], 4), pages(&[3, 3, 4, 6], 4));
        let levels = [
            CascadeLevel {
                qo_indptr: &[0, 12],
                pages: &p0,
            },
            CascadeLevel {
                qo_indptr: &[0, 6, 12],
                pages: &p1,
            },
            CascadeLevel {
                qo_indptr: &[0, 3, 6, 9, 12],
                pages: &p2,
            },
        ];
        let b = plan("t", &levels, 4, 64, true).unwrap();
        // Level 0: 12 queries over 2 keys → 6 requests of 2 over the same page.
        assert_eq!(b[0].qo_indptr, [0, 2, 4, 6, 8, 10, 12]);
        assert_eq!(b[0].pages.kv_indices, [0; 6]);
        assert!(!b[0].causal && !b[1].causal && b[2].causal);
        // Level 1: 6 queries over 5 keys → 5 + 1; 6 over 9 → one request.
        assert_eq!(b[1].qo_indptr, [0, 5, 6, 12]);
        assert_eq!(b[1].pages.kv_indptr, [0, 2, 4, 7]);
        assert_eq!(b[2].qo_indptr, [0, 3, 6, 9, 12]);
        // Level 1 crossing level 0's boundary at 6.
        let p0b = pages(&[2, 2], 4);
        let bad = [
            CascadeLevel {
                qo_indptr: &[0, 6, 12],
                pages: &p0b,
            },
            CascadeLevel {
                qo_indptr: &[0, 3, 9, 12],
                pages: &pages(&[3, 3, 4], 4),
            },
        ];
        assert!(matches!(
            plan("t", &bad, 4, 64, true),
            Err(Error::InvalidArgument { .. })
        ));
        // Different query counts.
        let short = [
            CascadeLevel {
                qo_indptr: &[0, 11],
                pages: &p0,
            },
            CascadeLevel {
                qo_indptr: &[0, 3, 6, 9, 12],
                pages: &p2,
            },
        ];
        assert!(matches!(
            plan("t", &short, 4, 64, true),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            plan("t", &[], 4, 64, true),
            Err(Error::InvalidArgument { .. })
        ));
    }
}
