//! Prefill attention on Hopper's warpgroup tensor cores (`wgmma`, sm_90a only): the same work
//! items, masks and outputs as `prefill.rs`, with both matrix products issued per warpgroup.
//!
//! CTA = (128 packed query rows, KV head), 384 threads in three warpgroups. Warpgroups 0 and 1
//! consume, 64 rows each (warp `w` owns rows `16w .. 16w + 16`, as in the 8-warp tile of
//! `prefill.rs`); warpgroup 2 produces: it copies Q (`cp.async`, barrier `q_full`) and the K/V
//! tiles of 128 keys into a 3-stage ring whose stages are tracked by `mbarrier`s ("full" when
//! the tile has landed, "empty" when all 8 consumer warps' last `wgmma` reading the stage has
//! finished). K/V tiles come by `cp.async` from all 128 producer threads ([`copy_kv`]), or, in
//! the ragged entries' TMA forms (`_ht`), by TMA box copies that one producer thread issues
//! ([`tma_kv`]; tensor maps from the host, `arch::tma`). `setmaxnreg` moves registers from the producer (40) to the consumers (232); the
//! register cap at entry that it needs is the `.maxntid` `host/build.rs` writes into the PTX.
//! Per tile the consumers wait for "full", make the copies visible to `wgmma`
//! (`fence.proxy.async`) and compute S = Q·Kᵀ as `D/16` `wgmma.m64n128k16` with Q and K both
//! read from shared memory through descriptors; masks and the online softmax on the
//! accumulator registers (the `mma.m16n8k16` C layout); P packed to 16 bits in registers as
//! the A operand of O += P·V, 8 `wgmma` (16 keys each) with V read N-major (transposed) from
//! shared memory. Q, K and V sit in the 128-byte-swizzled layout `math::wgmma_layout` (K and V
//! tiles alike: the K-major B operand of the score product and the N-major B operand of P·V
//! read the same bytes differently). Each step overlaps the softmax of tile j with P·V of tile
//! j−1 (see [`step`]), and the consumer warpgroups take turns issuing their products
//! (pingpong), so one's softmax runs under the other's products.
use crate::abi::{PrefillParams, PrefillRequest};
use crate::arch::{global, mbarrier, pipeline, shared, thread, tma, warp, wgmma};
use crate::config::prefill_hopper as cfg;
use crate::dtype::{Bf16, Elem, F16};
use crate::math::fast::{exp2, fma, fmax, log2, rcp, tanh};
use crate::math::softmax::clamp_ref;
use crate::math::wgmma_layout::{chunk_offset, GROUP_BYTES, ROW_BYTES};
use crate::prefill::{cta_kv_head, load_work, KvRows, Paged, Ragged};

pub(crate) const TILE: u32 = cfg::TILE;
pub(crate) const ROWS: u32 = cfg::ROWS;
/// Warps 0–7 consume (two warpgroups); warps 8–11 produce.
pub(crate) const CONSUMER_WARPS: u32 = cfg::CONSUMER_WARPS;
pub(crate) const PRODUCER_THREADS: u32 = cfg::THREADS - 32 * CONSUMER_WARPS;
/// Named barriers 1 and 2: warpgroup w waits at `PINGPONG_BAR + w` for its turn to issue.
pub(crate) const PINGPONG_BAR: u32 = 1;

/// The element types' `wgmma` instructions.
pub(crate) trait WgmmaElem: Elem {
    /// S(64×128) (+)= A·B, A and B K-major in shared memory.
    ///
    /// # Safety
    /// As [`wgmma::mma_ss_n128_bf16`].
    unsafe fn scores(d: &mut [f32; 64], a: u64, b: u64, acc: bool);
    /// O(64×`2·ON`) += P·V, P from registers, V N-major in shared memory (`ON` = 32 or 64).
    ///
    /// # Safety
    /// As [`wgmma::mma_rs_n128_bf16`].
    unsafe fn pv<const ON: usize>(o: &mut [f32; ON], a: [u32; 4], b: u64);
}

macro_rules! wgmma_elem {
    ($e:ty, $ss:ident, $rs128:ident, $rs64:ident) => {
        impl WgmmaElem for $e {
            #[inline(always)]
            unsafe fn scores(d: &mut [f32; 64], a: u64, b: u64, acc: bool) {
                // SAFETY: forwarded contract.
                unsafe { wgmma::$ss(d, a, b, acc) }
            }

            #[inline(always)]
            unsafe fn pv<const ON: usize>(o: &mut [f32; ON], a: [u32; 4], b: u64) {
                // The accumulator count is fixed by the head dim; the casts below are between
                // identical array types (ON is 64 or 32, checked at compile time by the branch).
                if ON == 64 {
                    // SAFETY: same type ([f32; 64]); forwarded contract.
                    unsafe { wgmma::$rs128(&mut *(o as *mut [f32; ON] as *mut [f32; 64]), a, b, true) }
                } else if ON == 32 {
                    // SAFETY: same type ([f32; 32]); forwarded contract.
                    unsafe { wgmma::$rs64(&mut *(o as *mut [f32; ON] as *mut [f32; 32]), a, b, true) }
                }
            }
        }
    };
}

wgmma_elem!(F16, mma_ss_n128_f16, mma_rs_n128_f16, mma_rs_n64_f16);
wgmma_elem!(Bf16, mma_ss_n128_bf16, mma_rs_n128_bf16, mma_rs_n64_bf16);

