//! Single-request prefill attention on tensor cores (FlashAttention-2 style): `qo_len` query
//! tokens against `kv_len` contiguous K/V tokens, causal or not, with sliding window and
//! soft-cap. Host twin: `host/src/ops/single_prefill.rs`.
//!
//! CTA = (64 packed query rows, KV head), 4 warps; packed row `r` is query token `r / g`, head
//! `r % g` of the group (GQA packing, so a few query tokens still fill the tile). Each warp owns
//! 16 rows for the whole KV range: per 64-token tile, S = Q·Kᵀ (8 n-tiles, `ldmatrix` K),
//! masks, online softmax on the accumulator fragments, P re-packed as the A operand, O += P·V
//! (`ldmatrix.trans` V). K/V tiles come through a swizzled `cp.async` ring like the tensor-core
//! decode's (3 stages for the 64-row tile at D = 128, else 2: `config::prefill::stages`).
//! Causal CTAs stop at the last key their last row may see; windowed CTAs start at the first
//! key their first row may see (tiles outside are never loaded).
use crate::abi::{PrefillItem, PrefillParams, PrefillRequest};
use crate::arch::opaque::opaque_u32;
use crate::arch::{global, ldmatrix, pipeline, shared, thread, warp};
use crate::config::prefill as cfg;
use crate::dtype::{Bf16, Elem, F16};
use crate::math::fast::{exp2, fma, fmax, log2, rcp, tanh};
use crate::math::frag::{ldmatrix_a_x4_src, ldmatrix_b_x4_trans_src, ldmatrix_bt_x4_src, mma_a};
use crate::math::softmax::clamp_ref;

const TILE: u32 = cfg::TILE;

/// Byte offset of 16-byte chunk `c` of row `r` in a swizzled `[rows][D]` tile.
#[inline(always)]
const fn swz<const D: u32>(r: u32, c: u32) -> u32 {
    r * D * 2 + ((c ^ (r % 8)) * 16)
}

/// Where a request's K/V rows live: packed ragged tensors or the paged pool.
pub(crate) trait KvRows {
    /// Whether a row's address takes a dependent load (the page table). Tile copies then look
    /// each row up once, in one lane, and hand it to the lanes that copy it by shuffles, instead
    /// of a load per row and copying thread (see `prefill_hopper::copy_kv`).
    const LOOKUP: bool;

    /// Byte addresses of K and V of key `t` of the request whose KV starts at `kv_begin`
    /// (ragged: token offset; paged: page-list offset), head `kvh`, element 0.
    ///
    /// # Safety
    /// `t` must be a key of the request; the host validated the tables.
    unsafe fn row(p: &PrefillParams, kv_begin: u32, t: u32, kvh: u32) -> (u64, u64);

    /// Bytes between the K rows and between the V rows of consecutive keys (ragged; the
    /// `LOOKUP` layouts have no fixed step). Used by the Hopper producer only (sm_90a images).
    #[cfg_attr(not(target_feature = "sm_90a"), allow(dead_code))]
    fn key_step(p: &PrefillParams) -> (u64, u64);

    /// Byte offset of key `t`'s K row from `p.k`; for the `LOOKUP` layouts also that of its V
    /// row from `p.v` (one geometry for both pools).
    ///
    /// # Safety
    /// As [`KvRows::row`].
    unsafe fn offset(p: &PrefillParams, kv_begin: u32, t: u32, kvh: u32) -> u64;
}

/// Packed (ragged) K/V: token `kv_begin + t` of `k`/`v` with their strides.
pub(crate) struct Ragged;

impl KvRows for Ragged {
    const LOOKUP: bool = false;

    #[inline(always)]
    unsafe fn row(p: &PrefillParams, kv_begin: u32, t: u32, kvh: u32) -> (u64, u64) {
        let n = (kv_begin + t) as u64;
        (
            p.k + (n * p.k_stride_n as u64 + (kvh * p.k_stride_h) as u64) * 2,
            p.v + (n * p.v_stride_n as u64 + (kvh * p.v_stride_h) as u64) * 2,
        )
    }

