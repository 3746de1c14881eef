//! Persistent-CTA schedule of a prefill plan: which CTA runs which (work item, KV head) unit,
//! for the kernels whose CTAs loop over a list of units (the Hopper prefill kernel, whose
//! producer warpgroup loads the next unit while the consumers finish the current one).
//!
//! Greedy longest-processing-time: units in the plan's order (longest first), each given to
//! the least-loaded CTA, with cost = the unit's K/V tiles plus one tile for its start-up and
//! epilogue. Every CTA then runs its units longest first; the longest CTA is at most one unit
//! longer than the mean (the LPT bound), and no atomics or device-side queue are needed, so a
//! captured CUDA graph replays any later schedule of the same capacity.
use std::cmp::Reverse;
use std::collections::BinaryHeap;

use ferrinfer_kernels::abi::PrefillItem;

use super::MAX_PLAN_ENTRIES;
use crate::checked;
use crate::error::Result;

/// Cost of one unit start-up and epilogue, in K/V tiles.
const UNIT_OVERHEAD_TILES: u64 = 1;

/// Per-CTA unit lists: CTA `c` runs `units[offsets[c] .. offsets[c + 1]]` in order; a unit is
/// `[work item index, KV head]` (the kernel's `PrefillParams::units` layout).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitSchedule {
    /// `ctas + 1` offsets into `units`.
    pub offsets: Vec<u32>,
    /// `[item, kv_head]` per unit, grouped by CTA.
    pub units: Vec<[u32; 2]>,
}

