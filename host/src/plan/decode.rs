//! The batch-decode planner (host, pure): decides the split-KV work partition once per step;
//! every layer's `run` reuses it. Learned from FlashInfer's `DecodePlan` (scheduler.cuh), in our
//! own form, described here.
//!
//! A *work item* is (request, KV chunk). Without split there is one item per request; with
//! split, request `b` of `L_b` tokens gets `ceil(L_b / chunk)` items, so that
//! `num_kv_heads × items ≤ max_ctas` and the CTAs are balanced (no item longer than `chunk`).
//! Items of one request are contiguous; `merge_indptr[b]..merge_indptr[b+1]` lists them, and the
//! merge kernel folds their partial states (only for requests with more than one item).

use super::MAX_PLAN_ENTRIES;
use crate::checked;
use crate::error::{Error, Result};

const OP: &str = "decode_plan";

/// What the planner needs to know about one step.
#[derive(Clone, Debug)]
pub struct DecodeProblem<'a> {
    /// Tokens attended by each request (after any sliding-window clipping).
    pub kv_lens: &'a [usize],
    /// KV heads (CTAs per work item).
    pub num_kv_heads: usize,
    /// CTAs the device runs at once for this kernel (SMs × resident CTAs per SM).
    pub max_ctas: usize,
    /// Smallest chunk worth splitting into (tokens).
    pub min_chunk: usize,
    /// Chunk lengths are rounded up to a multiple of this (tokens per CTA iteration).
    pub chunk_align: usize,
    /// Fixed chunk length (deterministic results independent of batch composition), if set.
    pub fixed_chunk: Option<usize>,
    /// CUDA-graph mode: the grid is padded to this many work items (≥ what any batch of the
    /// wrapper's maximum size needs); padded items are skipped in the kernel.
    pub graph_items: Option<usize>,
}

/// The work partition of one step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecodePlan {
    /// Chunk length in tokens (∞ = `usize::MAX` when not split).
    pub chunk_len: usize,
    /// Whether any request is split.
    pub split: bool,
    /// `[items]` request of each work item.
    pub request: Vec<u32>,
    /// `[items]` first token of each work item.
    pub kv_begin: Vec<u32>,
    /// `[items]` one past the last token of each work item.
    pub kv_end: Vec<u32>,
    /// `[batch + 1]` work items of each request (contiguous runs).
    pub merge_indptr: Vec<u32>,
    /// Grid size in work items (≥ `request.len()`; larger in graph mode).
    pub grid_items: usize,
}

impl DecodePlan {
    /// Number of real work items.
    pub fn num_items(&self) -> usize {
        self.request.len()
    }
}

/// Work items of `lens` cut into chunks of `chunk` (saturating: only compared with limits).
fn items_for(lens: &[usize], chunk: usize) -> usize {
    lens.iter()
        .map(|&l| l.div_ceil(chunk.max(1)).max(1))
        .fold(0usize, usize::saturating_add)
}

/// Extra cost (in tokens of the critical path) charged to a split plan: the fused merge's
/// fence and ticket, plus [`SPLIT_PENALTY_PER_CHUNK`] per partial it folds.
const SPLIT_PENALTY_TOKENS: usize = 64;

/// Per-partial share of the split penalty (tokens).
const SPLIT_PENALTY_PER_CHUNK: usize = 2;

/// Most chunks a request is cut into.
const MAX_SPLIT: usize = 64;

/// Fixed per-CTA cost in tokens (q load, cross-slot merge, output writes), so that the model
/// does not cut requests into ever smaller chunks.
const CTA_OVERHEAD_TOKENS: usize = 64;

/// Fraction of the resident CTA slots that already saturates memory bandwidth: a (last) wave
/// filled less than this costs as much as one filled this far.
const SATURATING_FILL_MILLI: usize = 600;

