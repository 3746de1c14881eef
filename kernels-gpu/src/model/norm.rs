//! RMSNorm, alone (`rms_norm`) and fused with the residual add (`add_rms_norm`): one CTA per
//! row; each thread sums the squares of its strided elements in f32, the CTA reduces them
//! (warp shuffles, then one word per warp in shared memory), and a second pass over the row
//! (served from L1/L2) scales and writes it. `out = x · (1/√(mean(x²) + eps)) · w`, the CPU
//! twin's order of operations (`cpu::norm`, which reduces in f64). The `_f16`/`_bf16` entries
//! write the normalised row in 16 bits (rounded once): the input of a 16-bit matrix product;
//! the residual stream stays f32.
use super::out::{Out, F32};
use crate::abi::NormParams;
use crate::arch::{global, grid_dep, thread};
use crate::dtype::{Bf16, F16};
use crate::math::fast::{fma, sqrt};

/// The kernel body; `ADD`: `residual += x` first, normalising the sum; `O`: the output type.
///
/// # Safety
/// Grid `(rows)`, block a multiple of 32 (≤ 1024), `4 · block / 32` bytes of dynamic shared
/// memory; `x` (and `residual` when `ADD`) hold `rows · dim` f32, `out` `rows · dim` elements
/// of `O`, `weight` `dim` f32; `x` and `weight` are not written during the launch (validated
/// by the host).
#[inline(always)]
unsafe fn norm_rows<const ADD: bool, O: Out>(p: &NormParams) {
    let row = thread::block_idx_x();
    if row >= p.rows {
        return; // uniform per CTA: the barrier below is reached by all or none
    }
    let (tid, nt) = (thread::thread_idx_x(), thread::block_dim_x());
    let off = row as u64 * p.dim as u64 * 4;
    let (x, res) = (p.x + off, p.residual + off);
    let out_row = row as u64 * p.dim as u64;
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
        // SAFETY: weight holds dim elements; element c of the out row exists.
        unsafe {
            let w = global::ld_nc_f32(p.weight + a);
            O::store(p.out, out_row + c as u64, v * r * w);
        }
        c += nt;
    }
}

macro_rules! norm_entries {
    ($($name:ident => $add:literal, $o:ty, $what:literal;)*) => {$(
        #[doc = concat!("Entry point: ", $what, ", ", stringify!($o), " output.")]
        ///
        /// # Safety
        /// See the body's launch contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: NormParams) {
            grid_dep::enter();
            // SAFETY: forwarded launch contract.
            unsafe { norm_rows::<$add, $o>(&p) }
        }
    )*};
}

norm_entries! {
    rms_norm => false, F32, "`out = rmsnorm(x) · weight`";
    add_rms_norm => true, F32, "`residual += x; out = rmsnorm(residual) · weight`";
    rms_norm_f16 => false, F16, "`out = rmsnorm(x) · weight`";
    rms_norm_bf16 => false, Bf16, "`out = rmsnorm(x) · weight`";
    add_rms_norm_f16 => true, F16, "`residual += x; out = rmsnorm(residual) · weight`";
    add_rms_norm_bf16 => true, Bf16, "`residual += x; out = rmsnorm(residual) · weight`";
}
