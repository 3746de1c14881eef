//! The fused split-KV merge of the decode kernels: when a request's keys were split over
//! several work items, each CTA writes its normalised partial state (`part_o`, `part_lse`), and
//! the last CTA of the request (per KV head) to finish — found with an atomic ticket after a
//! device-scope fence — folds them into `o`/`lse` in the same launch (no second kernel).
use crate::abi::DecodeParams;
use crate::arch::{global, shared, thread, warp};
use crate::config::decode_rows::THREADS;
use crate::dtype::Elem;
use crate::math::fast::{exp2, fmax};
use crate::math::softmax::{clamp_ref, State};

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
        let inv = State { m, d: sum }.inv_denominator();
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
            let lse = State { m, d: sum }.lse();
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
        it += THREADS;
    }
}