/// Picks the chunk length minimising a wave model of the kernel's time:
/// `effective_waves × (min(chunk, max_len) + CTA_OVERHEAD_TOKENS)` plus a split penalty, where
/// `effective_waves` counts full waves of resident CTAs plus the last partial wave at no less
/// than [`SATURATING_FILL_MILLI`] (a memory-bound kernel streams at full speed from about 60 %
/// of the slots, so a thin last wave is cheaper than a full one, but not free). This splits
/// small batches until the GPU is busy, and trades a thin tail wave against more, shorter
/// chunks. Measured on the H100 (32 q / 8 KV heads, D = 128): it picks the faster of "split"
/// and "no split" on the benchmark shapes. Ties go to fewer work items. `usize::MAX` means no
/// split.
fn choose_chunk(p: &DecodeProblem<'_>, max_len: usize) -> usize {
    let a = p.chunk_align;
    let mut best = (usize::MAX, usize::MAX, usize::MAX); // (cost, items, chunk)
    for n in 1..=MAX_SPLIT {
        let chunk = if n == 1 {
            usize::MAX
        } else {
            max_len.div_ceil(n).div_ceil(a).max(1).saturating_mul(a)
        };
        if n > 1 && (chunk < p.min_chunk || chunk >= max_len) {
            continue;
        }
        // The cost model saturates: its inputs are caller-supplied and only compared.
        let ctas_needed = n
            .saturating_mul(p.kv_lens.len())
            .saturating_mul(p.num_kv_heads);
        if n > 1 && ctas_needed > p.max_ctas.saturating_mul(8) {
            break; // every further candidate needs more than 8 waves
        }
        let items = if n == 1 {
            p.kv_lens.len().max(1)
        } else {
            items_for(p.kv_lens, chunk)
        };
        if p.graph_items.is_some_and(|g| items > g) {
            continue;
        }
        // Waves in thousandths.
        let w = items.saturating_mul(p.num_kv_heads).saturating_mul(1000) / p.max_ctas;
        let (full, frac) = (w / 1000, w % 1000);
        let waves = full.saturating_mul(1000).saturating_add(if frac > 0 {
            frac.max(SATURATING_FILL_MILLI)
        } else {
            0
        });
        let cost = (waves.saturating_mul(chunk.min(max_len.max(1)) + CTA_OVERHEAD_TOKENS) / 1000)
            .saturating_add(if n > 1 {
                SPLIT_PENALTY_TOKENS + SPLIT_PENALTY_PER_CHUNK * n
            } else {
                0
            });
        if (cost, items) < (best.0, best.1) {
            best = (cost, items, chunk);
        }
    }
    best.2
}

