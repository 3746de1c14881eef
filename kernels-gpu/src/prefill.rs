//! Single-request and batch prefill attention on tensor cores (FlashAttention-2 style): query
//! tiles against their request's K/V (ragged or paged), causal or not, with sliding window and
//! soft-cap. Host twins: `host/src/ops/single_prefill.rs`, `host/src/ops/batch_prefill.rs`.
//!
//! CTA = (16·W·MT packed query rows, KV head), W warps; packed row `r` is query token `r / g`,
//! head `r % g` of the group (GQA packing, so a few query tokens still fill the tile). Each warp
//! owns 16·MT rows for the whole KV range: per 64-token tile, S = Q·Kᵀ (8 n-tiles, `ldmatrix`
//! K), logits transform and mask, online softmax on the accumulator tile, P re-packed as the A
//! operand, O += P·V (`ldmatrix.trans` V). K/V tiles come through a swizzled `cp.async` ring (3
//! stages for the 64-row tile at D = 128, else 2: `config::prefill::stages`). Causal CTAs stop
//! at the last key their last row may see; windowed CTAs start at the first key their first row
//! may see (tiles outside are never loaded; `attn::mask`).
//!
//! fp8 K/V (`prefill_*_fp8_{e4m3,e5m2}`, the 64-row tile at head dims 64 and 128): the ring
//! holds the codes and the products read them as the tensor-core decode does (`attn::tc_kv`:
//! `ldmatrix` into registers, converted on the way to the mma, Q's columns and the output's in
//! the permuted order of `math::frag_fp8`); K's scale is in the logit scale (host), V's
//! multiplies the outputs in the epilogue.
use crate::abi::{PrefillFp8Params, PrefillParams, PrefillRopeParams, RopeAttn};
use crate::arch::{global, ldmatrix, pipeline, shared, thread};
use crate::attn::custom_mask::CustomMask;
use crate::attn::epilogue::TileOut;
use crate::attn::kv::{copy_tile, tile_dst, KvRows, Paged, Ragged};
use crate::attn::logits::{Logits, ScaleSoftCap};
use crate::attn::mask::{self, CausalWindow, Mask, QueryTile};
use crate::attn::rope;
use crate::attn::state::RowState;
use crate::attn::swizzle::{frag_at, swz, FragOffsets};
use crate::attn::tc_kv::{Codes, Half, TcKv};
use crate::attn::tile::RegTile;
use crate::attn::work::{cta_kv_head, ld_i32, load_work};
use crate::config::prefill as cfg;
use crate::dtype::{Bf16, Elem, F16};
use crate::math::fp8::{E4m3, E5m2};
use crate::math::frag::mma_a;

const TILE: u32 = cfg::TILE;

/// Whether the kernel with `mt` m-tiles per warp at head dim `d` stages Q in shared memory
/// (`config::prefill::q_smem_bytes`; the host twin is `PrefillTile::smem_bytes`).
#[inline(always)]
const fn q_in_smem(mt: usize, d: u32) -> bool {
    mt > 1 || d > 128
}

/// The kernel body (`NT = D/8` output n-tiles, `KS = D/16` k-steps: `attn::traits`; `W` warps
/// of `MT` m-tiles of 16 rows; with `ROPE`, q and every key rotated by `rope`,
/// `attn::rope`; K/V stored as `KF`, V's values times `v_scale`). fp8 K/V (`KF = Codes<_>`)
/// run the 64-row tile with Q in registers only (one m-tile, D ≤ 128, no RoPE).
///
/// # Safety
/// Grid `(num_kv_heads, items)` (single mode: `(num_kv_heads, ceil(qo_len / tile_tokens))`),
/// block `(32·W)`, dynamic smem `config::prefill::smem_bytes(stages, D, KF::BYTES)` (plus the Q tile when
/// it is staged, see [`q_in_smem`]); every table and extent the
/// parameters address validated by the host (`qo_len ≤ kv_len` per request).
#[inline(always)]
unsafe fn prefill<
    R: KvRows,
    E: Elem,
    Mk: Mask,
    L: Logits,
    KF: TcKv,
    const D: u32,
    const NT: usize,
    const KS: usize,
    const W: u32,
    const MT: usize,
    const ROPE: bool,
