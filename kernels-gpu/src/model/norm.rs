//! RMSNorm, alone (`rms_norm`) and fused with the residual add (`add_rms_norm`): one CTA per
//! row; each thread sums the squares of its strided elements in f32, the CTA reduces them
//! (warp shuffles, then one word per warp in shared memory), and a second pass over the row
//! (served from L1/L2) scales and writes it. `out = x · (1/√(mean(x²) + eps)) · w`, the CPU
//! twin's order of operations (`cpu::norm`, which reduces in f64).
use crate::abi::NormParams;
use crate::arch::{global, thread};
use crate::math::fast::{fma, sqrt};

/// The kernel body; `ADD`: `residual += x` first, normalising the sum.
///
/// # Safety
/// Grid `(rows)`, block a multiple of 32 (≤ 1024), `4 · block / 32` bytes of dynamic shared
/// memory; `x`, `out` (and `residual` when `ADD`) hold `rows · dim` f32, `weight` `dim`; `x` and
/// `weight` are not written during the launch (validated by the host).
#[inline(always)]
unsafe fn norm_rows<const ADD: bool>(p: &NormParams) {
    let row = thread::block_idx_x();
    if row >= p.rows {
        return; // uniform per CTA: the barrier below is reached by all or none
    }
    let (tid, nt) = (thread::thread_idx_x(), thread::block_dim_x());
    let off = row as u64 * p.dim as u64 * 4;
    let (x, res, out) = (p.x + off, p.residual + off, p.out + off);
    let mut ss = 0.0f32;
    let mut c = tid;
    while c < p.dim {
        let a = c as u64 * 4;
        // SAFETY: element c < dim of row `row` exists (launch contract).
        let mut v = unsafe { global::ld_nc_f32(x + a) };
        if ADD {
            // SAFETY: as above; this thread alone touches element c of the residual row.
            unsafe {
                v += f32::from_bits(global::ld_u32(res + a));
                global::st_f32(res + a, v);
            }
        }
        ss = fma(v, v, ss);
        c += nt;
    }
    // SAFETY: every thread of the CTA reaches this call (the early return is per CTA).
    let total = unsafe { super::block_sum(ss) };
    let r = 1.0 / sqrt(total / p.dim as f32 + p.eps);
    let mut c = tid;
    while c < p.dim {
        let a = c as u64 * 4;
        // SAFETY: as above; the residual element was written by this same thread.
        let v = unsafe {
            if ADD {
                f32::from_bits(global::ld_u32(res + a))
            } else {
                global::ld_nc_f32(x + a)
            }
        };
        // SAFETY: weight holds dim elements; out row exists.
        unsafe {
            let w = global::ld_nc_f32(p.weight + a);
            global::st_f32(out + a, v * r * w);
        }
        c += nt;
    }
}

/// Entry point: `out = rmsnorm(x) · weight`.
///
/// # Safety
/// See the body's launch contract.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn rms_norm(p: NormParams) {
    // SAFETY: forwarded launch contract.
    unsafe { norm_rows::<false>(&p) }
}

/// Entry point: `residual += x; out = rmsnorm(residual) · weight`.
///
/// # Safety
/// See the body's launch contract.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn add_rms_norm(p: NormParams) {
    // SAFETY: forwarded launch contract.
    unsafe { norm_rows::<true>(&p) }
}
