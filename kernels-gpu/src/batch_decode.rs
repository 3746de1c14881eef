//! Batch decode attention over page tables: one query token per (request, head) against that
//! request's paged KV. Host twin: `host/src/ops/batch_decode.rs` (plan/run) — also used for
//! single-request decode on contiguous K/V (one page spanning the sequence).
//!
//! CTA = (work item, KV head), 128 threads. As in the single-request kernel, `D/8` lanes share
//! one K/V row (16 bytes each) and the CTA has `slots = 128/(D/8)` row slots; a *tile* is
//! `slots × UNROLL` consecutive tokens. Loads go through a `STAGES`-deep `cp.async` ring in
//! shared memory where **every thread stages exactly the rows it later consumes**: the
//! wait on its own copy groups is the only synchronisation the main loop needs (no block
//! barrier), and `STAGES − 1` tiles stay in flight while one is computed. Rows past the end
//! are zero-filled (`src_size = 0`), so a stale value can never meet a zero weight.
//!
//! All `g` query heads of the KV head share every loaded row (GQA). Requests covered by one
//! work item write o/lse directly; split requests write f32 partials, and the last CTA of the
//! request (per KV head) to finish — found with an atomic ticket after a device-scope fence —
//! merges them in the same launch (no second kernel).
use crate::abi::DecodeParams;
use crate::arch::{global, pipeline, shared, thread, warp};
use crate::config::{batch_decode as bcfg, single_decode as cfg};
use crate::dtype::{Bf16, Elem, F16};
use crate::math::fast::{exp2, fmax, log2, rcp, tanh};
use crate::math::softmax::{clamp_ref, State};

const VEC: usize = cfg::VEC as usize;
const UNROLL: usize = cfg::UNROLL as usize;
const STAGES: u32 = bcfg::STAGES;

#[inline(always)]
pub(crate) unsafe fn ld_i32(base: u64, i: u32) -> u32 {
    // SAFETY: caller guarantees `i` indexes the array.
    unsafe { global::ld_u32(base + (i as u64) * 4) }
}

/// A CTA's decode work item: request `b`, its KV range `[begin, end)`, its request's work items
/// `[first, last)` (the split-KV merge group) and page-list start.
pub(crate) struct Work {
    pub(crate) b: u32,
    pub(crate) begin: u32,
    pub(crate) end: u32,
    pub(crate) first: u32,
    pub(crate) last: u32,
    pub(crate) page_base: u32,
}

/// Loads the work item of CTA `blockIdx.x` (shared by both decode kernel families), or `None`
/// for a padded CTA of a CUDA-graph grid. The loads are a dependent chain the L2 rarely holds
/// (one per launch), so it is kept to two levels: {counts, work item} → {merge_indptr,
/// kv_indptr}; the work item is read before the bounds check (`i < work_stride` always holds).
///
/// # Safety
/// Grid x = `work_stride`; the plan's arrays as the host uploaded them.
#[inline(always)]
pub(crate) unsafe fn load_work(p: &DecodeParams) -> Option<Work> {
    let i = thread::block_idx_x();
    let ws = p.work_stride;
    // SAFETY: counts has 2 entries; i < work_stride indexes the work arrays.
    let (num_items, b, begin, end) = unsafe {
        (
            ld_i32(p.counts, 0),
            ld_i32(p.work, i),
            ld_i32(p.work, ws + i),
            ld_i32(p.work, 2 * ws + i),
        )
    };
    if i >= num_items {
        return None;
    }
    // SAFETY: b < batch, so b + 1 indexes merge_indptr / kv_indptr.
    let (first, last, page_base) = unsafe {
        (
            ld_i32(p.merge_indptr, b),
            ld_i32(p.merge_indptr, b + 1),
            ld_i32(p.kv_indptr, b),
        )
    };
    Some(Work {
        b,
        begin,
        end,
        first,
        last,
        page_base,
    })
}

