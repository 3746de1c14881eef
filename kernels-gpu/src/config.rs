//! Launch geometry per kernel family, as `const fn`s used by both the kernel bodies and the host
//! launcher, so a shape formula exists exactly once.

/// Head dimensions the attention kernels are instantiated for.
pub const HEAD_DIMS: [u32; 3] = [64, 128, 256];

/// Tensor-core decode (`kernels-gpu/src/decode_tc.rs`): the query heads of a KV head are the
/// rows of one 16-row mma tile; 4 warps split each KV tile of [`decode_tc::TILE`] tokens.
pub mod decode_tc {
    /// Threads per CTA.
    pub const THREADS: u32 = 128;
    /// KV tokens per pipeline stage (16 per warp).
    pub const TILE: u32 = 64;
    /// Pipeline stages at head dim `head_dim` for K/V elements of `kv_bytes` bytes (2, or 1
    /// for fp8 codes): 4 at D ≤ 64 for 16-bit K/V (a 64-token stage is only 16 KB there, too
    /// few bytes in flight per CTA to saturate HBM with 2), else 2; fp8 stages are half as big,
    /// so twice as many keep the ring (and the bytes in flight per CTA) the same size.
    pub const fn stages(head_dim: u32, kv_bytes: u32) -> u32 {
        let base = if head_dim <= 64 { 4 } else { 2 };
        base * 2 / kv_bytes
    }
    /// Largest query group (rows of the mma tile).
    pub const MAX_GROUP: u32 = 16;

    /// Bytes of one stage: K and V tiles of `TILE × head_dim` elements of `kv_bytes` bytes.
    pub const fn stage_bytes(head_dim: u32, kv_bytes: u32) -> u32 {
        2 * TILE * head_dim * kv_bytes
    }

    /// Dynamic shared memory for query group `group` and `kv_bytes`-byte K/V: the staging ring, reused for the
    /// cross-warp merge (4 warps × 16 rows × head_dim f32 outputs + their m and d) and the fused
    /// split merge (a 16-byte flag, then `max(group, 8)` heads × `MAX_ITEMS_PER_REQUEST` f32
    /// weights: groups up to 8 keep the size they were measured with, larger ones get the
    /// 16 bytes more that 16 heads' weights need over the 64 KB ring).
    pub const fn smem_bytes(head_dim: u32, group: u32, kv_bytes: u32) -> u32 {
        let staging = stages(head_dim, kv_bytes) * stage_bytes(head_dim, kv_bytes);
        let merge = 4 * 16 * head_dim * 4 + 4 * 16 * 2 * 4 + 16;
        let heads = if group > 8 { group } else { 8 };
        let split = 16 + heads * super::batch_decode::MAX_ITEMS_PER_REQUEST * 4;
        let m = if staging > merge { staging } else { merge };
        if m > split {
            m
        } else {
            split
        }
    }
}

/// Prefill on tensor cores (`kernels-gpu/src/prefill.rs`): [`prefill::WARPS`] warps × 16 packed
/// query rows per CTA, KV tiles of [`prefill::TILE`] tokens in a swizzled cp.async ring of
/// [`prefill::stages`] stages.
pub mod prefill {
    /// Warps per CTA of the default kernels, each owning 16 packed query rows (the `_w8`
    /// entries have 8).
    pub const WARPS: u32 = 4;
    /// KV tokens per stage.
    pub const TILE: u32 = 64;

    /// Pipeline stages of the K/V ring for a tile of `warps` warps × `m_tiles` m-tiles at
    /// `head_dim`: three for the 64-row tile at head dim 128 (two tiles in flight while one is
    /// computed; 96 KB, two CTAs per SM as before, which its registers limit anyway): 2–7 %
    /// faster on the H200 (docs/perf-notes.md, session 5). Two otherwise: at D = 64 the third
    /// stage cost 2–4 %, and the wider tiles' Q and the D = 256 tiles leave no room for it at
    /// the same occupancy.
    pub const fn stages(warps: u32, m_tiles: u32, head_dim: u32) -> u32 {
        if warps == 4 && m_tiles == 1 && head_dim == 128 {
            3
        } else {
            2
        }
    }

    /// Bytes of one stage of the K/V ring: a K and a V tile of `TILE × head_dim` elements of
    /// `kv_bytes` bytes (2, or 1 for fp8 codes).
    pub const fn stage_bytes(head_dim: u32, kv_bytes: u32) -> u32 {
        2 * TILE * head_dim * kv_bytes
    }