impl UnitSchedule {
    /// CTAs of the schedule.
    pub fn ctas(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Units of CTA `c`.
    pub fn of_cta(&self, c: usize) -> &[[u32; 2]] {
        // Out-of-range CTAs run nothing (a caller's index never panics).
        let range = self
            .offsets
            .get(c..c.saturating_add(2))
            .and_then(|o| match o {
                [a, b] => self.units.get(*a as usize..*b as usize),
                _ => None,
            });
        range.unwrap_or(&[])
    }
}

/// K/V tiles of `tile` keys an item's unit runs (one at least: an empty range still runs one
/// fully masked tile).
pub fn item_tiles(item: &PrefillItem, tile: usize) -> usize {
    let keys = item.kv_end.saturating_sub(item.kv_begin) as usize;
    keys.div_ceil(tile.max(1)).max(1)
}

/// Cost of an item's unit: its tiles plus the start-up.
fn cost(item: &PrefillItem, tile: usize) -> u64 {
    item_tiles(item, tile) as u64 + UNIT_OVERHEAD_TILES
}

/// Schedules every (item, KV head) unit of `items` onto `ctas` CTAs (`ctas ≥ 1`); `tile` is
/// the kernel's K/V tile in keys. Errors: more units (`items × kv_heads`) or CTAs than
/// [`MAX_PLAN_ENTRIES`](super::MAX_PLAN_ENTRIES), or [`crate::Error::OutOfMemory`].
pub fn schedule(
    items: &[PrefillItem],
    kv_heads: usize,
    ctas: usize,
    tile: usize,
) -> Result<UnitSchedule> {
    const OP: &str = "schedule_units";
    const LIMIT: &str = "units or CTAs (MAX_PLAN_ENTRIES)";
    let ctas = checked::at_most(OP, LIMIT, ctas.max(1), MAX_PLAN_ENTRIES)?;
    let tile = tile.max(1);
    let n_units = checked::mul(OP, LIMIT, items.len(), kv_heads)?;
    checked::at_most(OP, LIMIT, n_units, MAX_PLAN_ENTRIES)?;
    let heap = checked::collect(OP, "CTA heap", ctas, (0..ctas).map(|c| Reverse((0u64, c))))?;
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::from(heap);
    let mut owner = checked::with_capacity(OP, "units", n_units)?;
    let mut count = checked::filled(OP, "CTA unit counts", ctas, 0u32)?;
    for (i, it) in items.iter().enumerate() {
        let c_cost = cost(it, tile);
        for h in 0..kv_heads {
            // The heap always holds all `ctas ≥ 1` CTAs (each pop is pushed back).
            if let Some(Reverse((load, c))) = heap.pop() {
                owner.push((c, [i as u32, h as u32]));
                count[c] += 1;
                heap.push(Reverse((load + c_cost, c)));
            }
        }
    }
    let mut offsets = checked::with_capacity(OP, "CTA offsets", ctas + 1)?;
    let mut acc = 0u32;
    offsets.push(0);
    for &n in &count {
        acc += n;
        offsets.push(acc);
    }
    // Stable placement: each CTA keeps its units in assignment order (longest first).
    let mut next: Vec<u32> = offsets[..ctas].to_vec();
    let mut units = checked::filled(OP, "units", owner.len(), [0u32; 2])?;
    for (c, u) in owner {
        units[next[c] as usize] = u;
        next[c] += 1;
    }
    Ok(UnitSchedule { offsets, units })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn item(len: u32) -> PrefillItem {
        PrefillItem {
            request: 0,
            t0: 0,
            kv_begin: 0,
            kv_end: len,
            part: u32::MAX,
            chunk: 0,
            nchunks: 1,
            pad: 0,
        }
    }

    fn loads(s: &UnitSchedule, items: &[PrefillItem], tile: usize) -> Vec<u64> {
        (0..s.ctas())
            .map(|c| {
                s.of_cta(c)
                    .iter()
                    .map(|u| cost(&items[u[0] as usize], tile))
                    .sum()
            })
            .collect()
    }

    #[test]
    fn equal_units_spread_evenly() {
        let items: Vec<_> = (0..64).map(|_| item(2048)).collect();
        let s = schedule(&items, 8, 132, 128).unwrap();
        assert_eq!(s.units.len(), 512);
        let per: Vec<usize> = (0..132).map(|c| s.of_cta(c).len()).collect();
        assert!(per.iter().all(|&n| n == 3 || n == 4), "{per:?}");
    }

    #[test]
    fn fewer_units_than_ctas_leaves_ctas_empty() {
        let items = [item(100), item(300)];
        let s = schedule(&items, 2, 8, 128).unwrap();
        assert_eq!(s.ctas(), 8);
        assert_eq!(s.units.len(), 4);
        assert_eq!((0..8).filter(|&c| s.of_cta(c).is_empty()).count(), 4);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn every_unit_once_longest_first_and_balanced(
            lens in prop::collection::vec(0u32..5000, 0..80),
            kv_heads in 1usize..9,
            ctas in 1usize..200,
        ) {
            // The planner's order: longest first.
            let mut items: Vec<_> = lens.iter().map(|&l| item(l)).collect();
            items.sort_by_key(|i| std::cmp::Reverse(i.kv_end - i.kv_begin));
            let s = schedule(&items, kv_heads, ctas, 128).unwrap();
            prop_assert_eq!(s.ctas(), ctas);
            prop_assert_eq!(s.offsets[0], 0);
            prop_assert!(s.offsets.windows(2).all(|w| w[0] <= w[1]));
            prop_assert_eq!(*s.offsets.last().unwrap() as usize, items.len() * kv_heads);
            let mut seen = vec![false; items.len() * kv_heads];
            for u in &s.units {
                let k = u[0] as usize * kv_heads + u[1] as usize;
                prop_assert!(!seen[k], "unit {:?} twice", u);
                seen[k] = true;
            }
            prop_assert!(seen.iter().all(|&x| x));
            for c in 0..ctas {
                let costs: Vec<u64> =
                    s.of_cta(c).iter().map(|u| cost(&items[u[0] as usize], 128)).collect();
                prop_assert!(costs.windows(2).all(|w| w[0] >= w[1]), "CTA {} not longest first", c);
            }
            // LPT: the most loaded CTA exceeds the mean by at most one unit.
            let l = loads(&s, &items, 128);
            let total: u64 = l.iter().sum();
            let max_unit = items.iter().map(|i| cost(i, 128)).max().unwrap_or(0);
            let max = *l.iter().max().unwrap();
            prop_assert!(max * ctas as u64 <= total + max_unit * ctas as u64, "{:?}", l);
        }
    }
}