#[inline(always)]
fn unpack8<E: Elem>(raw: [u32; 4]) -> [f32; VEC] {
    let mut out = [0.0f32; VEC];
    for j in 0..4 {
        let (lo, hi) = E::unpack2(raw[j]);
        out[2 * j] = lo;
        out[2 * j + 1] = hi;
    }
    out
}

#[inline(always)]
fn pack8<E: Elem>(v: [f32; VEC]) -> [u32; 4] {
    [
        E::pack2(v[0], v[1]),
        E::pack2(v[2], v[3]),
        E::pack2(v[4], v[5]),
        E::pack2(v[6], v[7]),
    ]
}

/// Shared address of this thread's staged vector `(stage, u, kv)`.
#[inline(always)]
fn stage_addr(base: u32, stage: u32, u: u32, kv: u32, tid: u32) -> u32 {
    base + (((stage * cfg::UNROLL + u) * 2 + kv) * cfg::THREADS + tid) * 16
}

/// Per-CTA constants of one work item.
struct Item {
    begin: u32,
    end: u32,
    page_base: u32,
    k_head: u64,
    v_head: u64,
}

/// Issues the cp.async copies of tile `j` into stage `s` and commits them as one group.
#[inline(always)]
unsafe fn issue_tile(
    p: &DecodeParams,
    it: &Item,
    j: u32,
    s: u32,
    slot: u32,
    slots: u32,
    tid: u32,
    smem: u32,
) {
    let tile = slots * cfg::UNROLL;
    for u in 0..cfg::UNROLL {
        let t = it.begin + j * tile + slot + u * slots;
        let valid = t < it.end;
        let (mut ka, mut va) = (p.k_pool, p.v_pool);
        if valid {
            let (pslot, entry) = p.page_size.divmod(t);
            // SAFETY: t < kv_end ≤ the request's length, so the page slot exists (host-validated
            // page tables).
            let page = unsafe { ld_i32(p.kv_indices, it.page_base + pslot) } as u64;
            ka =
                p.k_pool + (page * p.k_stride_page + (entry * p.k_stride_n) as u64 + it.k_head) * 2;
            va =
                p.v_pool + (page * p.v_stride_page + (entry * p.v_stride_n) as u64 + it.v_head) * 2;
        }
        let n = if valid { 16 } else { 0 };
        // SAFETY: staging addresses lie in the ring (smem_bytes); sources are valid rows or
        // the pool base with a zero byte count.
        unsafe {
            pipeline::cp_async_cg_16(stage_addr(smem, s, u, 0, tid), ka, n);
            pipeline::cp_async_cg_16(stage_addr(smem, s, u, 1, tid), va, n);
        }
    }
    pipeline::commit_group();
}