/// The producer warpgroup: copies the Q tile (completing on `q_full`) and then every K/V tile
/// of the CTA's range into the stage ring, waiting on a stage's "empty" barrier before
/// refilling it ([`load_kv`]: each stage's "full" barrier gets the producers' 128 `cp.async`
/// arrivals, or with TMA thread 0's `expect_tx` arrival and the tile's bytes; Q: [`copy_q`]).
///
/// # Safety
/// As the kernel's contract; called by the third warpgroup only, after the barriers were
/// initialised.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn produce<R: KvRows, M: MapsAddr, const D: u32>(
    p: &PrefillParams,
    req: &PrefillRequest,
    t0: u32,
    rows_total: u32,
    kvh: u32,
    kv_begin: u32,
    kv_end: u32,
    tiles: u32,
    pid: u32,
    q_smem: u32,
    kv_smem: u32,
    bars: Barriers,
    maps: M,
) {
    // SAFETY: as the kernel's contract; nothing read the Q tile yet.
    unsafe { copy_q::<D>(p, req.qo_begin + t0, rows_total, kvh, pid, q_smem) };
    // SAFETY: initialised barrier (count: the producer threads).
    unsafe { mbarrier::cp_async_arrive(bars.q_full()) };
    if pid == 0 {
        maps.prefetch();
    }
    // With TMA one thread issues the K/V tiles' box copies.
    let my_tiles = if M::ON && pid != 0 { 0 } else { tiles };
    let mut n = 0;
    while n < my_tiles {
        let base = crate::arch::opaque::opaque_u32(kv_begin + n * TILE);
        // SAFETY: as the kernel's contract; the barriers are initialised.
        unsafe {
            load_kv::<R, M, D>(
                p,
                maps,
                req.kv_begin,
                kvh,
                base,
                kv_end,
                n,
                pid,
                kv_smem,
                bars,
            )
        };
        n += 1;
    }
    pipeline::wait_all();
}

/// Copies a query tile's Q rows into the Q tile: packed row `r` = (token `r / g`, head `r % g`
/// of the KV head's group) from q token `q_row0 + r / g`, zeros past `rows_total`. Producer
/// thread `pid` copies 16-byte chunk `pid % (D/8)` of rows `pid / (D/8) + k · 128/(D/8)`: rows
/// 8 or 16 apart share `row % 8`, so one swizzled offset serves all of them.
///
/// # Safety
/// As the kernel's contract; the consumers do not read the Q tile.
#[inline(always)]
pub(crate) unsafe fn copy_q<const D: u32>(
    p: &PrefillParams,
    q_row0: u32,
    rows_total: u32,
    kvh: u32,
    pid: u32,
    q_smem: u32,
) {
    let chunks = D / 8;
    let rows_per_pass = PRODUCER_THREADS / chunks;
    let (r0, c) = (pid / chunks, pid % chunks);
    for i in 0..ROWS / rows_per_pass {
        let r = r0 + i * rows_per_pass;
        let live = r < rows_total;
        let src = if live {
            let (t, h) = p.group.divmod(r);
            p.q + (((q_row0 + t) as u64) * (p.q_stride_n as u64)
                + ((kvh * p.group.d + h) * p.q_stride_h + c * 8) as u64)
                * 2
        } else {
            p.q
        };
        // SAFETY: destination inside the Q tile; source a q row or a zero-byte copy.
        unsafe {
            pipeline::cp_async_cg_16(
                q_smem + chunk_offset(ROWS, r, c),
                src,
                if live { 16 } else { 0 },
            )
        };
    }
}

/// Loads the CTA's `n`-th K/V tile, keys `[base, base + TILE)` of the request whose keys start
/// at `req_kv_begin`: with tensor maps producer thread 0 issues it ([`tma_kv`]), otherwise
/// all producer threads copy it ([`copy_kv`]).
///
/// # Safety
/// As the kernel's contract; the barriers are initialised.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) unsafe fn load_kv<R: KvRows, M: MapsAddr, const D: u32>(
    p: &PrefillParams,
    maps: M,
    req_kv_begin: u32,
    kvh: u32,
    base: u32,
    kv_end: u32,
    n: u32,
    pid: u32,
    kv_smem: u32,
    bars: Barriers,
) {
    if M::ON {
        if pid == 0 {
            let maps = maps.addr();
            // SAFETY: forwarded contract.
            unsafe { tma_kv::<D>(maps, req_kv_begin + base, kvh, n, kv_smem, bars) };
        }
    } else {
        // SAFETY: forwarded contract.
        unsafe { copy_kv::<R, D>(p, req_kv_begin, kvh, base, kv_end, n, pid, kv_smem, bars) };
    }
}

/// Loads the CTA's `n`-th K/V tile, ragged rows `[row, row + TILE)` of KV head `kvh`, into its
/// stage with TMA once the stage's previous tile was released: an `expect_tx` arrival for
/// the tile's bytes on the stage's "full" barrier, then one box copy per 64-column block of
/// K and of V (the maps' 128-byte swizzle is `math::wgmma_layout`'s). Rows past the request's
/// keys are read as they are (another request's keys, or zeros past the tensor): the
/// consumers mask them, and finite inputs give `P = 0` there. One thread calls it.
///
/// # Safety
/// As the kernel's contract; `maps` the address of the launch's [`crate::abi::KvTensorMaps`];
/// the stage's "full" barrier initialised with a count of 1.
#[inline(always)]
pub(crate) unsafe fn tma_kv<const D: u32>(
    maps: u64,
    row: u32,
    kvh: u32,
    n: u32,
    kv_smem: u32,
    bars: Barriers,
) {
    let stage = n % cfg::STAGES;
    if n >= cfg::STAGES {
        // SAFETY: initialised barrier; the phase of tile n − STAGES's release.
        unsafe { mbarrier::wait(bars.empty(stage), (n / cfg::STAGES - 1) % 2) };
    }
    let full = bars.full(stage);
    // SAFETY: initialised barrier.
    unsafe { mbarrier::arrive_expect_tx(full, 2 * TILE * D * 2) };
    let (k, v) = (stage_k(kv_smem, stage, D), stage_v(kv_smem, stage, D));
    for b in 0..D / 64 {
        let off = b * TILE * ROW_BYTES;
        // SAFETY: boxes of TILE rows × 128 bytes inside the stage (1024-byte aligned); the
        // barrier's phase expects their bytes (above).
        unsafe {
            tma::load_3d(k + off, maps, b * 64, kvh, row, full);
            tma::load_3d(v + off, maps + 128, b * 64, kvh, row, full);
        }
    }
}