    #[inline(always)]
    fn key_step(p: &PrefillParams) -> (u64, u64) {
        (p.k_stride_n as u64 * 2, p.v_stride_n as u64 * 2)
    }

    #[inline(always)]
    unsafe fn offset(p: &PrefillParams, kv_begin: u32, t: u32, kvh: u32) -> u64 {
        ((kv_begin + t) as u64 * p.k_stride_n as u64 + (kvh * p.k_stride_h) as u64) * 2
    }
}

/// Paged K/V: entry `t % page_size` of page `kv_indices[kv_begin + t / page_size]`.
pub(crate) struct Paged;

impl KvRows for Paged {
    const LOOKUP: bool = true;

    #[inline(always)]
    unsafe fn row(p: &PrefillParams, kv_begin: u32, t: u32, kvh: u32) -> (u64, u64) {
        // SAFETY: forwarded contract.
        let off = unsafe { Self::offset(p, kv_begin, t, kvh) };
        (p.k + off, p.v + off)
    }

    #[inline(always)]
    fn key_step(_: &PrefillParams) -> (u64, u64) {
        (0, 0)
    }

    #[inline(always)]
    unsafe fn offset(p: &PrefillParams, kv_begin: u32, t: u32, kvh: u32) -> u64 {
        let (slot, entry) = p.page_size.divmod(t);
        // SAFETY: slot < the request's page count (host-validated tables).
        let page = unsafe { global::ld_u32(p.kv_indices + ((kv_begin + slot) as u64) * 4) } as u64;
        // The K and V pools of a cache share one geometry (`KvPool`), so one element offset
        // serves both (the host passes equal K and V strides; fewer live registers per row).
        (page * p.k_stride_page + (entry * p.k_stride_n + kvh * p.k_stride_h) as u64) * 2
    }
}

/// Issues the copies of K/V keys `[base, base + TILE)` (zero-filled past `end`) into stage `s`.
/// Thread `tid` copies 16-byte chunk `tid % (D/8)` of rows `tid / (D/8) + i · threads / (D/8)`;
/// `dst` is its first chunk's swizzled offset (the swizzle only depends on `row % 8`, the same
/// for all its rows), so each row costs one add.
///
/// # Safety
/// As the kernel's contract.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn issue_tile<R: KvRows, const D: u32>(
    p: &PrefillParams,
    threads: u32,
    kv_off: u32,
    kvh: u32,
    base: u32,
    end: u32,
    s: u32,
    tid: u32,
    dst: u32,
    smem: u32,
) {
    let chunks = D / 8;
    let step = threads / chunks;
    let k_base = smem + s * 2 * TILE * D * 2 + dst;
    let v_base = k_base + TILE * D * 2;
    let (r0, c) = (tid / chunks, tid % chunks);
    // Opaque: otherwise LLVM turns every row's global address into its own 64-bit induction
    // variable across the KV loop (two per row: up to 32 registers held for the whole loop).
    let base = opaque_u32(base);
    // Paged (`R::LOOKUP`): the warp's rows are `r0 + i·step` for its lanes' `r0`, i.e. rows
    // `32w/chunks + h + i·step` (h = lane / chunks < per_pass); lane `i·per_pass + h` looks
    // row (h, i) up, one page-table load per lane and tile, and the copying lanes take the
    // offset by a shuffle (a load per row and thread stalled the copies on the loads).
    let per_pass = 32 / chunks;
    let (w, lane) = (tid / 32, tid % 32);
    let mut own = 0u64;
    if R::LOOKUP {
        let key = base + w * per_pass + lane % per_pass + step * (lane / per_pass);
        if lane < per_pass * (TILE / step) && key < end {
            // SAFETY: a key of the request (key < end ≤ kv_len).
            own = unsafe { R::offset(p, kv_off, key, kvh) };
        }
    }
    // Opaque: the per-pass source lanes stay inside the KV loop (not 8–16 hoisted registers).
    let h = opaque_u32(lane / chunks);
    for i in 0..(TILE / step) {
        let t = base + r0 + i * step;
        let valid = t < end;
        let (mut ka, mut va) = (p.k, p.v);
        if R::LOOKUP {
            let off = warp::shfl_idx_u64(own, i * per_pass + h);
            if valid {
                ka = p.k + off + (c * 16) as u64;
                va = p.v + off + (c * 16) as u64;
            }
        } else if valid {
            // SAFETY: t is a key of the request (t < end ≤ kv_len).
            let (k, v) = unsafe { R::row(p, kv_off, t, kvh) };
            ka = k + (c * 16) as u64;
            va = v + (c * 16) as u64;
        }
        // Rows `step` apart share `row % 8` (one precomputed swizzle) when `step` is a multiple
        // of 8; otherwise (D = 256: 4 rows per pass) each row is swizzled on its own.
        let row = if step % 8 == 0 {
            i * step * D * 2
        } else {
            swz::<D>(r0 + i * step, c).wrapping_sub(dst)
        };
        // SAFETY: destinations inside the stage; sources valid rows, or not read (zero-fill).
        unsafe {
            pipeline::cp_async_cg_16_or_zero(k_base + row, ka, !valid);
            pipeline::cp_async_cg_16_or_zero(v_base + row, va, !valid);
        }
    }
    pipeline::commit_group();
}