>(
    p: &PrefillParams,
    rope: &RopeAttn,
    v_scale: f32,
) {
    // fp8 codes go through `attn::tc_kv`'s per-16-key fragments: one m-tile, Q in registers.
    let fp8 = KF::BYTES == 1;
    const { assert!(KF::BYTES == 2 || (MT == 1 && D <= 128 && !ROPE)) };
    let threads = 32 * W;
    // K/V ring depth, fixed per instantiation (host twin: `PrefillTile::smem_bytes`).
    let stages = cfg::stages(W, MT as u32, D);
    // Q lives in shared memory (re-read per KV tile) with several m-tiles per warp or at
    // D = 256 (its fragments would take 64 registers); otherwise in registers.
    // With RoPE, Q is always staged: it is rotated there once, like the K tiles (rotating the
    // register fragments would index them by the runtime rotary dim: a stack frame).
    let q_smem_on = q_in_smem(MT, D) || ROPE;
    let tid = thread::thread_idx_x();
    let lane = tid % 32;
    let w = tid / 32;
    let kvh = cta_kv_head();
    let g = p.group.d;
    // SAFETY: as the kernel's contract.
    let Some((req, item)) = (unsafe { load_work(p) }) else {
        return;
    };
    // The tile's query positions and the keys its rows may see, within the item's chunk.
    let qt = QueryTile::<Mk>::new(p, &req, &item);
    let (t0, mask) = (qt.t0, qt.mask.bind(p, &req, &item));
    let rows_total = qt.tokens * g; // packed rows: token-major, the group's heads within
    let (kv_begin, kv_end, pos_first) = (qt.kv_begin, qt.kv_end, qt.pos_first);
    // RoPE: the request's position offset (key t at rope_off + t, query token at rope_off + its
    // causal position).
    let rope_off = if ROPE {
        // SAFETY: the request indexes the host's offsets table.
        unsafe { ld_i32(rope.offsets, item.request) }
    } else {
        0
    };
    let logits = L::new(p.logit);
    let smem = shared::dyn_smem_base();
    // Q tile in shared memory first when each warp owns several m-tiles (their A fragments are
    // re-read per KV tile instead of held in registers), then the K/V stages.
    let q_smem = smem;
    let kv_smem = smem
        + if q_smem_on {
            cfg::q_smem_bytes(16 * MT as u32 * W, D)
        } else {
            0
        };
    let tiles = qt.tiles(TILE);
    let (gq, tq) = (lane / 4, lane % 4);
    let copy_dst = tile_dst::<D>(tid, KF::BYTES);
    let fo = FragOffsets::new::<D>(lane, w * 16 * MT as u32);
    let q_row_addr = |r: u32, c: u32| -> u64 {
        let (t, h) = p.group.divmod(r);
        p.q + (((req.qo_begin + t0 + t) as u64) * (p.q_stride_n as u64)
            + ((kvh * g + h) * p.q_stride_h + c) as u64)
            * 2
    };
    if tiles > 0 {
        if q_smem_on {
            // Q rows (zero past the tile's rows) join the first K/V tile's copy group.
            let chunks = D / 8;
            let rows = 16 * MT as u32 * W;
            for i in 0..(rows * chunks / threads) {
                let idx = tid + i * threads;
                let (r, c) = (idx / chunks, idx % chunks);
                let live = r < rows_total;
                let src = if live { q_row_addr(r, c * 8) } else { p.q };
                // SAFETY: destination inside the Q tile; source a q row or a zero-byte copy.
                unsafe {
                    pipeline::cp_async_cg_16(
                        q_smem + swz::<D>(r, c),
                        src,
                        if live { 16 } else { 0 },
                    )
                };
            }
        }
        // SAFETY: see copy_tile.
        unsafe {
            copy_tile::<R, D>(
                p,
                threads,
                req.kv_begin,
                kvh,
                kv_begin,
                kv_end,
                0,
                tid,
                copy_dst,
                kv_smem,
                KF::BYTES,
            )
        };
        // The rest of the prologue, tiles 1 .. stages − 1 (an empty group for a missing tile
        // keeps the group count the loop's waits assume).
        for s in 1..stages - 1 {
            if s < tiles {
                // SAFETY: see copy_tile.
                unsafe {
                    copy_tile::<R, D>(
                        p,
                        threads,
                        req.kv_begin,
                        kvh,
                        kv_begin + s * TILE,
                        kv_end,
                        s,
                        tid,
                        copy_dst,
                        kv_smem,
                        KF::BYTES,
                    )
                };
            } else {
                pipeline::commit_group();
            }
        }
    }
    // Keys before the last token's window start need the mask.
    let all_from = qt.all_from();

    // Warp w owns rows [w·16·MT, (w+1)·16·MT): m-tile mt is rows row0(mt) .. +16; this lane
    // holds rows gq and gq + 8 of each m-tile.
    let row0 = |mt: usize| w * 16 * MT as u32 + 16 * mt as u32;
    // Single m-tile: Q fragments stay in registers for the whole KV range.
    let mut qa = [[0u32; 4]; KS];
    if !q_smem_on {
        for (kk, a) in qa.iter_mut().enumerate() {
            for (reg, v) in a.iter_mut().enumerate() {
                let (row, col) = mma_a(lane, reg as u32, 0);
                let r = row0(0) + row;
                if r < rows_total {
                    // SAFETY: in-range q element pair, 4-byte aligned (col even; fp8's
                    // permuted columns keep pairs together).
                    *v = unsafe { global::ld_u32(q_row_addr(r, kk as u32 * 16 + KF::q_col(col))) };
                }
            }
        }
    }

    let mut o = [RegTile::<f32, NT>::splat(0.0); MT];
    let mut st = [RowState::EMPTY; MT];
    let mut j = 0;
    while j < tiles {
        let base = kv_begin + j * TILE;
        // Tile j + stages − 1 goes into the stage of tile j − 1, released by the barrier that
        // ended step j − 1; `stages − 1` tiles are in flight while tile j is computed.
        if j + stages - 1 < tiles {
            // SAFETY: see copy_tile.
            unsafe {
                copy_tile::<R, D>(
                    p,
                    threads,
                    req.kv_begin,
                    kvh,
                    base + (stages - 1) * TILE,
                    kv_end,
                    (j + stages - 1) % stages,
                    tid,
                    copy_dst,
                    kv_smem,
                    KF::BYTES,
                )
            };
        } else {
            pipeline::commit_group();
        }
        if stages == 3 {
            pipeline::wait_group::<2>();
        } else {
            pipeline::wait_group::<1>();
        }
        thread::sync_threads();
        let k_base = kv_smem + (j % stages) * cfg::stage_bytes(D, KF::BYTES);
        let v_base = k_base + TILE * D * KF::BYTES;
        if ROPE {
            // Rotate the landed K tile (key base + r) and, once, a staged Q tile in place; the
            // barrier orders the rotation before every warp's ldmatrix.
            // SAFETY: the stage's K rows (and the Q tile) are resident (barrier above).
            unsafe {
                rope::rotate_rows::<E, D>(rope, k_base, TILE, tid, threads, |r| {
                    rope_off + base + r
                });
                if j == 0 && q_smem_on {
                    let last = rows_total.max(1) - 1;
                    rope::rotate_rows::<E, D>(
                        rope,
                        q_smem,
                        16 * MT as u32 * W,
                        tid,
                        threads,
                        |r| rope_off + pos_first + p.group.div(r.min(last)),
                    );
                }
            }
            thread::sync_threads();
        }

        // S = Q·Kᵀ: 8 n-tiles of 8 keys per m-tile; each K fragment (ldmatrix.x4: two n-tiles)
        // feeds every m-tile of the warp.
        let mut s = [RegTile::<f32, 8>::splat(0.0); MT];
        let (qb, kb0, vb0) = (q_smem + fo.q, k_base + fo.k, v_base + fo.v);
        if fp8 {
            // Four groups of 16 keys, as the tensor-core decode's warp reads them.
            for np in 0..4 {
                // SAFETY: inside the stage (published by the barrier); warp-convergent.
                let s2 = unsafe { KF::qk::<E, D, KS>(k_base, 16 * np as u32, lane, &qa) };
                s[0].0[2 * np] = s2.0[0];
                s[0].0[2 * np + 1] = s2.0[1];
            }
        }
        for kk in 0..if fp8 { 0 } else { KS } {
            let mut a = [[0u32; 4]; MT];
            for (mt, am) in a.iter_mut().enumerate() {
                *am = if !q_smem_on {
                    qa[kk]
                } else {
                    // SAFETY: inside the Q tile; warp-convergent.
                    unsafe {
                        ldmatrix::ldmatrix_x4(frag_at(qb, kk as u32) + mt as u32 * 16 * D * 2)
                    }
                };
            }
            for np in 0..4u32 {
                // SAFETY: inside the stage; warp-convergent.
                let kb =
                    unsafe { ldmatrix::ldmatrix_x4(frag_at(kb0, kk as u32) + np * 16 * D * 2) };
                for mt in 0..MT {
                    s[mt].mma_pair::<E>(2 * np as usize, a[mt], kb);
                }
            }
        }
        // Logits and mask, the mask only where some key of the tile is invisible to some row
        // (CTA-uniform, so interior tiles skip the per-element tests).
        let need_mask = qt.tile_masked(base, TILE, all_from);
        let mut pa = [[[0u32; 4]; 4]; MT];
        // Plain softmax with a positive scale: the max of raw scores is the max of logits, and
        // `exp2(s·scale − m)` is one FFMA + ex2 per score (no separate scaling pass); otherwise
        // the scores become base-2 logits first (scale 1 in the softmax).
        let folds = logits.folds();
        let scale = if folds { logits.scale() } else { 1.0 };
        for mt in 0..MT {
            logits.tile(&mut s[mt], folds);
            if need_mask {
                // Query positions of the lane's two rows, recomputed here rather than held
                // across the loop.
                let pos = mask::row_positions(row0(mt), gq, rows_total, pos_first, p.group);
                mask::apply(&mask, &mut s[mt], base, kv_end, pos, tq);
            }
            let r_scale = st[mt].update(&mut s[mt], scale);
            o[mt].scale_rows(r_scale);
            if !fp8 {
                pa[mt] = s[mt].pack_a::<E, 4>();
            }
        }
        if fp8 {
            // O += P·V per 16 keys: the probabilities of n-tiles 2ks and 2ks + 1 (row half hh:
            // elements 2hh, 2hh + 1 of each).
            for ks in 0..4 {
                let t = &s[0].0;
                let pv = [
                    [
                        t[2 * ks][0],
                        t[2 * ks][1],
                        t[2 * ks + 1][0],
                        t[2 * ks + 1][1],
                    ],
                    [
                        t[2 * ks][2],
                        t[2 * ks][3],
                        t[2 * ks + 1][2],
                        t[2 * ks + 1][3],
                    ],
                ];
                // SAFETY: inside the stage; warp-convergent.
                unsafe { KF::pv::<E, D, NT>(v_base, 16 * ks as u32, lane, &pv, &mut o[0]) };
            }
        }
        // O += P·V over 4 k-steps of 16 keys; each V fragment feeds every m-tile.
        for ks in 0..if fp8 { 0 } else { 4u32 } {
            let mut np = 0;
            while np < NT / 2 {
                // SAFETY: inside the stage; warp-convergent.
                let vb = unsafe {
                    ldmatrix::ldmatrix_x4_trans(frag_at(vb0, np as u32) + ks * 16 * D * 2)
                };
                for mt in 0..MT {
                    o[mt].mma_pair::<E>(2 * np, pa[mt][ks as usize], vb);
                }
                np += 1;
            }
        }
        thread::sync_threads();
        j += 1;
    }
    pipeline::wait_all();
    // SAFETY: as above (the same work as at the start).
    let Some((req, item)) = (unsafe { load_work(p) }) else {
        return;
    };
    for mt in 0..MT {
        st[mt].reduce_quad();
        let out = TileOut {
            p,
            req: &req,
            item: &item,
            t0,
            rows_total,
            g,
            kvh,
            row: row0(mt) + gq,
            tq,
        };
        // SAFETY: host-validated extents (the kernel's contract).
        unsafe {
            out.store_pairs::<E, D>(&st[mt], v_scale, NT, |i, hh| KF::o_pair(&o[mt], i, hh, tq))
        };
    }
}