    /// Dynamic shared memory of the K/V ring: `stages` stages (see [`stages`],
    /// [`stage_bytes`]).
    pub const fn smem_bytes(stages: u32, head_dim: u32, kv_bytes: u32) -> u32 {
        stages * stage_bytes(head_dim, kv_bytes)
    }

    /// Shared memory of the Q tile of the kernels with several m-tiles per warp (`_m2`).
    pub const fn q_smem_bytes(rows: u32, head_dim: u32) -> u32 {
        rows * head_dim * 2
    }

    /// Query tokens per CTA tile of `rows` packed rows for query group `group`: whole tokens
    /// only, so every token's heads sit in one tile (a split-KV partial slot is per token).
    pub const fn tile_tokens(rows: u32, group: u32) -> u32 {
        rows / group
    }
}

/// The Hopper prefill kernel (`kernels-gpu/src/prefill_hopper.rs`, sm_90a): two consumer
/// warpgroups of 64 packed query rows each, `wgmma` on K/V tiles of [`prefill_hopper::TILE`]
/// keys in the 128-byte-swizzled layout (`math::wgmma_layout`).
pub mod prefill_hopper {
    /// Packed query rows per CTA (2 warpgroups × 64).
    pub const ROWS: u32 = 128;
    /// Consumer warps (two warpgroups); a third warpgroup produces (copies K/V into the ring).
    pub const CONSUMER_WARPS: u32 = 8;
    /// Threads per CTA: two consumer warpgroups and the producer warpgroup. `host/build.rs`
    /// writes this into the kernels' PTX as `.maxntid` (the register cap `setmaxnreg` needs).
    pub const THREADS: u32 = 384;
    /// Entry-name suffixes of the Hopper prefill kernels: `_h` (one CTA per work item, K/V by
    /// `cp.async`), `_ht` (same, ragged K/V by TMA), `_hp` and `_hpt` (persistent CTAs).
    pub const ENTRY_SUFFIXES: [&str; 4] = ["_h", "_ht", "_hp", "_hpt"];

    /// Whether `name` is a Hopper prefill entry (block size [`THREADS`], parameters
    /// `(PrefillParams, KvTensorMaps)`).
    pub fn is_entry(name: &str) -> bool {
        name.starts_with("prefill_") && ENTRY_SUFFIXES.iter().any(|s| name.ends_with(s))
    }
    /// Registers per thread after `setmaxnreg` (the merged kernel, `prefill_hopper`): the
    /// producer gives its share to the consumers (128·40 + 256·232 = 64 512 ≤ 65 536).
    pub const PRODUCER_REGS: u32 = 40;
    /// See [`PRODUCER_REGS`].
    pub const CONSUMER_REGS: u32 = 232;
    /// The same for the persistent kernel (`prefill_hopper_persistent`): 128·56 + 256·224 =
    /// 64 512. Its producer's unit state spilled ~110 bytes at 40; 48 + 232 (the whole 65 536
    /// registers) hung on the H200: the consumers' `setmaxnreg.inc` never completed.
    pub const PERSISTENT_PRODUCER_REGS: u32 = 56;
    /// See [`PERSISTENT_PRODUCER_REGS`].
    pub const PERSISTENT_CONSUMER_REGS: u32 = 224;
    /// KV tokens per stage (the N of the score product).
    pub const TILE: u32 = 128;
    /// Pipeline stages: tile j's K and tile j−1's V are read in the same step (the score
    /// product of one tile overlaps P·V of the previous), so a third stage holds the copies in
    /// flight. 224 KB at D = 128.
    pub const STAGES: u32 = 3;

    /// Bytes of the `mbarrier`s (8 each), after the K/V stages: a "full" and an "empty" one
    /// per stage, and the Q tile's pair.
    pub const BARRIER_BYTES: u32 = 8 * (2 * STAGES + 2);

    /// Dynamic shared memory: the Q tile, then `STAGES` K and V tiles, then the barriers.
    pub const fn smem_bytes(head_dim: u32) -> u32 {
        ROWS * head_dim * 2 + STAGES * 2 * TILE * head_dim * 2 + BARRIER_BYTES
    }
}

