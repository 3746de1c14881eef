//! The fused QKV epilogue: the f32 output of the QKV projection, one row per token (q heads,
//! then k heads, then v heads), split into 16-bit q, k and v with RoPE applied to q and k.
//! One CTA per token; thread `t` handles element pair `t` of the row (pair `j` of head `h`):
//! a rotated pair `j < rotary_pairs` of a q or k head is `(2j, 2j+1)` (interleaved) or
//! `(j, j + rotary_pairs)` (half), every other pair `(2j, 2j+1)` is copied. The angle is
//! `position · inv_freq[j]` in f32, as the CPU twin (`cpu::rope::apply_rope`) computes it, with
//! the range-reduced `math::trig::sincos` (angles reach the position itself).
use crate::abi::{RopeParams, ROPE_HALF};
use crate::arch::{global, grid_dep, thread};
use crate::dtype::{Bf16, Elem, F16};
use crate::math::trig::sincos;

/// The kernel body.
///
/// # Safety
/// Grid `(n)`, block 1-D; `qkv` holds `n` rows of `(num_q_heads + 2·num_kv_heads)·head_dim`
/// f32, `positions` `n` i32, `inv_freq` `rotary_pairs` f32 (`1 ≤ rotary_pairs ≤ head_dim/2`,
/// `head_dim` even), `q` `n·num_q_heads·head_dim` and `k`, `v` `n·num_kv_heads·head_dim`
/// elements; the inputs are not written during the launch (validated by the host).
#[inline(always)]
unsafe fn qkv_rope<E: Elem>(p: &RopeParams) {
    let i = thread::block_idx_x();
    // head_dim ≥ 2 (host contract); the test also keeps the pair division below panic-free.
    if i >= p.n || p.head_dim < 2 {
        return;
    }
    // SAFETY: positions holds n entries.
    let pos = unsafe { global::ld_u32(p.positions + i as u64 * 4) } as i32;
    let pos = if pos < 0 { 0.0 } else { pos as f32 };
    let d = p.head_dim;
    let pairs = d / 2;
    let (hq, hk) = (p.num_q_heads, p.num_kv_heads);
    let heads = hq + 2 * hk;
    let row = p.qkv + i as u64 * heads as u64 * d as u64 * 4;
    let mut t = thread::thread_idx_x();
    while t < heads * pairs {
        let h = t / pairs;
        let j = t - h * pairs;
        let rotate = h < hq + hk && j < p.rotary_pairs;
        let (a, b) = if rotate && p.style == ROPE_HALF {
            (j, j + p.rotary_pairs)
        } else {
            (2 * j, 2 * j + 1)
        };
        let src = row + h as u64 * d as u64 * 4;
        // SAFETY: a, b < head_dim: elements of head h of token i's row.
        let (x0, x1) = unsafe {
            (
                global::ld_nc_f32(src + a as u64 * 4),
                global::ld_nc_f32(src + b as u64 * 4),
            )
        };
        let (y0, y1) = if rotate {
            // SAFETY: j < rotary_pairs.
            let f = unsafe { global::ld_nc_f32(p.inv_freq + j as u64 * 4) };
            let (s, c) = sincos(pos * f);
            (x0 * c - x1 * s, x1 * c + x0 * s)
        } else {
            (x0, x1)
        };
        let (base, head) = if h < hq {
            (p.q, i as u64 * hq as u64 + h as u64)
        } else if h < hq + hk {
            (p.k, i as u64 * hk as u64 + (h - hq) as u64)
        } else {
            (p.v, i as u64 * hk as u64 + (h - hq - hk) as u64)
        };
        let dst = base + head * d as u64 * 2;
        let packed = E::pack2(y0, y1);
        // SAFETY: a, b < head_dim of an existing output head; `2j` is even and head_dim is
        // even, so the packed store is 4-byte aligned.
        unsafe {
            if b == a + 1 {
                global::st_u32(dst + a as u64 * 2, packed);
            } else {
                global::st_u16(dst + a as u64 * 2, packed as u16);
                global::st_u16(dst + b as u64 * 2, (packed >> 16) as u16);
            }
        }
        t += thread::block_dim_x();
    }
}

macro_rules! rope_entries {
    ($($name:ident => $e:ty;)*) => {$(
        #[doc = concat!("Entry point: QKV split + RoPE, ", stringify!($e), " outputs.")]
        ///
        /// # Safety
        /// See the body's launch contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: RopeParams) {
            grid_dep::enter();
            // SAFETY: forwarded launch contract.
            unsafe { qkv_rope::<$e>(&p) }
        }
    )*};
}

rope_entries! {
    qkv_rope_f16 => F16;
    qkv_rope_bf16 => Bf16;
}