/// The kernel body.
///
/// # Safety
/// Grid `(work_stride, num_kv_heads)`, block `(128)`, dynamic smem
/// `config::batch_decode::smem_bytes(D, G)`; plan and page tables validated by the host.
#[inline(always)]
unsafe fn batch_decode<E: Elem, const D: u32, const G: usize>(p: &DecodeParams) {
    let lpr = cfg::lanes_per_row(D);
    let slots = cfg::slots(D);
    let tid = thread::thread_idx_x();
    let slot = tid / lpr;
    let sub = tid % lpr;
    let i = thread::block_idx_x();
    let kvh = thread::block_idx_y();
    // SAFETY: as the kernel's contract.
    let Some(Work {
        b,
        begin,
        end,
        first,
        last,
        page_base,
    }) = (unsafe { load_work(p) })
    else {
        return;
    };
    let split = last - first > 1;
    let g = p.group;
    let tf = p.logit;
    let e_off = (sub * cfg::VEC) as u64;
    let it = Item {
        begin,
        end,
        page_base,
        k_head: (kvh * p.k_stride_h) as u64 + e_off,
        v_head: (kvh * p.v_stride_h) as u64 + e_off,
    };

    let mut q = [[0.0f32; VEC]; G];
    for (ii, qi) in q.iter_mut().enumerate() {
        if (ii as u32) < g {
            let hq = kvh * g + ii as u32;
            let off = (b as u64) * (p.q_stride_b as u64) + (hq * p.q_stride_h) as u64 + e_off;
            // SAFETY: host-validated q extent; 16-byte aligned rows.
            let v = unpack8::<E>(unsafe { global::ld_nc_u32x4(p.q + off * 2) });
            for e in 0..VEC {
                qi[e] = v[e] * tf.pre;
            }
        }
    }

    let smem = shared::dyn_smem_base();
    let tile = slots * cfg::UNROLL;
    let tiles = (end - begin).div_ceil(tile);
    for s in 0..STAGES - 1 {
        if s < tiles {
            // SAFETY: see issue_tile.
            unsafe { issue_tile(p, &it, s, s, slot, slots, tid, smem) };
        } else {
            pipeline::commit_group();
        }
    }

    let mut st = [State::EMPTY; G];
    let mut acc = [[0.0f32; VEC]; G];
    let mut j = 0;
    while j < tiles {
        let nj = j + STAGES - 1;
        if nj < tiles {
            // SAFETY: see issue_tile. Stage nj % STAGES was consumed by this same thread in
            // iteration j − 1 (its values already used), so overwriting it is race-free.
            unsafe { issue_tile(p, &it, nj, nj % STAGES, slot, slots, tid, smem) };
        } else {
            pipeline::commit_group();
        }
        pipeline::wait_group::<{ STAGES - 1 }>();
        let s = j % STAGES;
        let mut x = [[f32::NEG_INFINITY; UNROLL]; G];
        let mut vf = [[0.0f32; VEC]; UNROLL];
        for u in 0..UNROLL {
            let t = begin + j * tile + slot + (u as u32) * slots;
            // SAFETY: this thread's own staged vectors (its copy group has completed).
            let (kr, vr) = unsafe {
                (
                    shared::ld_u32x4(stage_addr(smem, s, u as u32, 0, tid)),
                    shared::ld_u32x4(stage_addr(smem, s, u as u32, 1, tid)),
                )
            };
            let kf = unpack8::<E>(kr);
            vf[u] = unpack8::<E>(vr);
            for h in 0..G {
                let mut d = 0.0f32;
                for e in 0..VEC {
                    d += q[h][e] * kf[e];
                }
                let d = warp::group_sum_f32(d, lpr);
                let xv = if tf.soft_cap != 0 {
                    tf.post * tanh(d)
                } else {
                    d
                };
                x[h][u] = if t < end { xv } else { f32::NEG_INFINITY };
            }
        }
        for h in 0..G {
            let mut m_new = st[h].m;
            for u in 0..UNROLL {
                m_new = fmax(m_new, x[h][u]);
            }
            let r = st[h].rescale_to(m_new);
            for e in 0..VEC {
                acc[h][e] *= r;
            }
            for u in 0..UNROLL {
                let pw = st[h].weight(x[h][u]);
                for e in 0..VEC {
                    acc[h][e] += pw * vf[u][e];
                }
            }
        }
        j += 1;
    }
    pipeline::wait_group::<0>();
    // The staging ring is reused for the cross-slot merge: every thread must be done with it.
    thread::sync_threads();

    let g_cap = G as u32;
    let m_off = smem + slots * g_cap * D * 4;
    let d_off = m_off + slots * g_cap * 4;
    for h in 0..G {
        let o_addr = smem + ((slot * g_cap + h as u32) * D + sub * cfg::VEC) * 4;
        let a = acc[h];
        // SAFETY: inside smem_bytes(D, G); 16-byte aligned.
        unsafe {
            shared::st_u32x4(
                o_addr,
                [
                    a[0].to_bits(),
                    a[1].to_bits(),
                    a[2].to_bits(),
                    a[3].to_bits(),
                ],
            );
            shared::st_u32x4(
                o_addr + 16,
                [
                    a[4].to_bits(),
                    a[5].to_bits(),
                    a[6].to_bits(),
                    a[7].to_bits(),
                ],
            );
            if sub == 0 {
                shared::st_f32(m_off + (slot * g_cap + h as u32) * 4, st[h].m);
                shared::st_f32(d_off + (slot * g_cap + h as u32) * 4, st[h].d);
            }
        }
    }
    thread::sync_threads();

    let hq0 = kvh * g;
    if tid < g {
        let h = tid;
        let mut m = f32::NEG_INFINITY;
        for s in 0..slots {
            // SAFETY: inside m_s.
            m = fmax(m, unsafe { shared::ld_f32(m_off + (s * g_cap + h) * 4) });
        }
        let mr = clamp_ref(m);
        let mut tot = 0.0f32;
        for s in 0..slots {
            // SAFETY: inside m_s / d_s.
            let (ms, ds) = unsafe {
                (
                    shared::ld_f32(m_off + (s * g_cap + h) * 4),
                    shared::ld_f32(d_off + (s * g_cap + h) * 4),
                )
            };
            tot += ds * exp2(ms - mr);
        }
        let inv = if tot > 0.0 { rcp(tot) } else { 0.0 };
        for s in 0..slots {
            let a = m_off + (s * g_cap + h) * 4;
            // SAFETY: inside m_s; entry (s, h) is owned by this thread here.
            unsafe { shared::st_f32(a, exp2(shared::ld_f32(a) - mr) * inv) };
        }
        let lse = if tot > 0.0 {
            m + log2(tot)
        } else {
            f32::NEG_INFINITY
        };
        let hq = hq0 + h;
        // SAFETY: host-sized lse [batch, Hq] and part_lse [work_stride, Hq].
        unsafe {
            if split {
                global::st_f32(p.part_lse + ((i * p.num_qo_heads + hq) as u64) * 4, lse);
            } else if p.lse != 0 {
                global::st_f32(p.lse + ((b * p.num_qo_heads + hq) as u64) * 4, lse);
            }
        }
    }
    thread::sync_threads();

    let items = g * (D / cfg::VEC);
    let mut w = tid;
    while w < items {
        let h = w / (D / cfg::VEC);
        let e0 = (w % (D / cfg::VEC)) * cfg::VEC;
        let mut out = [0.0f32; VEC];
        for s in 0..slots {
            // SAFETY: inside smem.
            unsafe {
                let wt = shared::ld_f32(m_off + (s * g_cap + h) * 4);
                let a = smem + ((s * g_cap + h) * D + e0) * 4;
                let lo = shared::ld_u32x4(a);
                let hi = shared::ld_u32x4(a + 16);
                for e in 0..4 {
                    out[e] += wt * f32::from_bits(lo[e]);
                    out[e + 4] += wt * f32::from_bits(hi[e]);
                }
            }
        }
        let hq = hq0 + h;
        // SAFETY: host-validated extents; 16-byte aligned rows.
        unsafe {
            if split {
                let a = p.part_o + (((i * p.num_qo_heads + hq) * D + e0) as u64) * 4;
                global::st_u32x4(
                    a,
                    [
                        out[0].to_bits(),
                        out[1].to_bits(),
                        out[2].to_bits(),
                        out[3].to_bits(),
                    ],
                );
                global::st_u32x4(
                    a + 16,
                    [
                        out[4].to_bits(),
                        out[5].to_bits(),
                        out[6].to_bits(),
                        out[7].to_bits(),
                    ],
                );
            } else {
                let a = p.o
                    + ((b as u64) * (p.o_stride_b as u64) + (hq * p.o_stride_h + e0) as u64) * 2;
                global::st_u32x4(a, pack8::<E>(out));
            }
        }
        w += cfg::THREADS;
    }

    if split {
        // SAFETY: partials of this CTA are written; smem is no longer read by any thread after
        // the barrier inside.
        unsafe { merge_if_last::<E, D>(p, b, kvh, first, last, tid, smem) };
    }
}

