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
//! merges them in the same launch (no second kernel; `attn::split`).
//!
//! fp8 K/V (`decode_fp8_*`) are the same body over another [`KvVec`]: each lane stages its 8
//! codes (8 bytes, `cp.async.ca`) instead of 16 bytes and decodes them in registers after the
//! shared-memory stage; K's scale is folded into the logit scale by the host and V's multiplies
//! the softmax normaliser (1 for 16-bit K/V, which the compiler folds away).
use crate::abi::{DecodeFp8Params, DecodeParams, DecodeRopeParams, RopeAttn};
use crate::arch::{global, pipeline, shared, thread, warp};
use crate::attn::lane_vec::{pack8, unpack8, Codes, Half, KvVec, VEC};
use crate::attn::logits::{Logits, ScaleSoftCap};
use crate::attn::rope::{LaneRope, NoRope, PosEnc};
use crate::attn::split::merge_if_last;
use crate::attn::work::{ld_i32, load_decode_work};
use crate::config::{batch_decode as bcfg, decode_rows as cfg};
use crate::dtype::{Bf16, Elem, F16};
use crate::math::fast::{exp2, fmax};
use crate::math::fp8::{E4m3, E5m2};
use crate::math::softmax::{clamp_ref, State};

const UNROLL: usize = cfg::UNROLL as usize;
const STAGES: u32 = bcfg::STAGES;

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
    /// Element offsets in a page of the lane's K vector (its first half when split), and of
    /// its V vector.
    k_head: u64,
    v_head: u64,
    /// Split K vectors: elements from the first half to the second.
    k_split: u64,
}

/// Issues the cp.async copies of tile `j` into stage `s` and commits them as one group; with
/// `split` (a constant of the kernel variant) each K vector comes as two halves
/// (`Item::k_split` apart).
#[inline(always)]
unsafe fn issue_tile<K: KvVec>(
    split: bool,
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
            let b = K::ELEM_BYTES;
            ka =
                p.k_pool + (page * p.k_stride_page + (entry * p.k_stride_n) as u64 + it.k_head) * b;
            va =
                p.v_pool + (page * p.v_stride_page + (entry * p.v_stride_n) as u64 + it.v_head) * b;
        }
        let n = if valid { K::VEC_BYTES } else { 0 };
        // SAFETY: staging addresses lie in the ring (smem_bytes); sources are valid rows or
        // the pool base with a zero byte count.
        unsafe {
            if split {
                let hi = ka + it.k_split * K::ELEM_BYTES;
                K::stage_halves(stage_addr(smem, s, u, 0, tid), ka, hi, valid);
            } else {
                K::stage(stage_addr(smem, s, u, 0, tid), ka, n);
            }
            K::stage(stage_addr(smem, s, u, 1, tid), va, n);
        }
    }
    pipeline::commit_group();
}

/// The kernel body: q and out of element type `E`, K/V stored as `K`, V's values times
/// `v_scale`, q and keys rotated by `P` (with `rope`'s table and offsets).
///
/// # Safety
/// Grid `(work_stride, num_kv_heads)`, block `(128)`, dynamic smem
/// `config::batch_decode::smem_bytes(D, G)`; plan and page tables validated by the host.
#[inline(always)]
unsafe fn batch_decode<
    E: Elem,
    K: KvVec,
    L: Logits,
    P: PosEnc<VEC>,
    const D: u32,
    const G: usize,