/// Plans one step: O(B · MAX_SPLIT).
pub fn plan(p: &DecodeProblem<'_>) -> Result<DecodePlan> {
    let b = p.kv_lens.len();
    if p.num_kv_heads == 0 || p.max_ctas == 0 || p.chunk_align == 0 {
        return Err(Error::invalid(
            OP,
            "problem",
            "num_kv_heads, max_ctas and chunk_align must be positive",
        ));
    }
    if b > u32::MAX as usize || p.kv_lens.iter().any(|&l| l > i32::MAX as usize) {
        return Err(Error::Overflow {
            op: OP,
            what: "batch or kv_len",
        });
    }
    let max_len = p.kv_lens.iter().copied().max().unwrap_or(0);
    let align = |c: usize| {
        c.div_ceil(p.chunk_align)
            .max(1)
            .saturating_mul(p.chunk_align)
    };
    let chunk = match p.fixed_chunk {
        Some(c) if c >= i32::MAX as usize => usize::MAX,
        Some(c) => align(c.max(1)),
        None => choose_chunk(p, max_len),
    };
    // Every table is sized and allocated (fallibly) before it is filled.
    let items = if chunk == usize::MAX {
        b
    } else {
        items_for(p.kv_lens, chunk)
    };
    checked::at_most(OP, "work items (MAX_PLAN_ENTRIES)", items, MAX_PLAN_ENTRIES)?;
    let mut plan = DecodePlan {
        chunk_len: chunk,
        merge_indptr: checked::with_capacity(OP, "merge_indptr", b + 1)?,
        request: checked::with_capacity(OP, "work items", items)?,
        kv_begin: checked::with_capacity(OP, "work items", items)?,
        kv_end: checked::with_capacity(OP, "work items", items)?,
        ..Default::default()
    };
    plan.merge_indptr.push(0);
    for (r, &len) in p.kv_lens.iter().enumerate() {
        let n = if chunk == usize::MAX {
            1
        } else {
            len.div_ceil(chunk).max(1)
        };
        for c in 0..n {
            // c · chunk < len ≤ 2^31 − 1 (checked above).
            let begin = if chunk == usize::MAX { 0 } else { c * chunk };
            let end = if chunk == usize::MAX {
                len
            } else {
                begin.saturating_add(chunk).min(len)
            };
            plan.request.push(r as u32);
            plan.kv_begin.push(begin as u32);
            plan.kv_end.push(end as u32);
        }
        plan.split |= n > 1;
        plan.merge_indptr.push(plan.request.len() as u32);
    }
    plan.grid_items = plan.request.len();
    if let Some(g) = p.graph_items {
        if g < plan.grid_items {
            return Err(Error::invalid(
                OP,
                "graph_items",
                format!("{g} < {} items this batch needs", plan.grid_items),
            ));
        }
        plan.grid_items = g;
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn problem(lens: &[usize], heads: usize, ctas: usize) -> DecodeProblem<'_> {
        DecodeProblem {
            kv_lens: lens,
            num_kv_heads: heads,
            max_ctas: ctas,
            min_chunk: 256,
            chunk_align: 64,
            fixed_chunk: None,
            graph_items: None,
        }
    }

    fn check_cover(p: &DecodeProblem<'_>, plan: &DecodePlan) {
        // Every token of every request covered exactly once, items contiguous per request.
        for (r, &len) in p.kv_lens.iter().enumerate() {
            let (a, z) = (
                plan.merge_indptr[r] as usize,
                plan.merge_indptr[r + 1] as usize,
            );
            assert!(z > a, "request {r} has no work item");
            let mut next = 0u32;
            for i in a..z {
                assert_eq!(plan.request[i] as usize, r);
                assert_eq!(plan.kv_begin[i], next);
                assert!(plan.kv_end[i] >= plan.kv_begin[i]);
                if plan.chunk_len != usize::MAX {
                    assert!((plan.kv_end[i] - plan.kv_begin[i]) as usize <= plan.chunk_len);
                }
                next = plan.kv_end[i];
            }
            assert_eq!(next as usize, len);
        }
        assert_eq!(
            *plan.merge_indptr.last().unwrap() as usize,
            plan.num_items()
        );
    }

    #[test]
    fn small_batch_splits_to_fill_the_gpu() {
        let lens = [4096usize];
        let p = problem(&lens, 8, 264);
        let plan = plan(&p).unwrap();
        check_cover(&p, &plan);
        assert!(plan.split);
        assert!(plan.num_items() * 8 <= 264);
        assert!(plan.num_items() >= 8, "got {} items", plan.num_items());
    }

    #[test]
    fn wave_model_fills_one_wave_and_avoids_tails() {
        // 16 × 4096 on 528 slots, 8 heads: 4 chunks each = 512 CTAs, one wave.
        let lens = vec![4096usize; 16];
        let plan16 = plan(&problem(&lens, 8, 528)).unwrap();
        assert_eq!(plan16.num_items(), 64);
        // 64 × 4096 on 528 slots: 512 CTAs already fit one wave; no split.
        let lens = vec![4096usize; 64];
        assert!(!plan(&problem(&lens, 8, 528)).unwrap().split);
        // ... but on 396 slots, 512 CTAs leave a 116-CTA tail wave: splitting in 2 is cheaper.
        let p = plan(&problem(&lens, 8, 396)).unwrap();
        assert!(p.split);
        assert_eq!(p.num_items(), 128);
        // 128 × 2048 on 396 slots: 2.6 waves unsplit beat 7.8 shorter ones.
        let lens = vec![2048usize; 128];
        assert!(!plan(&problem(&lens, 8, 396)).unwrap().split);
    }

    #[test]
    fn big_batch_does_not_split() {
        let lens = vec![1024usize; 256];
        let p = problem(&lens, 8, 264);
        let plan = plan(&p).unwrap();
        assert!(!plan.split);
        assert_eq!(plan.num_items(), 256);
        check_cover(&p, &plan);
    }

    #[test]
    fn empty_and_tiny_requests_get_one_item() {
        let lens = [0usize, 1, 0, 5000];
        let p = problem(&lens, 2, 264);
        let plan = plan(&p).unwrap();
        check_cover(&p, &plan);
        assert_eq!(plan.merge_indptr[1] - plan.merge_indptr[0], 1);
    }

    #[test]
    fn graph_mode_pads_the_grid() {
        let lens = [100usize, 200];
        let mut p = problem(&lens, 8, 264);
        p.graph_items = Some(33);
        let plan = plan(&p).unwrap();
        assert_eq!(plan.grid_items, 33);
        p.graph_items = Some(1);
        assert!(super::plan(&p).is_err());
    }

    proptest! {
        #[test]
        fn plans_cover_every_token_and_respect_the_cap(
            lens in prop::collection::vec(prop_oneof![Just(0usize), Just(1), 1usize..70000], 1..80),
            heads in 1usize..16,
            ctas in 16usize..600,
            fixed in prop_oneof![Just(None), (1usize..5000).prop_map(Some)],
        ) {
            let mut p = problem(&lens, heads, ctas);
            p.fixed_chunk = fixed;
            let plan = plan(&p).unwrap();
            check_cover(&p, &plan);
            if fixed.is_none() && plan.split {
                prop_assert!(plan.chunk_len >= 256);
                prop_assert!(plan.num_items() <= lens.len() * MAX_SPLIT);
            }
        }
    }
}