/// Copies the CTA's `n`-th K/V tile, keys `[base, base + TILE)` (zero past `kv_end`), into its
/// stage once the stage's previous tile was released, then arrives on the stage's "full"
/// barrier. Producer warp `w` copies rows `32w .. 32w + 32`, `32 / (D/8)` rows per pass (lane
/// `l`: chunk `l % (D/8)` of row `l / (D/8)` of the pass). With `R::LOOKUP` (paged) lane `l`
/// first resolves row `32w + l` (one page-table load per lane and tile, issued before the
/// wait for the stage), and each pass takes its rows' offsets from their lanes by shuffles:
/// a load per copied row made the copies wait on a chain of page-table loads, ~19 % slower
/// than ragged on long paged prefills (docs/perf-notes.md).
///
/// # Safety
/// As the kernel's contract; the barriers are initialised.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) unsafe fn copy_kv<R: KvRows, const D: u32>(
    p: &PrefillParams,
    req_kv_begin: u32,
    kvh: u32,
    base: u32,
    kv_end: u32,
    n: u32,
    pid: u32,
    kv_smem: u32,
    bars: Barriers,
) {
    let chunks = D / 8;
    let rows_per_pass = 32 / chunks;
    let (w, lane) = (pid / 32, pid % 32);
    let (h, c) = (lane / chunks, lane % chunks);
    let row_w = 32 * w;
    let mut own = 0u64;
    if R::LOOKUP && base + row_w + lane < kv_end {
        // SAFETY: a key of the request (< kv_end ≤ kv_len).
        own = unsafe { R::offset(p, req_kv_begin, base + row_w + lane, kvh) };
    }
    let stage = n % cfg::STAGES;
    if n >= cfg::STAGES {
        // SAFETY: initialised barrier; the phase of tile n − STAGES's release.
        unsafe { mbarrier::wait(bars.empty(stage), (n / cfg::STAGES - 1) % 2) };
    }
    // Row `row_w + i·rows_per_pass + h` has `row % 8 = (i·rows_per_pass) % 8 | h` (row_w is a
    // multiple of 8, h < rows_per_pass, a power of two), so its swizzled chunk is
    // `(c % 8) ^ h ^ (i·rows_per_pass % 8)`: one lane constant and one compile-time one.
    let dst0 = stage_k(kv_smem, stage, D) + (c / 8) * TILE * ROW_BYTES + (row_w + h) * ROW_BYTES;
    // Opaque inside the tile loop: otherwise LLVM hoists the 16 source lanes `r + h` and the
    // swizzled offsets out of it, up to 32 of the producer's 40 registers.
    let cx = crate::arch::opaque::opaque_u32((c % 8) ^ h);
    let h_lane = crate::arch::opaque::opaque_u32(h);
    // Ragged: the lane's first row, then a fixed step per pass (a multiply-add chain per row
    // cost ~30 instructions, a third of the SM's issue slots next to the consumers').
    let (mut ka, mut va) = (p.k, p.v);
    let (dk, dv) = R::key_step(p);
    if !R::LOOKUP {
        // SAFETY: not `LOOKUP`, so address arithmetic only (rows past kv_end are not read:
        // zero-fill below).
        let (k, v) = unsafe { R::row(p, req_kv_begin, base + row_w + h, kvh) };
        (ka, va) = (k + (c * 16) as u64, v + (c * 16) as u64);
    }
    for i in 0..chunks {
        let r = i * rows_per_pass; // the row's index in the warp's 32, less h
        let valid = base + row_w + r + h < kv_end;
        let (src_k, src_v) = if R::LOOKUP {
            let off = warp::shfl_idx_u64(own, r + h_lane) + (c * 16) as u64;
            (p.k + off, p.v + off)
        } else {
            (ka, va)
        };
        let dst = dst0 + r * ROW_BYTES + (cx ^ (r % 8)) * 16;
        // SAFETY: destinations inside the stage; sources valid rows, or not read (zero-fill).
        unsafe {
            pipeline::cp_async_cg_16_or_zero(dst, src_k, !valid);
            pipeline::cp_async_cg_16_or_zero(dst + TILE * D * 2, src_v, !valid);
        }
        ka += rows_per_pass as u64 * dk;
        va += rows_per_pass as u64 * dv;
    }
    // SAFETY: initialised barrier.
    unsafe { mbarrier::cp_async_arrive(bars.full(stage)) };
}

/// The kernel body (`ON = D/2` output accumulators per thread, `KS = D/16` k-steps of the score
/// product; `FOLD`: plain softmax with a positive scale, see [`softmax`]).
///
/// # Safety
/// Grid `(num_kv_heads, items)` (single mode: `(num_kv_heads, ceil(qo_len / tile_tokens))`),
/// block 256, dynamic smem `config::prefill_hopper::smem_bytes(D)`; every table and extent the
/// parameters address validated by the host (`qo_len ≤ kv_len` per request).
#[inline(always)]
unsafe fn prefill<
    R: KvRows,
    E: WgmmaElem,
    const D: u32,
    const ON: usize,
    const KS: usize,
    const FOLD: bool,
    M: MapsAddr,