/// Row geometry of the CUDA-core decode (`kernels-gpu/src/batch_decode.rs`): lanes per K/V
/// row, row slots, tokens per iteration, group capacities.
pub mod decode_rows {
    /// Threads per CTA (4 warps).
    pub const THREADS: u32 = 128;
    /// Elements each thread loads per K/V row: one 16-byte vector of 16-bit values.
    pub const VEC: u32 = 8;
    /// Rows each thread keeps in flight per loop iteration (independent 16-byte loads).
    pub const UNROLL: u32 = 4;
    /// Compile-time query-group capacities; a runtime group `g` runs on the smallest `G >= g`.
    pub const GROUPS: [u32; 4] = [1, 2, 4, 8];
    /// Shortest chunk a request is split into (two tiles at D = 128): shorter chunks spend more
    /// on the per-CTA prologue and partial-state traffic than they gain in parallelism.
    pub const MIN_CHUNK: u32 = 64;

    /// Lanes that cooperate on one K/V row of `head_dim` elements.
    pub const fn lanes_per_row(head_dim: u32) -> u32 {
        head_dim / VEC
    }

    /// Row slots per CTA: how many rows the CTA reads at once (per unrolled step).
    pub const fn slots(head_dim: u32) -> u32 {
        THREADS / lanes_per_row(head_dim)
    }

    /// Tokens a CTA consumes per loop iteration.
    pub const fn tokens_per_iter(head_dim: u32) -> u32 {
        slots(head_dim) * UNROLL
    }

    /// Dynamic shared memory for the end-of-CTA reduction of per-slot states:
    /// `o[slots][group][head_dim]` then `m[slots][group]`, `d[slots][group]` (all f32).
    pub const fn smem_bytes(head_dim: u32, group: u32) -> u32 {
        let s = slots(head_dim);
        s * group * head_dim * 4 + 2 * s * group * 4
    }

    /// The compile-time group capacity that serves runtime group `g` (None above 8).
    pub const fn group_capacity(g: u32) -> Option<u32> {
        match g {
            1 => Some(1),
            2 => Some(2),
            3..=4 => Some(4),
            5..=8 => Some(8),
            _ => None,
        }
    }
}

/// Batch decode over page tables (`kernels-gpu/src/batch_decode.rs`): the row geometry
/// (`decode_rows::{THREADS, VEC, UNROLL, lanes_per_row, slots}`) plus a cp.async
/// pipeline of `STAGES` tiles, each thread staging the rows it will itself consume.
pub mod batch_decode {
    use super::decode_rows as sd;

    /// Pipeline depth (tiles in flight per CTA, including the one being computed).
    pub const STAGES: u32 = 3;

    /// Bytes of staging per stage: every thread stages `UNROLL` K and V vectors of 16 bytes.
    pub const fn stage_bytes() -> u32 {
        sd::THREADS * sd::UNROLL * 2 * 16
    }

    /// Most work items one request may be split into: the fused merge keeps `group × items`
    /// f32 weights in shared memory (8 × 1024 × 4 = 32 KB ≤ the 48 KB ring).
    pub const MAX_ITEMS_PER_REQUEST: u32 = 1024;

    /// Dynamic shared memory: the staging ring, reused for the cross-slot merge at the end (and
    /// the fused split merge's flag and weights, which it always covers: checked below).
    pub const fn smem_bytes(head_dim: u32, group: u32) -> u32 {
        let staging = STAGES * stage_bytes();
        let merge = sd::smem_bytes(head_dim, group);
        if staging > merge {
            staging
        } else {
            merge
        }
    }
}

const _: () = assert!(
    batch_decode::STAGES * batch_decode::stage_bytes()
        >= 16 + 8 * batch_decode::MAX_ITEMS_PER_REQUEST * 4
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_geometry_is_consistent() {
        for d in HEAD_DIMS {
            let lpr = decode_rows::lanes_per_row(d);
            assert!(
                lpr.is_power_of_two() && lpr <= 32,
                "row lanes stay inside a warp"
            );
            assert_eq!(32 % lpr, 0);
            assert_eq!(decode_rows::slots(d) * lpr, decode_rows::THREADS);
            for g in decode_rows::GROUPS {
                assert!(decode_rows::smem_bytes(d, g) <= 48 * 1024);
            }
        }
        for g in 1..=8 {
            let cap = decode_rows::group_capacity(g).unwrap();
            assert!(cap >= g && decode_rows::GROUPS.contains(&cap));
        }
        assert_eq!(decode_rows::group_capacity(9), None);
        assert_eq!(decode_rows::group_capacity(0), None);
    }
}
