//! Single-request decode attention: one query token per head against a contiguous K/V.
//!
//! Host twin: `host/src/ops/single_decode.rs` (validation, split planning, launch).
//!
//! CTA = (KV chunk, KV head), 128 threads. `D/8` consecutive lanes share one K/V row (one
//! 16-byte load each), so the CTA has `slots = 128/(D/8)` row slots, and every thread keeps
//! [`UNROLL`] rows in flight per iteration. The `g` query heads of the KV head are all served by
//! the CTA: each K/V row is loaded once and used by every head of the group (GQA sharing).
//! Each slot runs its own online softmax (base 2, `math::softmax`); at the end the slots are
//! merged through shared memory. With one chunk the CTA writes `o`/`lse`; with several it writes
//! normalised f32 partials + lse for the merge kernel (`merge.rs`).
use crate::abi::SingleDecodeParams;
use crate::arch::{global, shared, thread, warp};
use crate::config::single_decode as cfg;
use crate::dtype::{Bf16, Elem, F16};
use crate::math::chunk::chunk_range;
use crate::math::fast::{exp2, fmax, log2, rcp};
use crate::math::softmax::{clamp_ref, State};

const VEC: usize = cfg::VEC as usize;
const UNROLL: usize = cfg::UNROLL as usize;

#[inline(always)]
fn unpack8<E: Elem>(raw: [u32; 4]) -> [f32; VEC] {
    let mut out = [0.0f32; VEC];
    let mut j = 0;
    while j < 4 {
        let (lo, hi) = E::unpack2(raw[j]);
        out[2 * j] = lo;
        out[2 * j + 1] = hi;
        j += 1;
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

/// The kernel body, generic over element type, head dim `D` and group capacity `G`.
///
/// # Safety
/// Launched with grid `(p.num_chunks, num_kv_heads)`, block `(128)`, dynamic shared memory
/// `config::single_decode::smem_bytes(D, G)`; all pointers/strides validated by the host
/// (16-byte aligned rows, `p.group <= G`, buffers large enough).
#[inline(always)]
unsafe fn single_decode<E: Elem, const D: u32, const G: usize>(p: &SingleDecodeParams) {
    let lpr = cfg::lanes_per_row(D);
    let slots = cfg::slots(D);
    let tid = thread::thread_idx_x();
    let slot = tid / lpr;
    let sub = tid % lpr;
    let chunk = thread::block_idx_x();
    let kvh = thread::block_idx_y();
    let g = p.group;
    let (begin, end) = chunk_range(p.kv_begin, p.kv_end, p.chunk_len, chunk);
    let tf = p.logit;

    // Query slice of every head of the group, pre-multiplied by the logit pre-scale so the
    // dot product is already `s * pre`. Heads past the runtime group stay zero (never written).
    let mut q = [[0.0f32; VEC]; G];
    for (i, qi) in q.iter_mut().enumerate() {
        if (i as u32) < g {
            let hq = kvh * g + i as u32;
            let off = (hq as u64) * (p.q_stride_h as u64) + (sub * cfg::VEC) as u64;
            // SAFETY: host checked q is 16-byte aligned with q_stride_h % 8 == 0 and covers
            // num_qo_heads rows.
            let raw = unsafe { global::ld_nc_u32x4(p.q + off * 2) };
            let v = unpack8::<E>(raw);
            for e in 0..VEC {
                qi[e] = v[e] * tf.pre;
            }
        }
    }

    let k_base = p.k + ((kvh as u64) * (p.k_stride_h as u64) + (sub * cfg::VEC) as u64) * 2;
    let v_base = p.v + ((kvh as u64) * (p.v_stride_h as u64) + (sub * cfg::VEC) as u64) * 2;
    let k_row = (p.k_stride_n as u64) * 2;
    let v_row = (p.v_stride_n as u64) * 2;

    let mut st = [State::EMPTY; G];
    let mut acc = [[0.0f32; VEC]; G];
    let step = slots * cfg::UNROLL;
    // The trip count depends only on the chunk, so whole warps stay converged for the shuffles.
    let mut base = begin;
    while base < end {
        let mut kr = [[0u32; 4]; UNROLL];
        let mut vr = [[0u32; 4]; UNROLL];
        let mut valid = [false; UNROLL];
        for u in 0..UNROLL {
            let t = base + slot + (u as u32) * slots;
            valid[u] = t < end;
            if valid[u] {
                // SAFETY: t < kv_end <= kv_len rows exist (host-validated extents).
                unsafe {
                    kr[u] = global::ld_nc_u32x4(k_base + (t as u64) * k_row);
                    vr[u] = global::ld_nc_u32x4(v_base + (t as u64) * v_row);
                }
            }
        }
        // Scores x[i][u] in the base-2 domain; invalid rows are -inf (their V stays zero).
        let mut x = [[f32::NEG_INFINITY; UNROLL]; G];
        for u in 0..UNROLL {
            let kf = unpack8::<E>(kr[u]);
            for i in 0..G {
                let mut s = 0.0f32;
                for e in 0..VEC {
                    s += q[i][e] * kf[e];
                }
                let s = warp::group_sum_f32(s, lpr);
                let xv = if tf.soft_cap != 0 {
                    tf.post * crate::math::fast::tanh(s)
                } else {
                    s
                };
                x[i][u] = if valid[u] { xv } else { f32::NEG_INFINITY };
            }
        }
        let mut vf = [[0.0f32; VEC]; UNROLL];
        for u in 0..UNROLL {
            vf[u] = unpack8::<E>(vr[u]);
        }
        for i in 0..G {
            let mut m_new = st[i].m;
            for u in 0..UNROLL {
                m_new = fmax(m_new, x[i][u]);
            }
            let r = st[i].rescale_to(m_new);
            for e in 0..VEC {
                acc[i][e] *= r;
            }
            for u in 0..UNROLL {
                let pw = st[i].weight(x[i][u]);
                for e in 0..VEC {
                    acc[i][e] += pw * vf[u][e];
                }
            }
        }
        base += step;
    }

    // Cross-slot merge. smem: o_s[slot][G][D] f32, then m_s[slot][G], d_s[slot][G].
    let smem = shared::dyn_smem_base();
    let g_cap = G as u32;
    let m_off = smem + slots * g_cap * D * 4;
    let d_off = m_off + slots * g_cap * 4;
    for i in 0..G {
        let o_addr = smem + ((slot * g_cap + i as u32) * D + sub * cfg::VEC) * 4;
        let a = acc[i];
        // SAFETY: addresses inside smem_bytes(D, G), 16-byte aligned (D and VEC multiples of 4).
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
                shared::st_f32(m_off + (slot * g_cap + i as u32) * 4, st[i].m);
                shared::st_f32(d_off + (slot * g_cap + i as u32) * 4, st[i].d);
            }
        }
    }
    thread::sync_threads();

    // Per head: global max, total denominator, per-slot weights (normalised), lse.
    // The weight of slot s replaces m_s[s][i].
    let hq0 = kvh * g;
    let split = p.num_chunks > 1;
    if tid < g {
        let i = tid;
        let mut m = f32::NEG_INFINITY;
        for s in 0..slots {
            // SAFETY: inside the m_s array.
            m = fmax(m, unsafe { shared::ld_f32(m_off + (s * g_cap + i) * 4) });
        }
        let mr = clamp_ref(m);
        let mut tot = 0.0f32;
        for s in 0..slots {
            // SAFETY: inside m_s / d_s.
            let (ms, ds) = unsafe {
                (
                    shared::ld_f32(m_off + (s * g_cap + i) * 4),
                    shared::ld_f32(d_off + (s * g_cap + i) * 4),
                )
            };
            tot += ds * exp2(ms - mr);
        }
        let inv = if tot > 0.0 { rcp(tot) } else { 0.0 };
        for s in 0..slots {
            let a = m_off + (s * g_cap + i) * 4;
            // SAFETY: inside m_s; each (s, i) entry is read and rewritten by this thread only.
            unsafe { shared::st_f32(a, exp2(shared::ld_f32(a) - mr) * inv) };
        }
        let lse = if tot > 0.0 {
            m + log2(tot)
        } else {
            f32::NEG_INFINITY
        };
        let hq = hq0 + i;
        // SAFETY: host sized lse [num_qo_heads] and part_lse [num_chunks, num_qo_heads].
        unsafe {
            if split {
                global::st_f32(p.part_lse + ((chunk * p.num_qo_heads + hq) as u64) * 4, lse);
            } else if p.lse != 0 {
                global::st_f32(p.lse + (hq as u64) * 4, lse);
            }
        }
    }
    thread::sync_threads();

    // Weighted sum over slots, 8 consecutive elements per work item.
    let items = g * (D / cfg::VEC);
    let mut it = tid;
    while it < items {
        let i = it / (D / cfg::VEC);
        let e0 = (it % (D / cfg::VEC)) * cfg::VEC;
        let mut out = [0.0f32; VEC];
        for s in 0..slots {
            // SAFETY: inside smem (weights in m_s, partial o in o_s).
            unsafe {
                let w = shared::ld_f32(m_off + (s * g_cap + i) * 4);
                let a = smem + ((s * g_cap + i) * D + e0) * 4;
                let lo = shared::ld_u32x4(a);
                let hi = shared::ld_u32x4(a + 16);
                for e in 0..4 {
                    out[e] += w * f32::from_bits(lo[e]);
                    out[e + 4] += w * f32::from_bits(hi[e]);
                }
            }
        }
        let hq = hq0 + i;
        // SAFETY: host-validated output extents and alignment (o_stride_h % 8 == 0).
        unsafe {
            if split {
                let a = p.part_o + (((chunk * p.num_qo_heads + hq) * D + e0) as u64) * 4;
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
                let a = p.o + ((hq as u64) * (p.o_stride_h as u64) + e0 as u64) * 2;
                global::st_u32x4(a, pack8::<E>(out));
            }
        }
        it += cfg::THREADS;
    }
}

