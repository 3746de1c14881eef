//! The batch-prefill planner: a pure function from the step's (qo_len, kv_len) pairs to work
//! items (request, query tile, KV chunk), the split-KV partial slots and the merge rows.
//!
//! A query tile holds `tile_tokens` whole query tokens of one request (all heads of a KV head's
//! group: GQA rows are packed). Its natural key range is what any of its rows may see under the
//! mask ([`tile_keys`], mirrored by `kernels-gpu/src/prefill.rs`). When the tiles alone cannot
//! fill the GPU (`tiles × kv_heads < max_ctas`), each tile's range is cut into chunks of one
//! balanced length so that about one wave of CTAs runs; the chunks of a tile write normalised
//! partial states to consecutive slots, and one merge row per query token combines them.
//! Items are ordered longest first, so the long causal tiles start early and the short ones
//! fill the tail of the wave.
use ferrinfer_kernels::abi::PrefillItem;

use super::MAX_PLAN_ENTRIES;
use crate::checked::{self, I32_LIMIT};
use crate::error::{Error, Result};

/// The step to plan.
#[derive(Clone, Copy, Debug)]
pub struct PrefillProblem<'a> {
    /// Query tokens per request.
    pub qo_lens: &'a [usize],
    /// Key/value tokens per request (`≥ qo_len`; the queries are the last positions).
    pub kv_lens: &'a [usize],
    /// Query tokens per tile.
    pub tile_tokens: usize,
    /// Causal mask.
    pub causal: bool,
    /// Sliding window (keys `j ≥ pos − w`).
    pub window_left: Option<usize>,
    /// KV heads (CTAs per item).
    pub num_kv_heads: usize,
    /// CTAs the device runs at once for the kernel.
    pub max_ctas: usize,
    /// Shortest chunk worth splitting to (keys).
    pub min_chunk: usize,
    /// Chunk lengths are multiples of this (the kernel's KV tile).
    pub chunk_align: usize,
    /// A fixed chunk length (`usize::MAX`: never split); `None` lets the planner choose.
    pub fixed_chunk: Option<usize>,
    /// CUDA-graph mode: the item capacity of the plan's buffers.
    pub max_items: Option<usize>,
    /// CUDA-graph mode: the partial-slot capacity of the plan's buffers.
    pub max_slots: Option<usize>,
}

/// The partition of one step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrefillPlan {
    /// Work items in launch order (longest first).
    pub items: Vec<PrefillItem>,
    /// `(output token, first slot, slots)` per query token of a split tile.
    pub merge_rows: Vec<[u32; 3]>,
    /// Partial slots used (one per (token, chunk) of split tiles).
    pub num_slots: usize,
    /// Chunk length (keys) of split tiles; `usize::MAX` when nothing is split.
    pub chunk: usize,
    /// Query tiles.
    pub num_tiles: usize,
}

impl PrefillPlan {
    /// Whether any tile is split (the merge kernel has work).
    pub fn split(&self) -> bool {
        !self.merge_rows.is_empty()
    }
}

/// Keys `[begin, end)` that some row of the tile of query tokens `[t0, t0 + tokens)` may see.
/// Saturating: with `qo_len > kv_len` (which the planner refuses) the queries are taken to
/// start at position 0, never at a wrapped offset.
pub fn tile_keys(
    qo_len: usize,
    kv_len: usize,
    t0: usize,
    tokens: usize,
    causal: bool,
    window_left: Option<usize>,
) -> (usize, usize) {
    let offset = kv_len.saturating_sub(qo_len);
    let end = if causal {
        offset.saturating_add(t0).saturating_add(tokens).min(kv_len)
    } else {
        kv_len
    };
    let begin = window_left.map_or(0, |w| offset.saturating_add(t0).saturating_sub(w));
    (begin, end.max(begin))
}

/// One tile before chunking.
struct Tile {
    request: u32,
    t0: u32,
    tokens: u32,
    begin: usize,
    end: usize,
    qo_begin: usize,
}