/// Split requests: after a CTA has written its partial states, the last of the request's CTAs
/// (per KV head) to arrive — found with an atomic ticket after a device-scope fence — merges
/// all of them into o/lse and resets the ticket counter for the next launch.
///
/// # Safety
/// Called by all threads of the CTA after its partial writes; `smem` is reusable.
pub(crate) unsafe fn merge_if_last<E: Elem, const D: u32>(
    p: &DecodeParams,
    b: u32,
    kvh: u32,
    first: u32,
    last: u32,
    tid: u32,
    smem: u32,
) {
    // Every thread fences its partial writes before thread 0 takes a ticket.
    global::fence_gpu();
    thread::sync_threads();
    let counter = p.counters + ((b * thread::grid_dim_y() + kvh) as u64) * 4;
    if tid == 0 {
        // SAFETY: counters has batch × num_kv_heads entries.
        let old = unsafe { global::atomic_add_u32(counter, 1) };
        // SAFETY: smem is at least 4 bytes.
        unsafe { shared::st_u32(smem, (old + 1 == last - first) as u32) };
    }
    thread::sync_threads();
    // SAFETY: written above, before the barrier.
    if unsafe { shared::ld_u32(smem) } == 0 {
        return;
    }
    global::fence_gpu();
    // SAFETY: all partials of (b, kvh) are written and fenced; smem is free again.
    unsafe { merge_partials::<E, D>(p, b, kvh, first, last - first, tid, smem + 16) };
    if tid == 0 {
        // SAFETY: as above; resets the counter for the next launch.
        unsafe { global::st_u32(counter, 0) };
    }
}

