//! Greedy sampling on the device: the index of each row's largest logit. One CTA of
//! [`ARGMAX_THREADS`] per row; each thread scans a strided slice keeping its first maximum,
//! then warps and the CTA combine `(value, index)` pairs, larger value first, smaller index on
//! ties — the CPU twin's rule (`cpu::sampling::argmax`). A row holding a NaN gives `u32::MAX`
//! (the CPU twin returns an error there).
use crate::abi::{ArgmaxParams, ARGMAX_THREADS};
use crate::arch::{global, grid_dep, shared, thread, warp};

/// "No element seen" (also the answer for a NaN row).
const NONE: u32 = u32::MAX;

/// Whether candidate `(v, i)` beats the current `(bv, bi)`.
#[inline(always)]
fn better(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    i != NONE && (bi == NONE || v > bv || (v == bv && i < bi))
}

/// Entry point.
///
/// # Safety
/// Grid `(rows)`, block [`ARGMAX_THREADS`], `12 · ARGMAX_THREADS / 32` bytes of dynamic shared
/// memory; `logits` holds `rows · vocab` f32 (not written during the launch), `out` `rows` u32,
/// `vocab < u32::MAX` (validated by the host).
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn argmax(p: ArgmaxParams) {
    grid_dep::enter();
    let row = thread::block_idx_x();
    if row >= p.rows {
        return; // uniform per CTA
    }
    let tid = thread::thread_idx_x();
    let base = p.logits + row as u64 * p.vocab as u64 * 4;
    let (mut bv, mut bi, mut nan) = (f32::NEG_INFINITY, NONE, false);
    let mut c = tid;
    while c < p.vocab {
        // SAFETY: c < vocab: an element of row `row`.
        let v = unsafe { global::ld_nc_f32(base + c as u64 * 4) };
        if v.is_nan() {
            nan = true;
        } else if bi == NONE || v > bv {
            // Strictly greater: this thread visits increasing indices, so the first is kept.
            bv = v;
            bi = c;
        }
        c += ARGMAX_THREADS;
    }
    let mut off = 16;
    while off > 0 {
        let v = warp::shfl_xor_f32(bv, off);
        let i = warp::shfl_xor_u32(bi, off);
        if better(v, i, bv, bi) {
            bv = v;
            bi = i;
        }
        off /= 2;
    }
    let nan = warp::any(nan);
    let smem = shared::dyn_smem_base();
    let warps = ARGMAX_THREADS / 32;
    let w = tid / 32;
    if tid % 32 == 0 {
        // SAFETY: w < warps: three words per warp inside the 12·warps bytes of shared memory.
        unsafe {
            shared::st_f32(smem + w * 4, bv);
            shared::st_u32(smem + (warps + w) * 4, bi);
            shared::st_u32(smem + (2 * warps + w) * 4, nan as u32);
        }
    }
    thread::sync_threads();
    if tid == 0 {
        let (mut bv, mut bi, mut nan) = (f32::NEG_INFINITY, NONE, false);
        for w in 0..warps {
            // SAFETY: as above, written before the barrier.
            let (v, i, n) = unsafe {
                (
                    shared::ld_f32(smem + w * 4),
                    shared::ld_u32(smem + (warps + w) * 4),
                    shared::ld_u32(smem + (2 * warps + w) * 4),
                )
            };
            nan |= n != 0;
            if better(v, i, bv, bi) {
                bv = v;
                bi = i;
            }
        }
        // SAFETY: out holds rows entries.
        unsafe { global::st_u32(p.out + row as u64 * 4, if nan { NONE } else { bi }) };
    }
}