/// Entry points: `name => K/V rows, element, D, warps, m-tiles[, mask]` (the mask type
/// defaults to [`CausalWindow`]).
macro_rules! prefill_entries {
    (@mask) => { CausalWindow };
    (@mask $mk:ty) => { $mk };
    ($($name:ident => $r:ty, $e:ty, $d:literal, $w:expr, $mt:expr $(, $mk:ty)?;)*) => {$(
        #[doc = concat!("Entry point: prefill, ", stringify!($r), " K/V, ", stringify!($e),
                        ", D = ", $d, ".")]
        ///
        /// # Safety
        /// See the generic body's launch contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: PrefillParams) {
            use crate::attn::traits::{Dim, HeadDim};
            const NT: usize = <Dim<$d> as HeadDim>::NT;
            const KS: usize = <Dim<$d> as HeadDim>::KS;
            // SAFETY: forwarded launch contract.
            unsafe {
                prefill::<$r, $e, prefill_entries!(@mask $($mk)?), ScaleSoftCap, Half, $d, NT,
                    KS, { $w }, { $mt }, false>(&p, &RopeAttn::default(), 1.0)
            }
        }
    )*};
}

/// Entry points with RoPE inside attention: `name => K/V rows, element, D` on the 64-row tile.
macro_rules! prefill_rope_entries {
    ($($name:ident => $r:ty, $e:ty, $d:literal;)*) => {$(
        #[doc = concat!("Entry point: prefill with RoPE inside attention, ", stringify!($r),
                        " K/V, ", stringify!($e), ", D = ", $d, ".")]
        ///
        /// # Safety
        /// See the generic body's launch contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: PrefillRopeParams) {
            use crate::attn::traits::{Dim, HeadDim};
            const NT: usize = <Dim<$d> as HeadDim>::NT;
            const KS: usize = <Dim<$d> as HeadDim>::KS;
            // SAFETY: forwarded launch contract.
            unsafe {
                prefill::<$r, $e, CausalWindow, ScaleSoftCap, Half, $d, NT, KS, 4, 1, true>(
                    &p.base, &p.rope, 1.0,
                )
            }
        }
    )*};
}