/// Per-lane shared-memory offsets of the fragments a warp reads, at k-step (or V n-pair) 0 of
/// 16-row block 0. In the swizzled layout chunk `c` of a row with `row % 8 = y` sits at
/// `16·(c ^ y)`; the fragment of step `i` reads chunks `2i + x` (`x` ∈ {0, 1}), so its offset is
/// `(off ^ 32·(i % 4)) + 128·(i / 4)` and block `b` adds `16·b·D·2`: three registers per lane
/// instead of one per unrolled `ldmatrix` ([`frag_at`]).
#[derive(Clone, Copy)]
struct FragOffsets {
    /// K (`ldmatrix.x4`, Kᵀ as the B operand): row `bn`, chunk `bk/8`.
    k: u32,
    /// V (`ldmatrix.x4.trans`): row `vk`, chunk `vn/8`.
    v: u32,
    /// Q (`ldmatrix.x4`, the A operand) of the warp's first m-tile: row `q_row0 + ar`, chunk
    /// `ac/8`.
    q: u32,
}

impl FragOffsets {
    #[inline(always)]
    fn new<const D: u32>(lane: u32, q_row0: u32) -> Self {
        let (bn, bk) = ldmatrix_bt_x4_src(lane);
        let (vk, vn) = ldmatrix_b_x4_trans_src(lane);
        let (ar, ac) = ldmatrix_a_x4_src(lane);
        Self {
            k: swz::<D>(bn, bk / 8),
            v: swz::<D>(vk, vn / 8),
            q: swz::<D>(q_row0 + ar, ac / 8),
        }
    }
}

/// Address of step `i`'s fragment from `base + off` (`base` a multiple of 256, so the XOR only
/// touches the in-row bits of `off`).
#[inline(always)]
fn frag_at(base_off: u32, i: u32) -> u32 {
    (base_off ^ (32 * (i % 4))) + 128 * (i / 4)
}

/// The CTA's work index: grid `(num_kv_heads, items)`, so the KV heads of one work item are
/// neighbours in launch order and the items' longest-first order holds across the whole grid
/// (with the heads in `y`, the last head's long items would start last). Both indices are
/// special registers, which ptxas rematerialises instead of keeping them live.
#[inline(always)]
pub(crate) fn cta_work() -> u32 {
    thread::block_idx_y()
}

/// The CTA's KV head (see [`cta_work`]).
#[inline(always)]
pub(crate) fn cta_kv_head() -> u32 {
    thread::block_idx_x()
}

