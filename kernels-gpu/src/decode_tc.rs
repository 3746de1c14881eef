//! Tensor-core batch decode (`decode_tc_*`): the `g` query heads of a KV head are the rows of
//! one 16-row `mma.m16n8k16` tile (rows ≥ g are zero and never written), so every K/V element is
//! read from shared memory once and the per-token work is two mma per warp instead of ~70
//! CUDA-core instructions. Same parameters, plan and fused split merge as the CUDA-core kernel
//! (`batch_decode.rs`); host twin `host/src/ops/batch_decode.rs` picks the kernel.
//!
//! CTA = (work item, KV head), 4 warps. A stage is a tile of [`TILE`] tokens of K and V,
//! loaded with 16-byte `cp.async` by all threads through the page table into a swizzled layout
//! (16-byte chunk `c` of row `r` stored at `c ^ (r % 8)`, so the 8 rows of every `ldmatrix`
//! phase hit distinct banks); warp `w` owns tokens `[16w, 16w + 16)` of each tile:
//! S = Q·Kᵀ (K rows through `ldmatrix`, no transpose), online softmax on the accumulator
//! fragments (row max over the 4-lane quad), P re-packed in registers as the A operand, and
//! O += P·V (V through `ldmatrix.trans`). The warps' states meet in shared memory at the end.
//!
//! fp8 K/V (`decode_tc_fp8_*`): the same body over another [`TcKv`]: the ring holds the codes
//! (half the bytes per stage, twice the stages), read with the same `ldmatrix` instructions and
//! converted in registers on the way to the mma (`attn::tc_kv`); K's scale is in the logit scale
//! (host), V's multiplies the normaliser.

use crate::abi::{DecodeFp8Params, DecodeParams};
use crate::arch::{global, pipeline, shared, thread, warp};
use crate::attn::logits::{Logits, ScaleSoftCap};
use crate::attn::split::merge_if_last;
use crate::attn::tc_kv::{Codes, Half, TcKv};
use crate::attn::tile::RegTile;
use crate::attn::work::load_decode_work;
use crate::config::decode_tc as cfg;
use crate::dtype::{Bf16, Elem, F16};
use crate::math::fast::{exp2, fmax};
use crate::math::fp8::{E4m3, E5m2};
use crate::math::softmax::{clamp_ref, State};

const TILE: u32 = cfg::TILE;

/// The kernel body (`NT = D/8` output n-tiles, `KS = D/16` k-steps: `attn::traits`).
///
/// # Safety
/// Grid `(work_stride, num_kv_heads)`, block `(128)`, dynamic smem
/// `config::decode_tc::smem_bytes(D, group, K::BYTES)`; `group ≤ 16`; plan validated by the host.
#[inline(always)]
unsafe fn decode_tc<
    E: Elem,
    K: TcKv,
    L: Logits,
    const D: u32,
    const NT: usize,
    const KS: usize,
    const STAGES: u32,
    const IN_FLIGHT: u32,