/// Partials each thread keeps in flight while merging.
const MERGE_UNROLL: usize = 8;

/// Folds the `n` partial states of request `b` for the query heads of KV head `kvh` into o/lse.
/// Warps take heads (normalised weights into smem); then each thread produces 4 output
/// elements with [`MERGE_UNROLL`] independent 16-byte loads in flight. Loads are `.cg`: the
/// partials were written by other CTAs of this launch.
///
/// # Safety
/// Called by all 128 threads of the CTA; `smem` has room for `group × n` f32 weights
/// (the host bounds n by [`crate::config::batch_decode::MAX_ITEMS_PER_REQUEST`]).
#[inline(always)]
pub(crate) unsafe fn merge_partials<E: Elem, const D: u32>(
    p: &DecodeParams,
    b: u32,
    kvh: u32,
    first: u32,
    n: u32,
    tid: u32,
    smem: u32,
) {
    let g = p.group;
    let hq0 = kvh * g;
    let lane = tid % 32;
    let mut h = tid / 32;
    while h < g {
        let hq = hq0 + h;
        let lse_at = |c: u32| p.part_lse + (((first + c) * p.num_qo_heads + hq) as u64) * 4;
        let mut m = f32::NEG_INFINITY;
        let mut c = lane;
        while c < n {
            // SAFETY: c < n partials of this request.
            m = fmax(m, unsafe { global::ld_cg_f32(lse_at(c)) });
            c += 32;
        }
        let m = warp::group_max_f32(m, 32);
        let mr = clamp_ref(m);
        let mut sum = 0.0f32;
        let mut c = lane;
        while c < n {
            // SAFETY: as above; weights of head h at smem[h·n ..].
            unsafe {
                let w = exp2(global::ld_cg_f32(lse_at(c)) - mr);
                shared::st_f32(smem + (h * n + c) * 4, w);
                sum += w;
            }
            c += 32;
        }
        let sum = warp::group_sum_f32(sum, 32);
        let inv = if sum > 0.0 { rcp(sum) } else { 0.0 };
        let mut c = lane;
        while c < n {
            // SAFETY: as above.
            unsafe {
                shared::st_f32(
                    smem + (h * n + c) * 4,
                    shared::ld_f32(smem + (h * n + c) * 4) * inv,
                )
            };
            c += 32;
        }
        if lane == 0 && p.lse != 0 {
            let lse = if sum > 0.0 {
                m + log2(sum)
            } else {
                f32::NEG_INFINITY
            };
            // SAFETY: lse [batch, Hq].
            unsafe { global::st_f32(p.lse + ((b * p.num_qo_heads + hq) as u64) * 4, lse) };
        }
        h += 4;
    }
    thread::sync_threads();
    let items = g * (D / 4);
    let mut it = tid;
    while it < items {
        let h = it / (D / 4);
        let e0 = (it % (D / 4)) * 4;
        let hq = hq0 + h;
        let row = |c: u32| p.part_o + ((((first + c) * p.num_qo_heads + hq) * D + e0) as u64) * 4;
        let mut acc = [0.0f32; 4];
        let mut c = 0;
        while c < n {
            let mut w = [0.0f32; MERGE_UNROLL];
            let mut v = [[0u32; 4]; MERGE_UNROLL];
            for u in 0..MERGE_UNROLL {
                let cc = c + u as u32;
                if cc < n {
                    // SAFETY: partial rows of this request; 16-byte aligned.
                    unsafe {
                        w[u] = shared::ld_f32(smem + (h * n + cc) * 4);
                        v[u] = global::ld_cg_u32x4(row(cc));
                    }
                }
            }
            for u in 0..MERGE_UNROLL {
                for e in 0..4 {
                    acc[e] += w[u] * f32::from_bits(v[u][e]);
                }
            }
            c += MERGE_UNROLL as u32;
        }
        let a = p.o + ((b as u64) * (p.o_stride_b as u64) + (hq * p.o_stride_h + e0) as u64) * 2;
        // SAFETY: o extent validated; 8-byte aligned.
        unsafe {
            global::st_u32(a, E::pack2(acc[0], acc[1]));
            global::st_u32(a + 4, E::pack2(acc[2], acc[3]));
        }
        it += cfg::THREADS;
    }
}