>(
    p: &PrefillParams,
    maps: M,
) {
    let tid = thread::thread_idx_x();
    let lane = tid % 32;
    let w = tid / 32;
    let wg = w / 4;
    let kvh = cta_kv_head();
    let g = p.group.d;
    // SAFETY: as the kernel's contract.
    let Some((req, item)) = (unsafe { load_work(p) }) else {
        return;
    };
    let t0 = item.t0;
    let tokens = p.tile_tokens.min(req.qo_len - t0);
    let rows_total = tokens * g;
    let offset = req.kv_len - req.qo_len;
    let tf = p.logit;
    let causal = p.causal != 0;
    let window = p.window_left;
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
    let q_smem = shared::dyn_smem_base();
    let kv_smem = q_smem + ROWS * D * 2;
    let bars = Barriers::after_ring(kv_smem, D);
    if tid == 0 {
        // SAFETY: nobody uses the barriers before the CTA barrier below.
        unsafe { bars.init(M::ON) };
    }
    thread::sync_threads();
    let tiles = if kv_end > kv_begin {
        (kv_end - kv_begin).div_ceil(TILE)
    } else {
        0
    };
    // Warp-specialised roles, one branch each (what `setmaxnreg` needs): the third warpgroup
    // produces with few registers, the first two consume with the rest.
    if w >= CONSUMER_WARPS {
        wgmma::setmaxnreg_dec::<{ cfg::PRODUCER_REGS }>();
        // SAFETY: as the kernel's contract; the barriers are initialised (above).
        unsafe {
            produce::<R, M, D>(
                p,
                &req,
                t0,
                rows_total,
                kvh,
                kv_begin,
                kv_end,
                tiles,
                tid - 32 * CONSUMER_WARPS,
                q_smem,
                kv_smem,
                bars,
                maps,
            )
        };
        return;
    }
    wgmma::setmaxnreg_inc::<{ cfg::CONSUMER_REGS }>();
    let (gq, tq) = (lane / 4, lane % 4);
    let win_last = if window != u32::MAX {
        pos_last.saturating_sub(window)
    } else {
        0
    };
    let row0 = w * 16;
    // The warpgroup's 64 Q rows: rows 64·wg .. of every column block.
    let q_wg = q_smem + wg * 64 * ROW_BYTES;

    let t = TileCtx {
        kv_end,
        pos_first,
        rows_total,
        row0,
        gq,
        tq,
        causal,
        window,
        tf,
        group: p.group,
    };
    let masked = |j: u32| {
        let base = kv_begin + j * TILE;
        base + TILE > kv_end || (causal && base + TILE - 1 > pos_first) || base < win_last
    };
    let mut acc = Acc {
        o: [0.0f32; ON],
        m: [f32::NEG_INFINITY; 2],
        d: [0.0f32; 2],
        s: [[0.0f32; 4]; 16],
        r: [1.0f32; 2],
        pa: [[0u32; 4]; 8],
    };
    // Turn order: warpgroup 0 issues first (warpgroup 1 gives it the first turn); every step
    // of each ends by handing the turn to the other.
    if wg == 1 {
        // SAFETY: consumed by warpgroup 0's first turn (or its final wait below).
        unsafe { thread::named_barrier_arrive(PINGPONG_BAR, 256) };
    }
    // SAFETY: initialised barrier; the producers' Q copies.
    unsafe { mbarrier::wait(bars.q_full(), 0) };
    // Each step is straight-line code (its mask and softmax mode are compile-time): a branch
    // while `wgmma` is in flight makes ptxas wait for it at the join, which undid the overlap.
    let mut j = 0;
    while j < tiles {
        let st = Step {
            base: kv_begin + j * TILE,
            stage: j % cfg::STAGES,
            phase: (j / cfg::STAGES) % 2,
            prev_stage: (j + cfg::STAGES - 1) % cfg::STAGES,
            release: if j >= 2 {
                (j - 2) % cfg::STAGES
            } else {
                u32::MAX
            },
        };
        // SAFETY: as the kernel's contract.
        unsafe {
            step_for::<E, D, ON, KS, FOLD>(j == 0, masked(j), &t, &st, &mut acc, tid, q_wg, kv_smem)
        };
        j += 1;
    }
    // Unconditional: on every path out of the loop nothing may stay in flight (ptxas cannot
    // tell that `tiles > 0` below holds whenever the loop ran, and otherwise serialises every
    // `wgmma` of the kernel).
    wgmma::wait_group::<0>();
    if wg == 0 {
        // Takes warpgroup 1's last hand-over (or its first, when there were no tiles): the
        // named barriers end balanced.
        // SAFETY: warpgroup 1 arrives once more than warpgroup 0 waited in the loop.
        unsafe { thread::named_barrier_sync(PINGPONG_BAR, 256) };
    }
    if tiles > 0 {
        acc.settle::<E>();
        wgmma::fence();
        let v_base = stage_v(kv_smem, (tiles - 1) % cfg::STAGES, D);
        // SAFETY: warpgroup-convergent; V of the last tile is in its stage.
        unsafe { issue_pv::<E, ON>(&mut acc.o, &acc.pa, v_base) };
        wgmma::commit_group();
        wgmma::wait_group::<0>();
        wgmma::fence_operands(&mut acc.o);
    }
    let Acc { o, m, mut d, .. } = acc;
    pipeline::wait_all();
    // SAFETY: as above (the same work as at the start).
    let Some((req, item)) = (unsafe { load_work(p) }) else {
        return;
    };
    for dh in d.iter_mut() {
        *dh += warp::shfl_xor_f32(*dh, 1);
        *dh += warp::shfl_xor_f32(*dh, 2);
    }
    for hh in 0..2 {
        let r = row0 + gq + 8 * hh as u32;
        if r >= rows_total {
            continue;
        }
        let (t, h) = p.group.divmod(r);
        let hq = kvh * g + h;
        let dv = d[hh];
        let inv = if dv > 0.0 { rcp(dv) } else { 0.0 };
        let lse = if dv > 0.0 {
            m[hh] + log2(dv)
        } else {
            f32::NEG_INFINITY
        };
        let pair = |nt: usize| (o[4 * nt + 2 * hh] * inv, o[4 * nt + 2 * hh + 1] * inv);
        if item.part != u32::MAX {
            // Split-KV: normalised partial state of this chunk, merged by `merge_f32_*`.
            let slot = item.part + t * item.nchunks + item.chunk;
            let obase = ((slot * p.num_qo_heads + hq) as u64) * D as u64;
            for nt in 0..ON / 4 {
                let col = (nt as u32 * 8 + 2 * tq) as u64;
                let (x, y) = pair(nt);
                // SAFETY: slot < the plan's slot count (host contract).
                unsafe {
                    global::st_f32(p.part_o + (obase + col) * 4, x);
                    global::st_f32(p.part_o + (obase + col + 1) * 4, y);
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
        for nt in 0..ON / 4 {
            let col = nt as u32 * 8 + 2 * tq;
            let (x, y) = pair(nt);
            // SAFETY: host-validated o extent; 4-byte aligned (col even).
            unsafe { global::st_u32(p.o + (obase + col as u64) * 2, E::pack2(x, y)) };
        }
        if tq == 0 && p.lse != 0 {
            // SAFETY: lse [tokens, Hq].
            unsafe { global::st_f32(p.lse + (tok * p.num_qo_heads as u64 + hq as u64) * 4, lse) };
        }
    }
}

/// Per-CTA constants of the masks and the softmax.
pub(crate) struct TileCtx {
    pub(crate) kv_end: u32,
    pub(crate) pos_first: u32,
    pub(crate) rows_total: u32,
    pub(crate) row0: u32,
    pub(crate) gq: u32,
    pub(crate) tq: u32,
    pub(crate) causal: bool,
    pub(crate) window: u32,
    pub(crate) tf: crate::math::softmax::LogitTransform,
    pub(crate) group: crate::math::fastdiv::FastDiv,
}

/// Running state of a warpgroup's rows across the KV loop.
pub(crate) struct Acc<const ON: usize> {
    /// Output accumulators (the `wgmma` D layout).
    pub(crate) o: [f32; ON],
    /// Running max (base-2 logits) and sum of the lane's two rows.
    pub(crate) m: [f32; 2],
    pub(crate) d: [f32; 2],
    /// The last tile's probabilities (f32, the score layout) and the factor the output rows
    /// must be rescaled by before its P·V is added.
    pub(crate) s: [[f32; 4]; 16],
    pub(crate) r: [f32; 2],
    /// Probabilities packed as the A operand of P·V.
    pub(crate) pa: [[u32; 4]; 8],
}

impl<const ON: usize> Acc<ON> {
    /// Waits for the P·V in flight, rescales O to the last tile's max and packs its
    /// probabilities as the next P·V's A operand.
    #[inline(always)]
    pub(crate) fn settle<E: WgmmaElem>(&mut self) {
        wgmma::wait_group::<0>();
        wgmma::fence_operands(&mut self.o);
        // Once the running max settles (most tiles of a long row) the factor is exactly 1
        // (exp2(0)); the warp skips the 64 multiplies when it is on all its rows.
        if !warp::all(self.r[0] == 1.0 && self.r[1] == 1.0) {
            for (i, x) in self.o.iter_mut().enumerate() {
                *x *= self.r[(i % 4) / 2];
            }
        }
        for (ks, a) in self.pa.iter_mut().enumerate() {
            let (lo, hi) = (self.s[2 * ks], self.s[2 * ks + 1]);
            *a = [
                E::pack2(lo[0], lo[1]),
                E::pack2(lo[2], lo[3]),
                E::pack2(hi[0], hi[1]),
                E::pack2(hi[2], hi[3]),
            ];
        }
    }
}

/// Where one step of the KV loop reads and which stage it releases.
pub(crate) struct Step {
    /// First key of this step's tile.
    pub(crate) base: u32,
    /// Stage holding this tile and the parity of its "full" phase; stage of the previous tile
    /// (its V feeds this step's P·V).
    pub(crate) stage: u32,
    pub(crate) phase: u32,
    pub(crate) prev_stage: u32,
    /// Stage of the tile two steps back, whose P·V this step waits for (`u32::MAX`: none).
    pub(crate) release: u32,
}

/// The CTA's `mbarrier`s: `full(s)` completes a phase when the producers' copies of the tile in
/// stage `s` have landed (the CTA's n-th tile: phase n / STAGES); `empty(s)` when all 8
/// consumer warps have finished the last `wgmma` reading it (the P·V of its tile), so it may be
/// refilled; `q_full` when a unit's Q tile has landed, `q_empty` when the consumers' score
/// products of the unit are done (one phase per unit each).
#[derive(Clone, Copy)]
pub(crate) struct Barriers {
    pub(crate) base: u32,
}

impl Barriers {
    /// The barriers' place: right after the K/V ring that starts at `kv_smem` (head dim `d`).
    #[inline(always)]
    pub(crate) fn after_ring(kv_smem: u32, d: u32) -> Self {
        Self {
            base: kv_smem + cfg::STAGES * 2 * TILE * d * 2,
        }
    }

    /// Initialises every barrier (one thread, then a CTA barrier before any use): "full" counts
    /// the producers' 128 `cp.async` arrivals, or with TMA (`tma`) the one `expect_tx`
    /// arrival (the bytes do the rest); `q_full` the producers' Q arrivals; "empty" and
    /// `q_empty` one arrival per consumer warp (`q_empty` is the persistent kernel's only).
    ///
    /// # Safety
    /// `self.base` inside the dynamic shared memory, 8-byte aligned; no thread uses the
    /// barriers before the caller's CTA barrier.
    #[inline(always)]
    pub(crate) unsafe fn init(self, tma: bool) {
        let full = if tma { 1 } else { PRODUCER_THREADS };
        for st in 0..cfg::STAGES {
            // SAFETY: per the contract.
            unsafe {
                mbarrier::init(self.full(st), full);
                mbarrier::init(self.empty(st), CONSUMER_WARPS);
            }
        }
        // SAFETY: per the contract.
        unsafe {
            mbarrier::init(self.q_full(), PRODUCER_THREADS);
            mbarrier::init(self.q_empty(), CONSUMER_WARPS);
        }
        mbarrier::fence_init();
    }

    #[inline(always)]
    pub(crate) fn full(self, s: u32) -> u32 {
        self.base + 8 * s
    }

    #[inline(always)]
    pub(crate) fn empty(self, s: u32) -> u32 {
        self.base + 8 * (cfg::STAGES + s)
    }

    #[inline(always)]
    pub(crate) fn q_full(self) -> u32 {
        self.base + 16 * cfg::STAGES
    }

    #[inline(always)]
    pub(crate) fn q_empty(self) -> u32 {
        self.base + 16 * cfg::STAGES + 8
    }
}

/// Whether a kernel body loads K/V with TMA, and where the launch's tensor maps
/// (`abi::KvTensorMaps`) are. A compile-time choice: the entry point picks the body per launch
/// (a run-time flag inside one body kept both producers' state alive, and the 40-register
/// producer spilled).
pub(crate) trait MapsAddr: Copy {
    /// TMA loads (the maps are set).
    const ON: bool;
    /// Generic address of the K map (the V map follows 128 bytes later); only with `ON`.
    fn addr(self) -> u64;

    /// Brings both maps into the descriptor cache ahead of the first copy (nothing without
    /// `ON`).
    #[inline(always)]
    fn prefetch(self) {
        if Self::ON {
            let maps = self.addr();
            // SAFETY: the launch's tensor maps (host contract of the TMA entries).
            unsafe {
                tma::prefetch_map(maps);
                tma::prefetch_map(maps + 128);
            }
        }
    }
}

/// No tensor maps: the producers copy with `cp.async`.
#[derive(Clone, Copy)]
pub(crate) struct NoMaps;

impl MapsAddr for NoMaps {
    const ON: bool = false;
    #[inline(always)]
    fn addr(self) -> u64 {
        0
    }
}

/// The entry point's tensor-map parameter: `F` is its `cvta.param` (see `arch::tma`),
/// evaluated where a copy is issued, not carried in a register from the entry.
#[derive(Clone, Copy)]
pub(crate) struct ParamMaps<F>(pub(crate) F);

impl<F: Fn() -> u64 + Copy> MapsAddr for ParamMaps<F> {
    const ON: bool = true;
    #[inline(always)]
    fn addr(self) -> u64 {
        (self.0)()
    }
}

/// Shared address of the K tile of stage `s`.
#[inline(always)]
pub(crate) fn stage_k(kv_smem: u32, s: u32, d: u32) -> u32 {
    kv_smem + s * 2 * TILE * d * 2
}

/// Shared address of the V tile of stage `s`.
#[inline(always)]
pub(crate) fn stage_v(kv_smem: u32, s: u32, d: u32) -> u32 {
    stage_k(kv_smem, s, d) + TILE * d * 2
}

/// Issues S = Q·Kᵀ (k-step kk reads values 16kk .. of column block kk/4: 32 bytes per step
/// inside a row).
///
/// # Safety
/// Warpgroup-convergent, between `wgmma::fence` and `commit_group`; Q and K in place.
#[inline(always)]
unsafe fn issue_scores<E: WgmmaElem, const KS: usize>(s: &mut [[f32; 4]; 16], q_wg: u32, k: u32) {
    // One descriptor each, advanced by compile-time offsets (an add per product instead of
    // rebuilding the descriptor from the address).
    let (a0, b0) = (wgmma::desc_k_major(q_wg), wgmma::desc_k_major(k));
    for kk in 0..KS as u32 {
        let step = (kk % 4) * 32;
        let a = wgmma::desc_advance(a0, (kk / 4) * ROWS * ROW_BYTES + step);
        let b = wgmma::desc_advance(b0, (kk / 4) * TILE * ROW_BYTES + step);
        // SAFETY: per the caller's contract.
        unsafe { E::scores(as_flat(s), a, b, kk > 0) };
    }
}

/// Issues O += P·V (k-step ks: keys 16ks .. 16ks + 16, two 8-row groups of the V tile).
///
/// # Safety
/// Warpgroup-convergent, between `wgmma::fence` and `commit_group`; V in place.
#[inline(always)]
pub(crate) unsafe fn issue_pv<E: WgmmaElem, const ON: usize>(
    o: &mut [f32; ON],
    pa: &[[u32; 4]; 8],
    v: u32,
) {
    let b0 = wgmma::desc_mn_major(v, TILE * ROW_BYTES);
    for (ks, a) in pa.iter().enumerate() {
        let b = wgmma::desc_advance(b0, ks as u32 * 2 * GROUP_BYTES);
        // SAFETY: per the caller's contract.
        unsafe { E::pv::<ON>(o, *a, b) };
    }
}

/// Scores of the tile at `base` → probabilities (f32, in place), updating the running max and
/// sum; returns the factor the earlier output rows must be rescaled by. `FOLD` (plain softmax,
/// positive scale): the max of raw scores is the max of logits and the scale goes into the
/// exp2's FFMA; otherwise every score is first turned into its base-2 logit (soft-cap or scale,
/// branch-free: the cap's `tanh` is computed and discarded without a cap). `MASK`: the tile
/// crosses the chunk end, the first row's causal limit or the last row's window start.
#[inline(always)]
fn softmax<const FOLD: bool, const MASK: bool>(
    t: &TileCtx,
    s: &mut [[f32; 4]; 16],
    base: u32,
    m: &mut [f32; 2],
    d: &mut [f32; 2],
) -> [f32; 2] {
    let tf = t.tf;
    if !FOLD {
        let (lin, cap) = if tf.soft_cap != 0 {
            (0.0, tf.post)
        } else {
            (1.0, 0.0)
        };
        for st in s.iter_mut() {
            for x in st.iter_mut() {
                let y = *x * tf.pre;
                *x = fma(y, lin, cap * tanh(y));
            }
        }
    }
    if MASK {
        let mut pos = [0u32; 2];
        for (hh, ph) in pos.iter_mut().enumerate() {
            let r = (t.row0 + t.gq + 8 * hh as u32).min(t.rows_total - 1);
            *ph = t.pos_first + t.group.div(r);
        }
        for (nt, st) in s.iter_mut().enumerate() {
            for (e, x) in st.iter_mut().enumerate() {
                let key = base + nt as u32 * 8 + 2 * t.tq + (e % 2) as u32;
                let ph = pos[e / 2];
                let ok = (key < t.kv_end)
                    & (!t.causal | (key <= ph))
                    & ((t.window == u32::MAX) | (key as u64 + t.window as u64 >= ph as u64));
                *x = if ok { *x } else { f32::NEG_INFINITY };
            }
        }
    }
    let scale = if FOLD { tf.pre } else { 1.0 };
    let mut r_scale = [1.0f32; 2];
    let mut mref = [0.0f32; 2];
    for hh in 0..2 {
        let mut v16 = [0.0f32; 16];
        for (nt, tv) in v16.iter_mut().enumerate() {
            *tv = fmax(s[nt][2 * hh], s[nt][2 * hh + 1]);
        }
        let mut v = tree16(v16, fmax);
        v = fmax(v, warp::shfl_xor_f32(v, 1));
        v = fmax(v, warp::shfl_xor_f32(v, 2));
        let m_new = fmax(m[hh], v * scale);
        mref[hh] = clamp_ref(m_new);
        r_scale[hh] = exp2(m[hh] - mref[hh]);
        m[hh] = m_new;
    }
    for st in s.iter_mut() {
        for e in 0..4 {
            st[e] = exp2(fma(st[e], scale, -mref[e / 2]));
        }
    }
    for hh in 0..2 {
        let mut v16 = [0.0f32; 16];
        for (nt, tv) in v16.iter_mut().enumerate() {
            *tv = s[nt][2 * hh] + s[nt][2 * hh + 1];
        }
        d[hh] = fma(d[hh], r_scale[hh], tree16(v16, |a, b| a + b));
    }
    r_scale
}

/// [`step`] with its mask and first-step variants chosen by CTA-uniform branches: each variant
/// is straight-line code (a branch while a `wgmma` is in flight makes ptxas wait for it at the
/// join, which undid the overlap).
///
/// # Safety
/// As [`step`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) unsafe fn step_for<
    E: WgmmaElem,
    const D: u32,
    const ON: usize,
    const KS: usize,
    const FOLD: bool,
>(
    first: bool,
    masked: bool,
    t: &TileCtx,
    st: &Step,
    acc: &mut Acc<ON>,
    tid: u32,
    q_wg: u32,
    kv_smem: u32,
) {
    // SAFETY: forwarded contract.
    unsafe {
        match (first, masked) {
            (true, true) => step::<E, D, ON, KS, FOLD, true, true>(t, st, acc, tid, q_wg, kv_smem),
            (true, false) => {
                step::<E, D, ON, KS, FOLD, false, true>(t, st, acc, tid, q_wg, kv_smem)
            }
            (false, true) => {
                step::<E, D, ON, KS, FOLD, true, false>(t, st, acc, tid, q_wg, kv_smem)
            }
            (false, false) => {
                step::<E, D, ON, KS, FOLD, false, false>(t, st, acc, tid, q_wg, kv_smem)
            }
        }
    }
}

/// One consumer step of the software pipeline (FA3's intra-warpgroup overlap) for tile j: wait
/// for P_{j−2}·V_{j−2}, rescale O and pack P_{j−1} ([`Acc::settle`]) and release tile j−2's
/// stage to the producer; wait for tile j's copies and make them visible to `wgmma`; issue S_j
/// and P_{j−1}·V_{j−1} back to back; wait for S_j only and run its softmax while P·V runs. The wait for that P·V
/// opens the next step, in the next basic block: within one block ptxas hoisted it above the
/// softmax (seen in the SASS), serialising the two again.
///
/// # Safety
/// As the kernel's contract; every thread of the CTA calls it with the same step.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) unsafe fn step<
    E: WgmmaElem,
    const D: u32,
    const ON: usize,
    const KS: usize,
    const FOLD: bool,
    const MASK: bool,
    const FIRST: bool,
>(
    t: &TileCtx,
    st: &Step,
    acc: &mut Acc<ON>,
    tid: u32,
    q_wg: u32,
    kv_smem: u32,
) {
    let bars = Barriers::after_ring(kv_smem, D);
    if !FIRST {
        acc.settle::<E>();
        if st.release != u32::MAX && tid % 32 == 0 {
            // This warp's P_{j−2}·V_{j−2} is done: the stage of tile j−2 may be refilled.
            // SAFETY: initialised barrier.
            unsafe { mbarrier::arrive(bars.empty(st.release)) };
        }
    }
    // SAFETY: initialised barrier; phase of tile j.
    unsafe { mbarrier::wait(bars.full(st.stage), st.phase) };
    // The copies were written through the generic proxy; `wgmma` reads through the async one.
    wgmma::fence_proxy_async();
    // Pingpong (FA3): the warpgroups take turns issuing their products, so that one's softmax
    // runs while the other's products hold the tensor cores (see `pingpong_*`).
    let wg = tid / 128;
    // SAFETY: both consumer warpgroups run the same steps (the turn protocol's counts match).
    unsafe { thread::named_barrier_sync(PINGPONG_BAR + wg, 256) };
    wgmma::fence();
    // SAFETY: warpgroup-convergent; the tile is in its stage (full barrier above).
    unsafe { issue_scores::<E, KS>(&mut acc.s, q_wg, stage_k(kv_smem, st.stage, D)) };
    wgmma::commit_group();
    if !FIRST {
        // SAFETY: as above; the previous tile's V stays in its stage until released.
        unsafe { issue_pv::<E, ON>(&mut acc.o, &acc.pa, stage_v(kv_smem, st.prev_stage, D)) };
        wgmma::commit_group();
    }
    // SAFETY: as above.
    unsafe { thread::named_barrier_arrive(PINGPONG_BAR + 1 - wg, 256) };
    if FIRST {
        wgmma::wait_group::<0>();
    } else {
        wgmma::wait_group::<1>();
    }
    wgmma::fence_operands(as_flat(&mut acc.s));
    acc.r = softmax::<FOLD, MASK>(t, &mut acc.s, st.base, &mut acc.m, &mut acc.d);
    // Pinned here: the exp2 and sums are pure to LLVM, which otherwise sinks them to their
    // first use after the wait (seen in the PTX).
    wgmma::fence_operands(as_flat(&mut acc.s));
    wgmma::fence_operands(&mut acc.d);
}

/// The score tile as the flat accumulator array `wgmma` writes (register `4·nt + e`).
#[inline(always)]
fn as_flat(s: &mut [[f32; 4]; 16]) -> &mut [f32; 64] {
    // SAFETY: [[f32; 4]; 16] and [f32; 64] have the same size, alignment and element order.
    unsafe { &mut *(s as *mut [[f32; 4]; 16] as *mut [f32; 64]) }
}

/// A balanced reduction tree over 16 values (short dependency chains).
#[inline(always)]
fn tree16(t: [f32; 16], f: impl Fn(f32, f32) -> f32) -> f32 {
    let a = [
        f(t[0], t[1]),
        f(t[2], t[3]),
        f(t[4], t[5]),
        f(t[6], t[7]),
        f(t[8], t[9]),
        f(t[10], t[11]),
        f(t[12], t[13]),
        f(t[14], t[15]),
    ];
    let b = [f(a[0], a[1]), f(a[2], a[3]), f(a[4], a[5]), f(a[6], a[7])];
    f(f(b[0], b[1]), f(b[2], b[3]))
}

/// The `extern "ptx-kernel"` entries of a Hopper prefill body (`$body`: this module's
/// `prefill` or the persistent one's), one per K/V layout, dtype, head dim and K/V load path
/// (`cp_async`, or `tma`: ragged only). All take the tensor-map block; `cp_async` entries
/// ignore it. The two paths are separate entries, not a flag: one entry holding both kept
/// more state alive into the 40-register producer, which spilled (ptxas).
macro_rules! hopper_entries {
    (@maps $name:ident, cp_async) => { crate::prefill_hopper::NoMaps };
    // The tensor maps stay in parameter space (TMA reads them there, by address: see
    // `arch::tma`).
    (@maps $name:ident, tma) => {
        crate::prefill_hopper::ParamMaps(|| crate::arch::tma::param_addr!($name, 1))
    };
    ($body:ident, $what:literal;
     $($name:ident => $r:ty, $e:ty, $d:literal, $on:literal, $ks:literal, $load:ident;)*) => {$(
        #[doc = concat!("Entry point: ", $what, " (wgmma) prefill, ", stringify!($r), " K/V ",
                        "loaded with ", stringify!($load), ", ", stringify!($e), ", D = ", $d,
                        ".")]
        ///
        /// # Safety
        /// See the generic body's launch contract; `tma` entries need `maps` encoded for the
        /// launch's K and V (`abi::KvTensorMaps`).
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(
            p: PrefillParams,
            _maps: crate::abi::KvTensorMaps,
        ) {
            let m = crate::prefill_hopper::hopper_entries!(@maps $name, $load);
            // One body per softmax mode (see `softmax`), chosen once per launch.
            // SAFETY: forwarded launch contract.
            unsafe {
                if p.logit.soft_cap == 0 && p.logit.pre > 0.0 {
                    $body::<$r, $e, $d, $on, $ks, true, _>(&p, m)
                } else {
                    $body::<$r, $e, $d, $on, $ks, false, _>(&p, m)
                }
            }
        }
    )*};
}
pub(crate) use hopper_entries;

hopper_entries! {
    prefill, "Hopper";
    prefill_ragged_f16_d64_h => Ragged, F16, 64, 32, 4, cp_async;
    prefill_ragged_f16_d128_h => Ragged, F16, 128, 64, 8, cp_async;
    prefill_ragged_bf16_d64_h => Ragged, Bf16, 64, 32, 4, cp_async;
    prefill_ragged_bf16_d128_h => Ragged, Bf16, 128, 64, 8, cp_async;
    prefill_ragged_f16_d64_ht => Ragged, F16, 64, 32, 4, tma;
    prefill_ragged_f16_d128_ht => Ragged, F16, 128, 64, 8, tma;
    prefill_ragged_bf16_d64_ht => Ragged, Bf16, 64, 32, 4, tma;
    prefill_ragged_bf16_d128_ht => Ragged, Bf16, 128, 64, 8, tma;
    prefill_paged_f16_d64_h => Paged, F16, 64, 32, 4, cp_async;
    prefill_paged_f16_d128_h => Paged, F16, 128, 64, 8, cp_async;
    prefill_paged_bf16_d64_h => Paged, Bf16, 64, 32, 4, cp_async;
    prefill_paged_bf16_d128_h => Paged, Bf16, 128, 64, 8, cp_async;
}