// RoPE on the 64-row tile at every head dim (the host planner picks this tile when the op
// rotates): K tiles rotated in shared memory after each copy, Q in registers (D ≤ 128) or in
// its shared-memory tile (D = 256).
prefill_rope_entries! {
    prefill_ragged_f16_d64_rope => Ragged, F16, 64;
    prefill_ragged_f16_d128_rope => Ragged, F16, 128;
    prefill_ragged_f16_d256_rope => Ragged, F16, 256;
    prefill_ragged_bf16_d64_rope => Ragged, Bf16, 64;
    prefill_ragged_bf16_d128_rope => Ragged, Bf16, 128;
    prefill_ragged_bf16_d256_rope => Ragged, Bf16, 256;
    prefill_paged_f16_d64_rope => Paged, F16, 64;
    prefill_paged_f16_d128_rope => Paged, F16, 128;
    prefill_paged_f16_d256_rope => Paged, F16, 256;
    prefill_paged_bf16_d64_rope => Paged, Bf16, 64;
    prefill_paged_bf16_d128_rope => Paged, Bf16, 128;
    prefill_paged_bf16_d256_rope => Paged, Bf16, 256;
}

// Tiles (rows per CTA = 16 · warps · m-tiles per warp): default 4 warps × 16 rows; `_w8`
// 8 warps × 16 rows (each K/V tile shared by twice the rows: half the L2 traffic per FLOP);
// `_m2` 4 warps × 32 rows (each K/V fragment read from shared memory feeds two mma: ~60 % of the
// shared-memory traffic per FLOP, Q re-read from shared memory). Chosen by measurement
// (docs/perf-notes.md).
prefill_entries! {
    prefill_ragged_f16_d64 => Ragged, F16, 64, 4, 1;
    prefill_ragged_f16_d128 => Ragged, F16, 128, 4, 1;
    prefill_ragged_bf16_d64 => Ragged, Bf16, 64, 4, 1;
    prefill_ragged_bf16_d128 => Ragged, Bf16, 128, 4, 1;
    prefill_paged_f16_d64 => Paged, F16, 64, 4, 1;
    prefill_paged_f16_d128 => Paged, F16, 128, 4, 1;
    prefill_paged_bf16_d64 => Paged, Bf16, 64, 4, 1;
    prefill_paged_bf16_d128 => Paged, Bf16, 128, 4, 1;
    prefill_ragged_f16_d64_w8 => Ragged, F16, 64, 8, 1;
    prefill_ragged_f16_d128_w8 => Ragged, F16, 128, 8, 1;
    prefill_ragged_bf16_d64_w8 => Ragged, Bf16, 64, 8, 1;
    prefill_ragged_bf16_d128_w8 => Ragged, Bf16, 128, 8, 1;
    prefill_paged_f16_d64_w8 => Paged, F16, 64, 8, 1;
    prefill_paged_f16_d128_w8 => Paged, F16, 128, 8, 1;
    prefill_paged_bf16_d64_w8 => Paged, Bf16, 64, 8, 1;
    prefill_paged_bf16_d128_w8 => Paged, Bf16, 128, 8, 1;
    prefill_ragged_f16_d64_m2 => Ragged, F16, 64, 4, 2;
    prefill_ragged_f16_d128_m2 => Ragged, F16, 128, 4, 2;
    prefill_ragged_bf16_d64_m2 => Ragged, Bf16, 64, 4, 2;
    prefill_ragged_bf16_d128_m2 => Ragged, Bf16, 128, 4, 2;
    prefill_paged_f16_d64_m2 => Paged, F16, 64, 4, 2;
    prefill_paged_f16_d128_m2 => Paged, F16, 128, 4, 2;
    prefill_paged_bf16_d64_m2 => Paged, Bf16, 64, 4, 2;
    prefill_paged_bf16_d128_m2 => Paged, Bf16, 128, 4, 2;
    prefill_ragged_f16_d256 => Ragged, F16, 256, 4, 1;
    prefill_ragged_bf16_d256 => Ragged, Bf16, 256, 4, 1;
    prefill_paged_f16_d256 => Paged, F16, 256, 4, 1;
    prefill_paged_bf16_d256 => Paged, Bf16, 256, 4, 1;
}