/// Plans a step. Errors: `qo_len > kv_len`, lengths beyond `u32`, or (graph mode) more items
/// than the plan holds even unsplit.
pub fn plan(p: &PrefillProblem<'_>) -> Result<PrefillPlan> {
    const OP: &str = "batch_prefill plan";
    if p.qo_lens.len() != p.kv_lens.len() {
        return Err(Error::shape(
            OP,
            "kv_lens length",
            p.qo_lens.len(),
            p.kv_lens.len(),
        ));
    }
    if p.tile_tokens == 0 || p.chunk_align == 0 {
        return Err(Error::invalid(
            OP,
            "tile",
            "tile_tokens and chunk_align must be positive",
        ));
    }
    const LIMIT: &str = "plan entries (MAX_PLAN_ENTRIES)";
    // Sized first, so that no table grows past the limit or aborts on allocation.
    let mut n_tiles = 0usize;
    for (&q, &k) in p.qo_lens.iter().zip(p.kv_lens) {
        n_tiles = n_tiles.saturating_add(q.min(k).div_ceil(p.tile_tokens));
    }
    checked::at_most(OP, LIMIT, n_tiles, MAX_PLAN_ENTRIES)?;
    let mut tiles = checked::with_capacity(OP, "query tiles", n_tiles)?;
    let mut qo_begin = 0usize;
    let mut total = 0usize;
    for (b, (&q, &k)) in p.qo_lens.iter().zip(p.kv_lens).enumerate() {
        if q > k {
            return Err(Error::invalid(
                OP,
                "qo_len",
                format!("request {b}: {q} > kv_len {k}"),
            ));
        }
        if k > I32_LIMIT || qo_begin.saturating_add(q) > I32_LIMIT {
            return Err(Error::Overflow {
                op: OP,
                what: "lengths (2^31 tokens)",
            });
        }
        let mut t0 = 0;
        while t0 < q {
            let tokens = p.tile_tokens.min(q - t0);
            let (begin, end) = tile_keys(q, k, t0, tokens, p.causal, p.window_left);
            total = checked::add(OP, "keys", total, end - begin)?;
            tiles.push(Tile {
                request: b as u32,
                t0: t0 as u32,
                tokens: tokens as u32,
                begin,
                end,
                qo_begin,
            });
            t0 += tokens;
        }
        qo_begin += q;
    }
    let budget = (p.max_ctas / p.num_kv_heads.max(1)).max(1);
    let cap = p.max_items.unwrap_or(usize::MAX);
    if tiles.len() > cap {
        return Err(Error::invalid(
            OP,
            "plan",
            format!("{} query tiles exceed the plan's {cap} items", tiles.len()),
        ));
    }
    let align_up = |x: usize| x.div_ceil(p.chunk_align).saturating_mul(p.chunk_align);
    let longest = tiles.iter().map(|t| t.end - t.begin).max().unwrap_or(0);
    let mut chunk = match p.fixed_chunk {
        Some(c) => align_up(c.max(1)),
        None if tiles.len() < budget && total > 0 => {
            align_up(total.div_ceil(budget).max(p.min_chunk))
        }
        None => usize::MAX,
    };
    // Graph mode: lengthen the chunk until items and partial slots fit the plan's buffers.
    let slot_cap = p.max_slots.unwrap_or(usize::MAX);
    // (items, partial slots) of chunk length `c`, saturating (only compared with limits).
    let sizes = |c: usize| -> (usize, usize) {
        let (mut items, mut slots) = (0usize, 0usize);
        for t in &tiles {
            let n = (t.end - t.begin).div_ceil(c).max(1);
            items = items.saturating_add(n);
            if n > 1 {
                slots = slots.saturating_add((t.tokens as usize).saturating_mul(n));
            }
        }
        (items, slots)
    };
    let fits = |c: usize| -> bool {
        let (items, slots) = sizes(c);
        items <= cap && slots <= slot_cap
    };
    while chunk < longest && !fits(chunk) {
        chunk = align_up(chunk.saturating_mul(2));
    }
    if chunk >= longest {
        chunk = usize::MAX;
    }
    let (n_items, n_slots) = sizes(chunk);
    checked::at_most(OP, LIMIT, n_items, MAX_PLAN_ENTRIES)?;
    checked::to_u32(OP, "split-KV partial slots", n_slots)?;
    // Merge rows: one per query token of a split tile (≤ the tiles' tokens).
    let n_rows = tiles
        .iter()
        .map(|t| t.tokens as usize)
        .fold(0usize, usize::saturating_add);
    checked::at_most(OP, LIMIT, n_rows, MAX_PLAN_ENTRIES)?;
    let mut items = checked::with_capacity(OP, "work items", n_items)?;
    let mut merge_rows = Vec::new();
    let mut slots = 0usize;
    let mut lens = checked::with_capacity(OP, "work items", n_items)?;
    for t in &tiles {
        let len = t.end - t.begin;
        let n = if chunk == usize::MAX {
            1
        } else {
            len.div_ceil(chunk).max(1)
        };
        let part = if n > 1 {
            checked::reserve(&mut merge_rows, OP, "merge rows", t.tokens as usize)?;
            let part = slots;
            slots += t.tokens as usize * n;
            for i in 0..t.tokens as usize {
                merge_rows.push([
                    (t.qo_begin + t.t0 as usize + i) as u32,
                    (part + i * n) as u32,
                    n as u32,
                ]);
            }
            part as u32
        } else {
            u32::MAX
        };
        for c in 0..n {
            let (b, e) = if n == 1 {
                (t.begin, t.end)
            } else {
                (t.begin + c * chunk, (t.begin + (c + 1) * chunk).min(t.end))
            };
            items.push(PrefillItem {
                request: t.request,
                t0: t.t0,
                kv_begin: b as u32,
                kv_end: e as u32,
                part,
                chunk: c as u32,
                nchunks: n as u32,
                pad: 0,
            });
            lens.push(e - b);
        }
    }
    if slots > u32::MAX as usize {
        return Err(Error::Overflow {
            op: OP,
            what: "split-KV partial slots",
        });
    }
    // Longest first (stable: equal lengths keep request/tile order).
    let mut order = checked::collect(OP, "work items", items.len(), 0..items.len())?;
    order.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
    let items = checked::collect(
        OP,
        "work items",
        order.len(),
        order.into_iter().map(|i| items[i]),
    )?;
    Ok(PrefillPlan {
        items,
        merge_rows,
        num_slots: slots,
        chunk,
        num_tiles: tiles.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn problem<'a>(q: &'a [usize], k: &'a [usize], causal: bool) -> PrefillProblem<'a> {
        PrefillProblem {
            qo_lens: q,
            kv_lens: k,
            tile_tokens: 16,
            causal,
            window_left: None,
            num_kv_heads: 8,
            max_ctas: 264,
            min_chunk: 256,
            chunk_align: 64,
            fixed_chunk: None,
            max_items: None,
            max_slots: None,
        }
    }

    /// Keys query token `t` of a request may see.
    fn visible(q: usize, k: usize, t: usize, causal: bool, w: Option<usize>) -> (usize, usize) {
        let pos = k - q + t;
        let end = if causal { pos + 1 } else { k };
        let begin = w.map_or(0, |w| pos.saturating_sub(w));
        (begin, end)
    }

    /// Every (token, visible key) pair is covered by exactly one item; split tiles have their
    /// merge rows and disjoint slots.
    fn check_coverage(p: &PrefillProblem<'_>, plan: &PrefillPlan) {
        let mut qo_begin = 0;
        let mut slot_seen = vec![false; plan.num_slots];
        for (b, (&q, &k)) in p.qo_lens.iter().zip(p.kv_lens).enumerate() {
            for t in 0..q {
                let (vb, ve) = visible(q, k, t, p.causal, p.window_left);
                let mut cover = vec![0u32; k];
                let mut chunks = None;
                for it in plan.items.iter().filter(|it| it.request as usize == b) {
                    let t0 = it.t0 as usize;
                    if t < t0 || t >= t0 + p.tile_tokens {
                        continue;
                    }
                    assert_eq!(*chunks.get_or_insert(it.nchunks), it.nchunks);
                    for c in cover
                        .iter_mut()
                        .take(it.kv_end as usize)
                        .skip(it.kv_begin as usize)
                    {
                        *c += 1;
                    }
                    if it.part != u32::MAX {
                        let s = (it.part + (t - t0) as u32 * it.nchunks + it.chunk) as usize;
                        assert!(!slot_seen[s], "slot {s} written twice");
                        slot_seen[s] = true;
                    }
                }
                for (key, &c) in cover.iter().enumerate() {
                    if key >= vb && key < ve {
                        assert_eq!(c, 1, "request {b} token {t} key {key}");
                    } else {
                        assert!(c <= 1);
                    }
                }
                let n = chunks.expect("token without an item");
                let rows: Vec<_> = plan
                    .merge_rows
                    .iter()
                    .filter(|r| r[0] as usize == qo_begin + t)
                    .collect();
                if n > 1 {
                    assert_eq!(rows.len(), 1);
                    assert_eq!(rows[0][2], n);
                } else {
                    assert!(rows.is_empty());
                }
            }
            qo_begin += q;
        }
        assert!(slot_seen.iter().all(|&s| s), "unused partial slots");
    }

    #[test]
    fn long_single_request_is_not_split_and_runs_longest_first() {
        let (q, k) = ([4096], [4096]);
        let p = problem(&q, &k, true);
        let plan = plan(&p).unwrap();
        assert_eq!(plan.num_tiles, 256);
        assert!(!plan.split());
        let lens: Vec<u32> = plan.items.iter().map(|i| i.kv_end - i.kv_begin).collect();
        assert!(lens.windows(2).all(|w| w[0] >= w[1]));
        assert_eq!(lens[0], 4096);
        check_coverage(&p, &plan);
    }

    #[test]
    fn small_batch_is_split_into_about_one_wave() {
        let (q, k) = ([16], [8192]);
        let p = problem(&q, &k, true);
        let plan = plan(&p).unwrap();
        assert!(plan.split());
        let items = plan.items.len();
        assert!(items * 8 <= 264 + 8 && items * 8 >= 132, "{items} items");
        let lens: Vec<u32> = plan.items.iter().map(|i| i.kv_end - i.kv_begin).collect();
        assert!(*lens.iter().max().unwrap() as usize <= plan.chunk);
        check_coverage(&p, &plan);
    }

    #[test]
    fn graph_capacity_lengthens_chunks() {
        let (q, k) = ([16], [8192]);
        let mut p = problem(&q, &k, true);
        p.max_items = Some(4);
        let plan = plan(&p).unwrap();
        assert!(plan.items.len() <= 4);
        check_coverage(&p, &plan);
        p.max_items = None;
        p.max_slots = Some(16 * 3);
        let plan = super::plan(&p).unwrap();
        assert!(plan.num_slots <= 48);
        check_coverage(&p, &plan);
        p.max_items = Some(0);
        assert!(super::plan(&p).is_err());
    }

    #[test]
    fn bad_lengths_are_errors() {
        let (q, k) = ([5], [4]);
        assert!(plan(&problem(&q, &k, true)).is_err());
        let (q, k) = ([5, 1], [6]);
        assert!(plan(&problem(&q, &k, true)).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn every_visible_pair_is_covered_once(
            reqs in prop::collection::vec((0usize..300, 0usize..700), 1..6),
            causal in any::<bool>(),
            window in prop::option::of(0usize..300),
            tile in prop::sample::select(vec![8usize, 16, 21, 32, 64]),
            fixed in prop::option::of(1usize..400),
            max_ctas in 1usize..600,
        ) {
            let q: Vec<usize> = reqs.iter().map(|&(a, b)| a.min(a + b)).collect();
            let k: Vec<usize> = reqs.iter().map(|&(a, b)| a + b).collect();
            let p = PrefillProblem {
                qo_lens: &q,
                kv_lens: &k,
                tile_tokens: tile,
                causal,
                window_left: window,
                num_kv_heads: 2,
                max_ctas,
                min_chunk: 64,
                chunk_align: 64,
                fixed_chunk: fixed,
                max_items: None,
                max_slots: None,
            };
            let plan = plan(&p).unwrap();
            check_coverage(&p, &plan);
            // Balance: no item is longer than the chunk (when split) or than its tile.
            if plan.split() {
                prop_assert!(plan.items.iter().all(|i| (i.kv_end - i.kv_begin) as usize <= plan.chunk));
            }
        }
    }
}