/// Whether the kernel with `mt` m-tiles per warp at head dim `d` stages Q in shared memory
/// (`config::prefill::q_smem_bytes`; the host twin is `PrefillTile::smem_bytes`).
#[inline(always)]
const fn q_in_smem(mt: usize, d: u32) -> bool {
    mt > 1 || d > 128
}

/// This CTA's request and work item (single-request mode: derived from the launch), or `None`
/// for a padded CTA of a CUDA-graph grid. Called again after the KV loop instead of keeping
/// the fields live in registers across it.
///
/// # Safety
/// As the kernel's contract.
#[inline(always)]
pub(crate) unsafe fn load_work(p: &PrefillParams) -> Option<(PrefillRequest, PrefillItem)> {
    // SAFETY: forwarded contract.
    unsafe { load_item(p, cta_work()) }
}

/// Work item `i` and its request (single-request mode: query tile `i` counted from the last),
/// or `None` past the device-side item count (a padded CUDA-graph grid).
///
/// # Safety
/// As the kernel's contract; `i` an item index of the launch (`< grid.y` without persistent
/// units, a listed unit's item with them).
#[inline(always)]
pub(crate) unsafe fn load_item(p: &PrefillParams, i: u32) -> Option<(PrefillRequest, PrefillItem)> {
    Some(if p.items == 0 {
        (
            PrefillRequest {
                qo_begin: 0,
                qo_len: p.qo_len,
                kv_begin: 0,
                kv_len: p.kv_len,
            },
            PrefillItem {
                request: 0,
                // Last tiles first: under the causal mask they see the most keys.
                t0: (p.qo_len.wrapping_sub(1) / p.tile_tokens.max(1))
                    .wrapping_sub(i)
                    .wrapping_mul(p.tile_tokens),
                kv_begin: 0,
                kv_end: u32::MAX,
                part: u32::MAX,
                chunk: 0,
                nchunks: 1,
                pad: 0,
            },
        )
    } else {
        // SAFETY: host-provided count; CUDA-graph grids pad past it (CTA-uniform exit).
        if i >= unsafe { global::ld_u32(p.num_items) } {
            return None;
        }
        // SAFETY: item i and its request exist (host contract); 16-byte aligned arrays.
        let (a, b) = unsafe {
            (
                global::ld_u32x4(p.items + i as u64 * 32),
                global::ld_u32x4(p.items + i as u64 * 32 + 16),
            )
        };
        // SAFETY: as above.
        let r = unsafe { global::ld_u32x4(p.requests + a[0] as u64 * 16) };
        (
            PrefillRequest {
                qo_begin: r[0],
                qo_len: r[1],
                kv_begin: r[2],
                kv_len: r[3],
            },
            PrefillItem {
                request: a[0],
                t0: a[1],
                kv_begin: a[2],
                kv_end: a[3],
                part: b[0],
                chunk: b[1],
                nchunks: b[2],
                pad: 0,
            },
        )
    })
}

/// The kernel body (`NT = D/8` output n-tiles, `KS = D/16` k-steps, `W` warps of 16 rows).
///
/// # Safety
/// Grid `(num_kv_heads, items)` (single mode: `(num_kv_heads, ceil(qo_len / tile_tokens))`),
/// block `(32·W)`, dynamic smem `config::prefill::smem_bytes(stages, D)` (plus the Q tile when
/// it is staged, see [`q_in_smem`]); every table and extent the
/// parameters address validated by the host (`qo_len ≤ kv_len` per request).
#[inline(always)]
unsafe fn prefill<
    R: KvRows,
    E: Elem,
    const D: u32,
    const NT: usize,
    const KS: usize,
    const W: u32,
    const MT: usize,