macro_rules! decode_entries {
    ($($name:ident => $e:ty, $d:literal, $g:literal;)*) => {$(
        #[doc = concat!("Entry point: batch decode, ", stringify!($e), ", D = ", $d, ", group capacity ", $g, ".")]
        ///
        /// # Safety
        /// See the generic body's launch contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: DecodeParams) {
            // SAFETY: forwarded launch contract.
            unsafe { batch_decode::<$e, $d, $g>(&p) }
        }
    )*};
}

decode_entries! {
    decode_f16_d64_g1 => F16, 64, 1;
    decode_f16_d64_g2 => F16, 64, 2;
    decode_f16_d64_g4 => F16, 64, 4;
    decode_f16_d64_g8 => F16, 64, 8;
    decode_f16_d128_g1 => F16, 128, 1;
    decode_f16_d128_g2 => F16, 128, 2;
    decode_f16_d128_g4 => F16, 128, 4;
    decode_f16_d128_g8 => F16, 128, 8;
    decode_f16_d256_g1 => F16, 256, 1;
    decode_f16_d256_g2 => F16, 256, 2;
    decode_f16_d256_g4 => F16, 256, 4;
    decode_f16_d256_g8 => F16, 256, 8;
    decode_bf16_d64_g1 => Bf16, 64, 1;
    decode_bf16_d64_g2 => Bf16, 64, 2;
    decode_bf16_d64_g4 => Bf16, 64, 4;
    decode_bf16_d64_g8 => Bf16, 64, 8;
    decode_bf16_d128_g1 => Bf16, 128, 1;
    decode_bf16_d128_g2 => Bf16, 128, 2;
    decode_bf16_d128_g4 => Bf16, 128, 4;
    decode_bf16_d128_g8 => Bf16, 128, 8;
    decode_bf16_d256_g1 => Bf16, 256, 1;
    decode_bf16_d256_g2 => Bf16, 256, 2;
    decode_bf16_d256_g4 => Bf16, 256, 4;
    decode_bf16_d256_g8 => Bf16, 256, 8;
}
