//! The kernels a Llama-architecture model needs beside attention: RMSNorm (alone and fused with
//! the residual add), the fused QKV epilogue (split, RoPE, cast to 16 bits), SiLU-and-mul,
//! 16-bit → f32 conversion, embedding gather and greedy argmax. RMSNorm, SiLU-and-mul and
//! the gather also write 16-bit outputs (`out`), for bf16/f16 matrix products. Host twin:
//! `host/src/ops/model/`; CPU twins: `ferrinfer::cpu::{norm, rope, activation, sampling}`.
//!
//! All are memory-bound one-pass kernels: one CTA per row where a row is reduced (RMSNorm,
//! argmax) or shares a scalar (RoPE's position, gather's id), one thread per element otherwise.
//! Offsets are computed in u64 from u32 indices, so no product the host validated as fitting
//! in u32 can wrap.
mod argmax;
mod elementwise;
mod gemv;
mod norm;
mod out;
mod rope;

use crate::arch::{shared, thread, warp};

/// The sum of `v` over the CTA (1-D, `block_dim_x` a multiple of 32); every thread gets it,
/// summed in the same order in every thread.
///
/// # Safety
/// Every thread of the CTA must call it (it holds a barrier), once per launch, with at least
/// `4 · block_dim_x / 32` bytes of dynamic shared memory.
#[inline(always)]
unsafe fn block_sum(v: f32) -> f32 {
    let s = warp::group_sum_f32(v, 32);
    let base = shared::dyn_smem_base();
    let tid = thread::thread_idx_x();
    if tid % 32 == 0 {
        // SAFETY: warp index < block_dim_x / 32: inside the dynamic shared memory.
        unsafe { shared::st_f32(base + (tid / 32) * 4, s) };
    }
    thread::sync_threads();
    let mut total = 0.0f32;
    for w in 0..thread::block_dim_x() / 32 {
        // SAFETY: as above; written before the barrier.
        total += unsafe { shared::ld_f32(base + w * 4) };
    }
    total
}