>(
    p: &PrefillParams,
) {
    let threads = 32 * W;
    // K/V ring depth, fixed per instantiation (host twin: `PrefillTile::smem_bytes`).
    let stages = cfg::stages(W, MT as u32, D);
    // Q lives in shared memory (re-read per KV tile) with several m-tiles per warp or at
    // D = 256 (its fragments would take 64 registers); otherwise in registers.
    let q_smem_on = q_in_smem(MT, D);
    let tid = thread::thread_idx_x();
    let lane = tid % 32;
    let w = tid / 32;
    let kvh = cta_kv_head();
    let g = p.group.d;
    // SAFETY: as the kernel's contract.
    let Some((req, item)) = (unsafe { load_work(p) }) else {
        return;
    };
    let t0 = item.t0;
    let tokens = p.tile_tokens.min(req.qo_len - t0);
    let rows_total = tokens * g;
    let offset = req.kv_len - req.qo_len; // position of query token 0 (host: qo_len ≤ kv_len)
    let tf = p.logit;
    let causal = p.causal != 0;
    let window = p.window_left;

    // Keys this tile's rows may see (causal: up to the last token's position; window: from the
    // first token's window start), intersected with the item's chunk.
    let pos_first = offset + t0;
    let pos_last = offset + t0 + tokens - 1;
    let nat_end = if causal {
        (pos_last + 1).min(req.kv_len)
    } else {
        req.kv_len
    };
    let nat_begin = if window != u32::MAX {
        pos_first.saturating_sub(window)
    } else {
        0
    };
    let kv_end = nat_end.min(item.kv_end);
    let kv_begin = nat_begin.max(item.kv_begin);
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
    let tiles = if kv_end > kv_begin {
        (kv_end - kv_begin).div_ceil(TILE)
    } else {
        0
    };
    let (gq, tq) = (lane / 4, lane % 4);
    let copy_dst = swz::<D>(tid / (D / 8), tid % (D / 8));
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
        // SAFETY: see issue_tile.
        unsafe {
            issue_tile::<R, D>(
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
            )
        };
        // The rest of the prologue, tiles 1 .. stages − 1 (an empty group for a missing tile
        // keeps the group count the loop's waits assume).
        for s in 1..stages - 1 {
            if s < tiles {
                // SAFETY: see issue_tile.
                unsafe {
                    issue_tile::<R, D>(
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
                    )
                };
            } else {
                pipeline::commit_group();
            }
        }
    }
    // The most restrictive window start (the last token's); keys before it need the mask.
    let win_last = if window != u32::MAX {
        pos_last.saturating_sub(window)
    } else {
        0
    };

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
                    // SAFETY: in-range q element pair, 4-byte aligned (col even).
                    *v = unsafe { global::ld_u32(q_row_addr(r, kk as u32 * 16 + col)) };
                }
            }
        }
    }

    let mut o = [[[0.0f32; 4]; NT]; MT];
    let mut m = [[f32::NEG_INFINITY; 2]; MT];
    let mut d = [[0.0f32; 2]; MT];
    let mut j = 0;
    while j < tiles {
        let base = kv_begin + j * TILE;
        // Tile j + stages − 1 goes into the stage of tile j − 1, released by the barrier that
        // ended step j − 1; `stages − 1` tiles are in flight while tile j is computed.
        if j + stages - 1 < tiles {
            // SAFETY: see issue_tile.
            unsafe {
                issue_tile::<R, D>(
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
        let k_base = kv_smem + (j % stages) * 2 * TILE * D * 2;
        let v_base = k_base + TILE * D * 2;

        // S = Q·Kᵀ: 8 n-tiles of 8 keys per m-tile; each K fragment (ldmatrix.x4: two n-tiles)
        // feeds every m-tile of the warp.
        let mut s = [[[0.0f32; 4]; 8]; MT];
        let (qb, kb0, vb0) = (q_smem + fo.q, k_base + fo.k, v_base + fo.v);
        for kk in 0..KS {
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
                let np = np as usize;
                for mt in 0..MT {
                    s[mt][2 * np] = E::mma(a[mt], [kb[0], kb[1]], s[mt][2 * np]);
                    s[mt][2 * np + 1] = E::mma(a[mt], [kb[2], kb[3]], s[mt][2 * np + 1]);
                }
            }
        }
        // Transform, and mask only where some key of the tile is invisible to some row: the
        // tile crosses the chunk end, the first token's causal limit or the last token's
        // window start (CTA-uniform, so interior tiles skip the per-element tests).
        let need_mask =
            base + TILE > kv_end || (causal && base + TILE - 1 > pos_first) || base < win_last;
        let mut pa = [[[0u32; 4]; 4]; MT];
        // Plain softmax with a positive scale: the max of raw scores is the max of logits, and
        // `exp2(s·scale − m)` is one FFMA + ex2 per score (no separate scaling pass).
        let fold = tf.soft_cap == 0 && tf.pre > 0.0;
        let scale = if fold { tf.pre } else { 1.0 };
        for mt in 0..MT {
            // Branches at tile level around whole loops (not per score): per-score branches
            // split the unrolled tile into hundreds of basic blocks ptxas cannot schedule across.
            if tf.soft_cap != 0 {
                for st in s[mt].iter_mut() {
                    for x in st.iter_mut() {
                        *x = tf.post * tanh(*x * tf.pre);
                    }
                }
            } else if !fold {
                for st in s[mt].iter_mut() {
                    for x in st.iter_mut() {
                        *x *= tf.pre;
                    }
                }
            }
            if need_mask {
                // Query positions of the lane's two rows (rows past the end take the last
                // row's), recomputed here rather than held across the loop.
                let mut pos = [0u32; 2];
                for (hh, ph) in pos.iter_mut().enumerate() {
                    let r = (row0(mt) + gq + 8 * hh as u32).min(rows_total - 1);
                    *ph = pos_first + p.group.div(r);
                }
                for (nt, st) in s[mt].iter_mut().enumerate() {
                    for (e, x) in st.iter_mut().enumerate() {
                        let key = base + nt as u32 * 8 + 2 * tq + (e % 2) as u32;
                        let ph = pos[e / 2];
                        // Non-short-circuit `&`/`|`: predicate logic, no branches.
                        let ok = (key < kv_end)
                            & (!causal | (key <= ph))
                            & ((window == u32::MAX) | (key as u64 + window as u64 >= ph as u64));
                        *x = if ok { *x } else { f32::NEG_INFINITY };
                    }
                }
            }
            // Row max and row sum as trees over the lane's 16 scores per row: sequential chains
            // of dependent fmax/add were the kernel's main latency stall.
            let mut mx = [f32::NEG_INFINITY; 2];
            for (hh, mh) in mx.iter_mut().enumerate() {
                let mut t = [0.0f32; 8];
                for (nt, tv) in t.iter_mut().enumerate() {
                    *tv = fmax(s[mt][nt][2 * hh], s[mt][nt][2 * hh + 1]);
                }
                *mh = fmax(
                    fmax(fmax(t[0], t[1]), fmax(t[2], t[3])),
                    fmax(fmax(t[4], t[5]), fmax(t[6], t[7])),
                );
            }
            // Scores are raw (fold: the scale goes into the exp2's FFMA) or already base-2
            // logits (scale 1).
            let mut r_scale = [1.0f32; 2];
            let mut mref = [0.0f32; 2];
            for hh in 0..2 {
                let mut v = mx[hh];
                v = fmax(v, warp::shfl_xor_f32(v, 1));
                v = fmax(v, warp::shfl_xor_f32(v, 2));
                let m_new = fmax(m[mt][hh], v * scale);
                mref[hh] = clamp_ref(m_new);
                r_scale[hh] = exp2(m[mt][hh] - mref[hh]);
                m[mt][hh] = m_new;
            }
            for st in s[mt].iter_mut() {
                for e in 0..4 {
                    st[e] = exp2(fma(st[e], scale, -mref[e / 2]));
                }
            }
            for hh in 0..2 {
                let mut t = [0.0f32; 8];
                for (nt, tv) in t.iter_mut().enumerate() {
                    *tv = s[mt][nt][2 * hh] + s[mt][nt][2 * hh + 1];
                }
                let sum = ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
                d[mt][hh] = fma(d[mt][hh], r_scale[hh], sum);
            }
            for ot in o[mt].iter_mut() {
                ot[0] *= r_scale[0];
                ot[1] *= r_scale[0];
                ot[2] *= r_scale[1];
                ot[3] *= r_scale[1];
            }
            // P as the A operand of P·V: k-step ks covers keys 16ks .. 16ks + 16.
            for (ks, pk) in pa[mt].iter_mut().enumerate() {
                let (lo, hi) = (s[mt][2 * ks], s[mt][2 * ks + 1]);
                *pk = [
                    E::pack2(lo[0], lo[1]),
                    E::pack2(lo[2], lo[3]),
                    E::pack2(hi[0], hi[1]),
                    E::pack2(hi[2], hi[3]),
                ];
            }
        }
        // O += P·V over 4 k-steps of 16 keys; each V fragment feeds every m-tile.
        for ks in 0..4u32 {
            let mut np = 0;
            while np < NT / 2 {
                // SAFETY: inside the stage; warp-convergent.
                let vb = unsafe {
                    ldmatrix::ldmatrix_x4_trans(frag_at(vb0, np as u32) + ks * 16 * D * 2)
                };
                for mt in 0..MT {
                    let pk = pa[mt][ks as usize];
                    o[mt][2 * np] = E::mma(pk, [vb[0], vb[1]], o[mt][2 * np]);
                    o[mt][2 * np + 1] = E::mma(pk, [vb[2], vb[3]], o[mt][2 * np + 1]);
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
        for dh in d[mt].iter_mut() {
            *dh += warp::shfl_xor_f32(*dh, 1);
            *dh += warp::shfl_xor_f32(*dh, 2);
        }
        for hh in 0..2 {
            let r = row0(mt) + gq + 8 * hh as u32;
            if r >= rows_total {
                continue;
            }
            let (t, h) = p.group.divmod(r);
            let hq = kvh * g + h;
            let dv = d[mt][hh];
            let inv = if dv > 0.0 { rcp(dv) } else { 0.0 };
            let lse = if dv > 0.0 {
                m[mt][hh] + log2(dv)
            } else {
                f32::NEG_INFINITY
            };
            if item.part != u32::MAX {
                // Split-KV: normalised partial state of this chunk, merged by `merge_f32_*`.
                let slot = item.part + t * item.nchunks + item.chunk;
                let obase = ((slot * p.num_qo_heads + hq) as u64) * D as u64;
                for (nt, ot) in o[mt].iter().enumerate() {
                    let col = (nt as u32 * 8 + 2 * tq) as u64;
                    // SAFETY: slot < the plan's slot count (host contract).
                    unsafe {
                        global::st_f32(p.part_o + (obase + col) * 4, ot[2 * hh] * inv);
                        global::st_f32(p.part_o + (obase + col + 1) * 4, ot[2 * hh + 1] * inv);
                    }
                }
                if tq == 0 {
                    // SAFETY: as above.
                    unsafe {
                        global::st_f32(p.part_lse + ((slot * p.num_qo_heads + hq) as u64) * 4, lse)
                    };
                }
                continue;
            }
            let tok = (req.qo_begin + t0 + t) as u64;
            let obase = tok * (p.o_stride_n as u64) + (hq * p.o_stride_h) as u64;
            for (nt, ot) in o[mt].iter().enumerate() {
                let col = nt as u32 * 8 + 2 * tq;
                // SAFETY: host-validated o extent; 4-byte aligned (col even).
                unsafe {
                    global::st_u32(
                        p.o + (obase + col as u64) * 2,
                        E::pack2(ot[2 * hh] * inv, ot[2 * hh + 1] * inv),
                    )
                };
            }
            if tq == 0 && p.lse != 0 {
                // SAFETY: lse [tokens, Hq].
                unsafe {
                    global::st_f32(p.lse + (tok * p.num_qo_heads as u64 + hq as u64) * 4, lse)
                };
            }
        }
    }
}

macro_rules! prefill_entries {
    ($($name:ident => $r:ty, $e:ty, $d:literal, $nt:literal, $ks:literal, $w:expr, $mt:expr;)*) => {$(
        #[doc = concat!("Entry point: prefill, ", stringify!($r), " K/V, ", stringify!($e),
                        ", D = ", $d, ".")]
        ///
        /// # Safety
        /// See the generic body's launch contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: PrefillParams) {
            // SAFETY: forwarded launch contract.
            unsafe { prefill::<$r, $e, $d, $nt, $ks, { $w }, { $mt }>(&p) }
        }
    )*};
}

// Tiles (rows per CTA = 16 · warps · m-tiles per warp): default 4 warps × 16 rows; `_w8`
// 8 warps × 16 rows (each K/V tile shared by twice the rows: half the L2 traffic per FLOP);
// `_m2` 4 warps × 32 rows (each K/V fragment read from shared memory feeds two mma: ~60 % of the
// shared-memory traffic per FLOP, Q re-read from shared memory). Chosen by measurement
// (docs/perf-notes.md).
prefill_entries! {
    prefill_ragged_f16_d64 => Ragged, F16, 64, 8, 4, 4, 1;
    prefill_ragged_f16_d128 => Ragged, F16, 128, 16, 8, 4, 1;
    prefill_ragged_bf16_d64 => Ragged, Bf16, 64, 8, 4, 4, 1;
    prefill_ragged_bf16_d128 => Ragged, Bf16, 128, 16, 8, 4, 1;
    prefill_paged_f16_d64 => Paged, F16, 64, 8, 4, 4, 1;
    prefill_paged_f16_d128 => Paged, F16, 128, 16, 8, 4, 1;
    prefill_paged_bf16_d64 => Paged, Bf16, 64, 8, 4, 4, 1;
    prefill_paged_bf16_d128 => Paged, Bf16, 128, 16, 8, 4, 1;
    prefill_ragged_f16_d64_w8 => Ragged, F16, 64, 8, 4, 8, 1;
    prefill_ragged_f16_d128_w8 => Ragged, F16, 128, 16, 8, 8, 1;
    prefill_ragged_bf16_d64_w8 => Ragged, Bf16, 64, 8, 4, 8, 1;
    prefill_ragged_bf16_d128_w8 => Ragged, Bf16, 128, 16, 8, 8, 1;
    prefill_paged_f16_d64_w8 => Paged, F16, 64, 8, 4, 8, 1;
    prefill_paged_f16_d128_w8 => Paged, F16, 128, 16, 8, 8, 1;
    prefill_paged_bf16_d64_w8 => Paged, Bf16, 64, 8, 4, 8, 1;
    prefill_paged_bf16_d128_w8 => Paged, Bf16, 128, 16, 8, 8, 1;
    prefill_ragged_f16_d64_m2 => Ragged, F16, 64, 8, 4, 4, 2;
    prefill_ragged_f16_d128_m2 => Ragged, F16, 128, 16, 8, 4, 2;
    prefill_ragged_bf16_d64_m2 => Ragged, Bf16, 64, 8, 4, 4, 2;
    prefill_ragged_bf16_d128_m2 => Ragged, Bf16, 128, 16, 8, 4, 2;
    prefill_paged_f16_d64_m2 => Paged, F16, 64, 8, 4, 4, 2;
    prefill_paged_f16_d128_m2 => Paged, F16, 128, 16, 8, 4, 2;
    prefill_paged_bf16_d64_m2 => Paged, Bf16, 64, 8, 4, 4, 2;
    prefill_paged_bf16_d128_m2 => Paged, Bf16, 128, 16, 8, 4, 2;
    prefill_ragged_f16_d256 => Ragged, F16, 256, 32, 16, 4, 1;
    prefill_ragged_bf16_d256 => Ragged, Bf16, 256, 32, 16, 4, 1;
    prefill_paged_f16_d256 => Paged, F16, 256, 32, 16, 4, 1;
    prefill_paged_bf16_d256 => Paged, Bf16, 256, 32, 16, 4, 1;
}