// The custom mask (`attn::custom_mask`, FlashInfer's packed bits) on the 64-row tile at head
// dims 64 and 128 (at 256 the sm_80 ragged form spilled 8 bytes): every key tile of the
// causal/window range runs the per-element test, so the mask costs one 32-bit load per kept
// score; the host planner picks this tile whenever a plan has a mask.
prefill_entries! {
    prefill_ragged_f16_d64_mask => Ragged, F16, 64, 4, 1, CustomMask;
    prefill_ragged_f16_d128_mask => Ragged, F16, 128, 4, 1, CustomMask;
    prefill_ragged_bf16_d64_mask => Ragged, Bf16, 64, 4, 1, CustomMask;
    prefill_ragged_bf16_d128_mask => Ragged, Bf16, 128, 4, 1, CustomMask;
    prefill_paged_f16_d64_mask => Paged, F16, 64, 4, 1, CustomMask;
    prefill_paged_f16_d128_mask => Paged, F16, 128, 4, 1, CustomMask;
    prefill_paged_bf16_d64_mask => Paged, Bf16, 64, 4, 1, CustomMask;
    prefill_paged_bf16_d128_mask => Paged, Bf16, 128, 4, 1, CustomMask;
}

/// Entry points over fp8 K/V: `name => K/V rows, element (q/out), format, D` on the 64-row tile.
macro_rules! prefill_fp8_entries {
    ($($name:ident => $r:ty, $e:ty, $f:ty, $d:literal;)*) => {$(
        #[doc = concat!("Entry point: prefill over ", stringify!($f), " ", stringify!($r),
                        " K/V, ", stringify!($e), " q/out, D = ", $d, ".")]
        ///
        /// # Safety
        /// See the generic body's launch contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: PrefillFp8Params) {
            use crate::attn::traits::{Dim, HeadDim};
            const NT: usize = <Dim<$d> as HeadDim>::NT;
            const KS: usize = <Dim<$d> as HeadDim>::KS;
            // SAFETY: forwarded launch contract.
            unsafe {
                prefill::<$r, $e, CausalWindow, ScaleSoftCap, Codes<$f>, $d, NT, KS, 4, 1, false>(
                    &p.base, &RopeAttn::default(), p.v_scale,
                )
            }
        }
    )*};
}