macro_rules! single_decode_entries {
    ($($name:ident => $e:ty, $d:literal, $g:literal;)*) => {$(
        #[doc = concat!("Entry point: single decode, ", stringify!($e), ", D = ", $d, ", group capacity ", $g, ".")]
        ///
        /// # Safety
        /// See the generic body's launch contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: SingleDecodeParams) {
            // SAFETY: forwarded launch contract.
            unsafe { single_decode::<$e, $d, $g>(&p) }
        }
    )*};
}

single_decode_entries! {
    single_decode_f16_d64_g1 => F16, 64, 1;
    single_decode_f16_d64_g2 => F16, 64, 2;
    single_decode_f16_d64_g4 => F16, 64, 4;
    single_decode_f16_d64_g8 => F16, 64, 8;
    single_decode_f16_d128_g1 => F16, 128, 1;
    single_decode_f16_d128_g2 => F16, 128, 2;
    single_decode_f16_d128_g4 => F16, 128, 4;
    single_decode_f16_d128_g8 => F16, 128, 8;
    single_decode_f16_d256_g1 => F16, 256, 1;
    single_decode_f16_d256_g2 => F16, 256, 2;
    single_decode_f16_d256_g4 => F16, 256, 4;
    single_decode_f16_d256_g8 => F16, 256, 8;
    single_decode_bf16_d64_g1 => Bf16, 64, 1;
    single_decode_bf16_d64_g2 => Bf16, 64, 2;
    single_decode_bf16_d64_g4 => Bf16, 64, 4;
    single_decode_bf16_d64_g8 => Bf16, 64, 8;
    single_decode_bf16_d128_g1 => Bf16, 128, 1;
    single_decode_bf16_d128_g2 => Bf16, 128, 2;
    single_decode_bf16_d128_g4 => Bf16, 128, 4;
    single_decode_bf16_d128_g8 => Bf16, 128, 8;
    single_decode_bf16_d256_g1 => Bf16, 256, 1;
    single_decode_bf16_d256_g2 => Bf16, 256, 2;
    single_decode_bf16_d256_g4 => Bf16, 256, 4;
    single_decode_bf16_d256_g8 => Bf16, 256, 8;
}