>(
    p: &DecodeParams,
    v_scale: f32,
    rope: &RopeAttn,
) {
    let lpr = cfg::lanes_per_row(D);
    let slots = cfg::slots(D);
    let tid = thread::thread_idx_x();
    let slot = tid / lpr;
    let sub = tid % lpr;
    let kvh = thread::block_idx_y();
    // SAFETY: as the kernel's contract.
    let Some(wk) = (unsafe { load_decode_work(p) }) else {
        return;
    };
    let (b, begin, end) = (wk.b, wk.begin, wk.end);
    let g = p.group;
    let logits = L::new(p.logit);
    let e0 = sub * cfg::VEC;
    // SAFETY: the host-validated rotation table.
    let pe = unsafe { P::new(rope, e0) };
    // q and K may come as two halves (RoPE's rotate_half pairs); V and out stay contiguous.
    let (lo, hi) = pe.halves(e0);
    let it = Item {
        begin,
        end,
        page_base: wk.page_base,
        k_head: (kvh * p.k_stride_h + lo) as u64,
        v_head: (kvh * p.v_stride_h + e0) as u64,
        k_split: (hi - lo) as u64,
    };
    // Key t sits at position pos0 + t; the query at pos0 + kv_len − 1, where kv_len is the end
    // of the request's last work item.
    let (mut pos0, mut q_pos) = (0, 0);
    if P::ON {
        // SAFETY: b < batch indexes the offsets; last − 1 is the request's last work item.
        unsafe {
            pos0 = ld_i32(rope.offsets, b);
            q_pos = pos0 + ld_i32(p.work, 2 * p.work_stride + wk.last - 1) - 1;
        }
    }
    let mut q = [[0.0f32; VEC]; G];
    for (ii, qi) in q.iter_mut().enumerate() {
        if (ii as u32) < g {
            let hq = kvh * g + ii as u32;
            let row = (b as u64) * (p.q_stride_b as u64) + (hq * p.q_stride_h) as u64;
            let at = |e: u32| p.q + (row + e as u64) * 2;
            // SAFETY: host-validated q extent; 16-byte aligned rows (halves: 8-byte aligned).
            let raw = unsafe {
                if P::ON {
                    let (l, h) = (global::ld_nc_u32x2(at(lo)), global::ld_nc_u32x2(at(hi)));
                    [l[0], l[1], h[0], h[1]]
                } else {
                    global::ld_nc_u32x4(at(e0))
                }
            };
            let v = unpack8::<E>(raw);
            for e in 0..VEC {
                qi[e] = v[e] * logits.scale();
            }
            pe.rotate(qi, q_pos);
        }
    }

    let smem = shared::dyn_smem_base();
    let tile = slots * cfg::UNROLL;
    let tiles = (end - begin).div_ceil(tile);
    for s in 0..STAGES - 1 {
        if s < tiles {
            // SAFETY: see issue_tile.
            unsafe { issue_tile::<K>(P::ON, p, &it, s, s, slot, slots, tid, smem) };
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
            unsafe { issue_tile::<K>(P::ON, p, &it, nj, nj % STAGES, slot, slots, tid, smem) };
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
                    K::ld(stage_addr(smem, s, u as u32, 0, tid)),
                    K::ld(stage_addr(smem, s, u as u32, 1, tid)),
                )
            };
            let mut kf = K::unpack(kr);
            // Rows past the range are zeros: rotating them is harmless.
            pe.rotate(&mut kf, pos0 + t);
            vf[u] = K::unpack(vr);
            for h in 0..G {
                let mut d = 0.0f32;
                for e in 0..VEC {
                    d += q[h][e] * kf[e];
                }
                // The logit (q was scaled on load); keys past the range are masked.
                let xv = logits.logit_scaled(warp::group_sum_f32(d, lpr));
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
        let row = State { m, d: tot };
        // V's scale rides on the normaliser (o = v_scale · Σ p·v / Σ p); the lse does not see it.
        let inv = row.inv_denominator() * v_scale;
        for s in 0..slots {
            let a = m_off + (s * g_cap + h) * 4;
            // SAFETY: inside m_s; entry (s, h) is owned by this thread here.
            unsafe { shared::st_f32(a, exp2(shared::ld_f32(a) - mr) * inv) };
        }
        let lse = row.lse();
        let hq = hq0 + h;
        // SAFETY: host-sized lse [batch, Hq] and part_lse [work_stride, Hq].
        unsafe {
            if wk.split() {
                global::st_f32(
                    p.part_lse + ((wk.item * p.num_qo_heads + hq) as u64) * 4,
                    lse,
                );
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
            if wk.split() {
                let a = p.part_o + (((wk.item * p.num_qo_heads + hq) * D + e0) as u64) * 4;
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

    if wk.split() {
        // SAFETY: partials of this CTA are written; smem is no longer read by any thread after
        // the barrier inside.
        unsafe { merge_if_last::<E, D>(p, b, kvh, wk.first, wk.last, tid, smem) };
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
            crate::arch::grid_dep::enter();
            // SAFETY: forwarded launch contract.
            unsafe {
                batch_decode::<$e, Half<$e>, ScaleSoftCap, NoRope, $d, $g>(&p, 1.0, &RopeAttn::default())
            }
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

macro_rules! decode_fp8_entries {
    ($($name:ident => $e:ty, $f:ty, $d:literal, $g:literal;)*) => {$(
        #[doc = concat!("Entry point: batch decode over ", stringify!($f), " K/V, ", stringify!($e), " q/out, D = ", $d, ", group capacity ", $g, ".")]
        ///
        /// # Safety
        /// See the generic body's launch contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: DecodeFp8Params) {
            crate::arch::grid_dep::enter();
            // SAFETY: forwarded launch contract.
            unsafe {
                batch_decode::<$e, Codes<$f>, ScaleSoftCap, NoRope, $d, $g>(
                    &p.base,
                    p.v_scale,
                    &RopeAttn::default(),
                )
            }
        }
    )*};
}

decode_fp8_entries! {
    decode_fp8_e4m3_f16_d64_g1 => F16, E4m3, 64, 1;
    decode_fp8_e4m3_f16_d64_g2 => F16, E4m3, 64, 2;
    decode_fp8_e4m3_f16_d64_g4 => F16, E4m3, 64, 4;
    decode_fp8_e4m3_f16_d64_g8 => F16, E4m3, 64, 8;
    decode_fp8_e4m3_f16_d128_g1 => F16, E4m3, 128, 1;
    decode_fp8_e4m3_f16_d128_g2 => F16, E4m3, 128, 2;
    decode_fp8_e4m3_f16_d128_g4 => F16, E4m3, 128, 4;
    decode_fp8_e4m3_f16_d128_g8 => F16, E4m3, 128, 8;
    decode_fp8_e4m3_f16_d256_g1 => F16, E4m3, 256, 1;
    decode_fp8_e4m3_f16_d256_g2 => F16, E4m3, 256, 2;
    decode_fp8_e4m3_f16_d256_g4 => F16, E4m3, 256, 4;
    decode_fp8_e4m3_f16_d256_g8 => F16, E4m3, 256, 8;
    decode_fp8_e4m3_bf16_d64_g1 => Bf16, E4m3, 64, 1;
    decode_fp8_e4m3_bf16_d64_g2 => Bf16, E4m3, 64, 2;
    decode_fp8_e4m3_bf16_d64_g4 => Bf16, E4m3, 64, 4;
    decode_fp8_e4m3_bf16_d64_g8 => Bf16, E4m3, 64, 8;
    decode_fp8_e4m3_bf16_d128_g1 => Bf16, E4m3, 128, 1;
    decode_fp8_e4m3_bf16_d128_g2 => Bf16, E4m3, 128, 2;
    decode_fp8_e4m3_bf16_d128_g4 => Bf16, E4m3, 128, 4;
    decode_fp8_e4m3_bf16_d128_g8 => Bf16, E4m3, 128, 8;
    decode_fp8_e4m3_bf16_d256_g1 => Bf16, E4m3, 256, 1;
    decode_fp8_e4m3_bf16_d256_g2 => Bf16, E4m3, 256, 2;
    decode_fp8_e4m3_bf16_d256_g4 => Bf16, E4m3, 256, 4;
    decode_fp8_e4m3_bf16_d256_g8 => Bf16, E4m3, 256, 8;
    decode_fp8_e5m2_f16_d64_g1 => F16, E5m2, 64, 1;
    decode_fp8_e5m2_f16_d64_g2 => F16, E5m2, 64, 2;
    decode_fp8_e5m2_f16_d64_g4 => F16, E5m2, 64, 4;
    decode_fp8_e5m2_f16_d64_g8 => F16, E5m2, 64, 8;
    decode_fp8_e5m2_f16_d128_g1 => F16, E5m2, 128, 1;
    decode_fp8_e5m2_f16_d128_g2 => F16, E5m2, 128, 2;
    decode_fp8_e5m2_f16_d128_g4 => F16, E5m2, 128, 4;
    decode_fp8_e5m2_f16_d128_g8 => F16, E5m2, 128, 8;
    decode_fp8_e5m2_f16_d256_g1 => F16, E5m2, 256, 1;
    decode_fp8_e5m2_f16_d256_g2 => F16, E5m2, 256, 2;
    decode_fp8_e5m2_f16_d256_g4 => F16, E5m2, 256, 4;
    decode_fp8_e5m2_f16_d256_g8 => F16, E5m2, 256, 8;
    decode_fp8_e5m2_bf16_d64_g1 => Bf16, E5m2, 64, 1;
    decode_fp8_e5m2_bf16_d64_g2 => Bf16, E5m2, 64, 2;
    decode_fp8_e5m2_bf16_d64_g4 => Bf16, E5m2, 64, 4;
    decode_fp8_e5m2_bf16_d64_g8 => Bf16, E5m2, 64, 8;
    decode_fp8_e5m2_bf16_d128_g1 => Bf16, E5m2, 128, 1;
    decode_fp8_e5m2_bf16_d128_g2 => Bf16, E5m2, 128, 2;
    decode_fp8_e5m2_bf16_d128_g4 => Bf16, E5m2, 128, 4;
    decode_fp8_e5m2_bf16_d128_g8 => Bf16, E5m2, 128, 8;
    decode_fp8_e5m2_bf16_d256_g1 => Bf16, E5m2, 256, 1;
    decode_fp8_e5m2_bf16_d256_g2 => Bf16, E5m2, 256, 2;
    decode_fp8_e5m2_bf16_d256_g4 => Bf16, E5m2, 256, 4;
    decode_fp8_e5m2_bf16_d256_g8 => Bf16, E5m2, 256, 8;
}

macro_rules! decode_rope_entries {
    ($($name:ident => $e:ty, $d:literal, $g:literal;)*) => {$(
        #[doc = concat!("Entry point: batch decode with RoPE inside attention, ", stringify!($e), ", D = ", $d, ", group capacity ", $g, ".")]
        ///
        /// # Safety
        /// See the generic body's launch contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: DecodeRopeParams) {
            crate::arch::grid_dep::enter();
            // SAFETY: forwarded launch contract.
            unsafe {
                batch_decode::<$e, Half<$e>, ScaleSoftCap, LaneRope<VEC>, $d, $g>(&p.base, 1.0, &p.rope)
            }
        }
    )*};
}

decode_rope_entries! {
    decode_rope_f16_d64_g1 => F16, 64, 1;
    decode_rope_f16_d64_g2 => F16, 64, 2;
    decode_rope_f16_d64_g4 => F16, 64, 4;
    decode_rope_f16_d64_g8 => F16, 64, 8;
    decode_rope_f16_d128_g1 => F16, 128, 1;
    decode_rope_f16_d128_g2 => F16, 128, 2;
    decode_rope_f16_d128_g4 => F16, 128, 4;
    decode_rope_f16_d128_g8 => F16, 128, 8;
    decode_rope_f16_d256_g1 => F16, 256, 1;
    decode_rope_f16_d256_g2 => F16, 256, 2;
    decode_rope_f16_d256_g4 => F16, 256, 4;
    decode_rope_f16_d256_g8 => F16, 256, 8;
    decode_rope_bf16_d64_g1 => Bf16, 64, 1;
    decode_rope_bf16_d64_g2 => Bf16, 64, 2;
    decode_rope_bf16_d64_g4 => Bf16, 64, 4;
    decode_rope_bf16_d64_g8 => Bf16, 64, 8;
    decode_rope_bf16_d128_g1 => Bf16, 128, 1;
    decode_rope_bf16_d128_g2 => Bf16, 128, 2;
    decode_rope_bf16_d128_g4 => Bf16, 128, 4;
    decode_rope_bf16_d128_g8 => Bf16, 128, 8;
    decode_rope_bf16_d256_g1 => Bf16, 256, 1;
    decode_rope_bf16_d256_g2 => Bf16, 256, 2;
    decode_rope_bf16_d256_g4 => Bf16, 256, 4;
    decode_rope_bf16_d256_g8 => Bf16, 256, 8;
}