>(
    p: &DecodeParams,
    v_scale: f32,
) {
    let tid = thread::thread_idx_x();
    let lane = tid % 32;
    let w = tid / 32;
    let kvh = thread::block_idx_y();
    // SAFETY: as the kernel's contract.
    let Some(wk) = (unsafe { load_decode_work(p) }) else {
        return;
    };
    let g = p.group;
    let logits = L::new(p.logit);
    let smem = shared::dyn_smem_base();
    let tiles = (wk.end - wk.begin).div_ceil(TILE);
    // Prologue: the first STAGES − 1 tiles in flight (one commit group each, empty past the
    // end, so the wait count below is the same every iteration).
    if tiles > 0 {
        for t in 0..STAGES - 1 {
            if t < tiles {
                // SAFETY: see TcKv::copy.
                unsafe { K::copy::<D>(p, kvh, &wk, t, t, tid, smem) };
            } else {
                pipeline::commit_group();
            }
        }
    }

    // Q as mma A fragments: row = head of the group (zero past g), KS k-steps of 16 columns.
    // SAFETY: host-validated q extents.
    let qa = unsafe { K::load_q::<KS>(p, &wk, kvh, lane) };

    let mut o = RegTile::<f32, NT>::splat(0.0);
    // Running state of the lane's two rows (g_ = lane/4 and g_ + 8): max and partial sum.
    let mut m = [f32::NEG_INFINITY; 2];
    let mut d = [0.0f32; 2];
    let (gq, tq) = (lane / 4, lane % 4);
    let mut j = 0;
    while j < tiles {
        let ahead = j + STAGES - 1;
        if ahead < tiles {
            // SAFETY: see TcKv::copy; stage ahead % STAGES (= (j − 1) % STAGES) was released by
            // the barrier ending iteration j − 1.
            unsafe { K::copy::<D>(p, kvh, &wk, ahead, ahead % STAGES, tid, smem) };
        } else {
            pipeline::commit_group();
        }
        // Tile j's group is complete once at most IN_FLIGHT = STAGES − 1 newer groups remain.
        pipeline::wait_group::<IN_FLIGHT>();
        thread::sync_threads();
        let k_base = smem + (j % STAGES) * cfg::stage_bytes(D, K::BYTES);
        let v_base = k_base + TILE * D * K::BYTES;
        let row0 = w * 16;

        // S = Q·Kᵀ for this warp's 16 tokens (two n-tiles of 8).
        // SAFETY: the stage is published; warp-convergent.
        let s = unsafe { K::qk::<E, D, KS>(k_base, row0, lane, &qa) };

        // Online softmax on the fragments: element e of n-tile nt is row gq + 8(e/2), token
        // 2tq + (e%2) + 8nt.
        let tok0 = wk.begin + j * TILE + row0;
        let mut x = [[0.0f32; 4]; 2]; // [row half][4 tokens]
        for e in 0..4 {
            let half = e / 2;
            let c = (e % 2) as u32;
            let raw = [s.0[0][e], s.0[1][e]];
            for (nt, &sv) in raw.iter().enumerate() {
                let tok = tok0 + 2 * tq + c + 8 * nt as u32;
                let v = logits.logit(sv);
                x[half][(nt * 2) + c as usize] = if tok < wk.end { v } else { f32::NEG_INFINITY };
            }
        }
        let mut r_scale = [1.0f32; 2];
        let mut pv = [[0.0f32; 4]; 2];
        for h in 0..2 {
            let mut mx = fmax(fmax(x[h][0], x[h][1]), fmax(x[h][2], x[h][3]));
            mx = fmax(mx, warp::shfl_xor_f32(mx, 1));
            mx = fmax(mx, warp::shfl_xor_f32(mx, 2));
            let m_new = fmax(m[h], mx);
            let mr = clamp_ref(m_new);
            r_scale[h] = exp2(m[h] - mr);
            let mut sum = 0.0f32;
            for t in 0..4 {
                pv[h][t] = exp2(x[h][t] - mr);
                sum += pv[h][t];
            }
            d[h] = d[h] * r_scale[h] + sum;
            m[h] = m_new;
        }
        o.scale_rows(r_scale);
        // O += P·V.
        // SAFETY: as for S.
        unsafe { K::pv::<E, D, NT>(v_base, row0, lane, &pv, &mut o) };
        // Every warp is done with this stage before the next iteration refills it.
        thread::sync_threads();
        j += 1;
    }
    pipeline::wait_all();

    // Full row sums over the quad.
    for dh in d.iter_mut() {
        *dh += warp::shfl_xor_f32(*dh, 1);
        *dh += warp::shfl_xor_f32(*dh, 2);
    }
    // Cross-warp merge through smem: o_w[4][16][D] f32, then m_w[4][16], d_w[4][16].
    thread::sync_threads();
    let m_off = smem + 4 * 16 * D * 4;
    let d_off = m_off + 4 * 16 * 4;
    for (nt, ot) in o.0.iter().enumerate() {
        for e in 0..4 {
            let row = gq + 8 * (e as u32 / 2);
            let col = K::o_dim(nt as u32, 2 * tq + (e as u32 % 2));
            // SAFETY: inside the merge area.
            unsafe { shared::st_f32(smem + ((w * 16 + row) * D + col) * 4, ot[e]) };
        }
    }
    if tq == 0 {
        for h in 0..2u32 {
            let row = gq + 8 * h;
            // SAFETY: as above.
            unsafe {
                shared::st_f32(m_off + (w * 16 + row) * 4, m[h as usize]);
                shared::st_f32(d_off + (w * 16 + row) * 4, d[h as usize]);
            }
        }
    }
    thread::sync_threads();

    let hq0 = kvh * g;
    let items = g * (D / 4);
    let mut it = tid;
    while it < items {
        let row = it / (D / 4);
        let e0 = (it % (D / 4)) * 4;
        let mut mm = f32::NEG_INFINITY;
        for ww in 0..4 {
            // SAFETY: inside the merge area.
            mm = fmax(mm, unsafe { shared::ld_f32(m_off + (ww * 16 + row) * 4) });
        }
        let mr = clamp_ref(mm);
        let mut tot = 0.0f32;
        let mut acc = [0.0f32; 4];
        for ww in 0..4 {
            // SAFETY: as above.
            unsafe {
                let f = exp2(shared::ld_f32(m_off + (ww * 16 + row) * 4) - mr);
                tot += f * shared::ld_f32(d_off + (ww * 16 + row) * 4);
                let v = shared::ld_u32x4(smem + ((ww * 16 + row) * D + e0) * 4);
                for e in 0..4 {
                    acc[e] += f * f32::from_bits(v[e]);
                }
            }
        }
        let merged = State { m: mm, d: tot };
        // V's scale rides on the normaliser (1 for 16-bit K/V: folded away).
        let inv = merged.inv_denominator() * v_scale;
        for a in acc.iter_mut() {
            *a *= inv;
        }
        let lse = merged.lse();
        let hq = hq0 + row;
        // SAFETY: host-validated extents; 16-byte (partials) / 8-byte (o) aligned.
        unsafe {
            if wk.split() {
                let a = p.part_o + (((wk.item * p.num_qo_heads + hq) * D + e0) as u64) * 4;
                global::st_u32x4(
                    a,
                    [
                        acc[0].to_bits(),
                        acc[1].to_bits(),
                        acc[2].to_bits(),
                        acc[3].to_bits(),
                    ],
                );
                if e0 == 0 {
                    global::st_f32(
                        p.part_lse + ((wk.item * p.num_qo_heads + hq) as u64) * 4,
                        lse,
                    );
                }
            } else {
                let a = p.o
                    + ((wk.b as u64) * (p.o_stride_b as u64) + (hq * p.o_stride_h + e0) as u64) * 2;
                global::st_u32(a, E::pack2(acc[0], acc[1]));
                global::st_u32(a + 4, E::pack2(acc[2], acc[3]));
                if e0 == 0 && p.lse != 0 {
                    global::st_f32(p.lse + ((wk.b * p.num_qo_heads + hq) as u64) * 4, lse);
                }
            }
        }
        it += cfg::THREADS;
    }
    if wk.split() {
        // SAFETY: partials written; smem reusable after the barrier inside.
        unsafe { merge_if_last::<E, D>(p, wk.b, kvh, wk.first, wk.last, tid, smem) };
    }
}

