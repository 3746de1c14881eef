//! Merge of split-KV partial states: for each head, `num_chunks` normalised partial outputs with
//! their base-2 lse fold into one output (`math::softmax::merge_weights`, n-ary form).
//!
//! Host twin: `host/src/ops/single_decode.rs` (launch after a split decode).
//! CTA = one head, 128 threads. Warp 0 computes the chunk weights `2^(lse_c − M)/Σ` into shared
//! memory; then every thread produces 4 consecutive output elements.
use crate::abi::MergeParams;
use crate::arch::{global, shared, thread, warp};
use crate::config::merge as cfg;
use crate::dtype::{Bf16, Elem, F16};
use crate::math::fast::{exp2, fmax, log2, rcp};
use crate::math::softmax::clamp_ref;

/// # Safety
/// Grid `(num_heads)`, block `(128)`, dynamic smem `config::merge::smem_bytes(num_chunks)`;
/// buffers validated by the host; `head_dim % 4 == 0`, `o_stride_h % 4 == 0`, o 8-byte aligned.
#[inline(always)]
unsafe fn merge_states<E: Elem>(p: &MergeParams) {
    let tid = thread::thread_idx_x();
    let h = thread::block_idx_x();
    let n = p.num_chunks;
    let w_base = shared::dyn_smem_base();
    let lse_at = |c: u32| p.part_lse + ((c * p.num_heads + h) as u64) * 4;

    if tid < 32 {
        let mut m = f32::NEG_INFINITY;
        let mut c = tid;
        while c < n {
            // SAFETY: c < num_chunks.
            m = fmax(m, unsafe { global::ld_nc_f32(lse_at(c)) });
            c += 32;
        }
        let m = warp::group_max_f32(m, 32);
        let mr = clamp_ref(m);
        let mut sum = 0.0f32;
        let mut c = tid;
        while c < n {
            // SAFETY: c < num_chunks; smem holds num_chunks weights.
            unsafe {
                let w = exp2(global::ld_nc_f32(lse_at(c)) - mr);
                shared::st_f32(w_base + c * 4, w);
                sum += w;
            }
            c += 32;
        }
        let sum = warp::group_sum_f32(sum, 32);
        let inv = if sum > 0.0 { rcp(sum) } else { 0.0 };
        let mut c = tid;
        while c < n {
            // SAFETY: as above; each weight is rescaled by the lane that wrote it.
            unsafe { shared::st_f32(w_base + c * 4, shared::ld_f32(w_base + c * 4) * inv) };
            c += 32;
        }
        if tid == 0 && p.lse != 0 {
            let lse = if sum > 0.0 {
                m + log2(sum)
            } else {
                f32::NEG_INFINITY
            };
            // SAFETY: lse has num_heads entries.
            unsafe { global::st_f32(p.lse + (h as u64) * 4, lse) };
        }
    }
    thread::sync_threads();

    let mut e0 = tid * 4;
    while e0 < p.head_dim {
        let mut acc = [0.0f32; 4];
        let mut c = 0;
        while c < n {
            // SAFETY: in-range chunk, head and element; part_o rows are 16-byte aligned.
            unsafe {
                let w = shared::ld_f32(w_base + c * 4);
                let a = p.part_o + (((c * p.num_heads + h) * p.head_dim + e0) as u64) * 4;
                let v = global::ld_nc_u32x4(a);
                for j in 0..4 {
                    acc[j] += w * f32::from_bits(v[j]);
                }
            }
            c += 1;
        }
        let a = p.o + ((h as u64) * (p.o_stride_h as u64) + e0 as u64) * 2;
        // SAFETY: 8-byte aligned (o_stride_h % 4 == 0, head_dim % 4 == 0), in range.
        unsafe {
            global::st_u32(a, E::pack2(acc[0], acc[1]));
            global::st_u32(a + 4, E::pack2(acc[2], acc[3]));
        }
        e0 += cfg::THREADS * 4;
    }
}

/// Entry point: merge partial states into an f16 output.
///
/// # Safety
/// See the generic body's launch contract.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn merge_states_f16(p: MergeParams) {
    // SAFETY: forwarded launch contract.
    unsafe { merge_states::<F16>(&p) }
}

/// Entry point: merge partial states into a bf16 output.
///
/// # Safety
/// See the generic body's launch contract.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn merge_states_bf16(p: MergeParams) {
    // SAFETY: forwarded launch contract.
    unsafe { merge_states::<Bf16>(&p) }
}