prefill_fp8_entries! {
    prefill_ragged_f16_d64_fp8_e4m3 => Ragged, F16, E4m3, 64;
    prefill_ragged_f16_d128_fp8_e4m3 => Ragged, F16, E4m3, 128;
    prefill_ragged_bf16_d64_fp8_e4m3 => Ragged, Bf16, E4m3, 64;
    prefill_ragged_bf16_d128_fp8_e4m3 => Ragged, Bf16, E4m3, 128;
    prefill_paged_f16_d64_fp8_e4m3 => Paged, F16, E4m3, 64;
    prefill_paged_f16_d128_fp8_e4m3 => Paged, F16, E4m3, 128;
    prefill_paged_bf16_d64_fp8_e4m3 => Paged, Bf16, E4m3, 64;
    prefill_paged_bf16_d128_fp8_e4m3 => Paged, Bf16, E4m3, 128;
    prefill_ragged_f16_d64_fp8_e5m2 => Ragged, F16, E5m2, 64;
    prefill_ragged_f16_d128_fp8_e5m2 => Ragged, F16, E5m2, 128;
    prefill_ragged_bf16_d64_fp8_e5m2 => Ragged, Bf16, E5m2, 64;
    prefill_ragged_bf16_d128_fp8_e5m2 => Ragged, Bf16, E5m2, 128;
    prefill_paged_f16_d64_fp8_e5m2 => Paged, F16, E5m2, 64;
    prefill_paged_f16_d128_fp8_e5m2 => Paged, F16, E5m2, 128;
    prefill_paged_bf16_d64_fp8_e5m2 => Paged, Bf16, E5m2, 64;
    prefill_paged_bf16_d128_fp8_e5m2 => Paged, Bf16, E5m2, 128;
}