macro_rules! decode_tc_entries {
    ($($name:ident => $e:ty, $d:literal;)*) => {$(
        #[doc = concat!("Entry point: tensor-core batch decode, ", stringify!($e), ", D = ", $d, ".")]
        ///
        /// # Safety
        /// See the generic body's launch contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: DecodeParams) {
            use crate::attn::traits::{Dim, HeadDim};
            const NT: usize = <Dim<$d> as HeadDim>::NT;
            const KS: usize = <Dim<$d> as HeadDim>::KS;
            const STAGES: u32 = cfg::stages($d, 2);
            crate::arch::grid_dep::enter();
            // SAFETY: forwarded launch contract.
            unsafe { decode_tc::<$e, Half, ScaleSoftCap, $d, NT, KS, STAGES, { STAGES - 1 }>(&p, 1.0) }
        }
    )*};
}

decode_tc_entries! {
    decode_tc_f16_d64 => F16, 64;
    decode_tc_f16_d128 => F16, 128;
    decode_tc_bf16_d64 => Bf16, 64;
    decode_tc_bf16_d128 => Bf16, 128;
}

macro_rules! decode_tc_fp8_entries {
    ($($name:ident => $e:ty, $f:ty, $d:literal;)*) => {$(
        #[doc = concat!("Entry point: tensor-core batch decode over ", stringify!($f), " K/V, ", stringify!($e), " q/out, D = ", $d, ".")]
        ///
        /// # Safety
        /// See the generic body's launch contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: DecodeFp8Params) {
            use crate::attn::traits::{Dim, HeadDim};
            const NT: usize = <Dim<$d> as HeadDim>::NT;
            const KS: usize = <Dim<$d> as HeadDim>::KS;
            const STAGES: u32 = cfg::stages($d, 1);
            crate::arch::grid_dep::enter();
            // SAFETY: forwarded launch contract.
            unsafe {
                decode_tc::<$e, Codes<$f>, ScaleSoftCap, $d, NT, KS, STAGES, { STAGES - 1 }>(
                    &p.base, p.v_scale,
                )
            }
        }
    )*};
}

decode_tc_fp8_entries! {
    decode_tc_fp8_e4m3_f16_d64 => F16, E4m3, 64;
    decode_tc_fp8_e4m3_f16_d128 => F16, E4m3, 128;
    decode_tc_fp8_e4m3_bf16_d64 => Bf16, E4m3, 64;
    decode_tc_fp8_e4m3_bf16_d128 => Bf16, E4m3, 128;
    decode_tc_fp8_e5m2_f16_d64 => F16, E5m2, 64;
    decode_tc_fp8_e5m2_f16_d128 => F16, E5m2, 128;
    decode_tc_fp8_e5m2_bf16_d64 => Bf16, E5m2, 64;
    decode_tc_fp8_e5m2_bf16_d128 => Bf16, E5m2, 128;
}
