//! The fused QKV epilogue: the f32 output of the QKV projection, one row per token (q heads,
//! then k heads, then v heads), split into 16-bit q, k and v with RoPE applied to q and k.
//! One CTA per token; thread `t` handles element pair `t` of the row (pair `j` of head `h`):
//! a rotated pair `j < rotary_pairs` of a q or k head is `(2j, 2j+1)` (interleaved) or
//! `(j, j + rotary_pairs)` (half), every other pair `(2j, 2j+1)` is copied. The angle is
//! `position · inv_freq[j]` in f32, as the CPU twin (`cpu::rope::apply_rope`) computes it, with
//! the range-reduced `math::trig::sincos` (angles reach the position itself).
//!
//! Two destinations for k and v ([`KvOut`]): contiguous `[n, kv_heads, head_dim]` buffers
//! (`qkv_rope_*`), or the token's slot in a paged KV pool (`qkv_rope_append_*`: RoPE fused
//! into the KV append, the same bits the append kernel would copy there).
use core::num::NonZeroU32;

use crate::abi::{RopeAppendParams, RopeParams, ROPE_HALF};
use crate::arch::{global, grid_dep, thread};
use crate::dtype::{Bf16, Elem, F16};
use crate::math::layout::{page_and_entry, PageStrides};
use crate::math::trig::sincos;

/// Where one token's k and v heads are written.
trait KvOut {
    /// Byte address of element 0 of kv head `h` of the token's k (`v` false) or v.
    fn head(&self, v: bool, h: u32) -> u64;
}

/// Contiguous k and v buffers, at the token's row.
struct RowsOut {
    k: u64,
    v: u64,
    /// Bytes per head.
    head_bytes: u64,
}

impl KvOut for RowsOut {
    #[inline(always)]
    fn head(&self, v: bool, h: u32) -> u64 {
        (if v { self.v } else { self.k }) + h as u64 * self.head_bytes
    }
}

/// The token's entry of its page in a paged pool.
struct SlotOut {
    k_pool: u64,
    v_pool: u64,
    strides: PageStrides,
    page: u32,
    entry: u32,
}

impl KvOut for SlotOut {
    #[inline(always)]
    fn head(&self, v: bool, h: u32) -> u64 {
        let base = if v { self.v_pool } else { self.k_pool };
        base + self.strides.offset(self.page, self.entry, h) * 2
    }
}

/// The kernel body for token `i < n` (`head_dim ≥ 2`), k and v heads to `out`.
///
/// # Safety
/// Block 1-D; `qkv` holds `n` rows of `(num_q_heads + 2·num_kv_heads)·head_dim` f32,
/// `positions` `n` i32, `inv_freq` `rotary_pairs` f32 (`1 ≤ rotary_pairs ≤ head_dim/2`,
/// `head_dim` even), `q` `n·num_q_heads·head_dim` elements, and `out` addresses
/// `num_kv_heads` heads of `head_dim` elements, 4-byte aligned; the inputs are not written
/// during the launch (validated by the host).
#[inline(always)]
unsafe fn qkv_rope<E: Elem, O: KvOut>(p: &RopeParams, i: u32, out: O) {
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
        let dst = if h < hq {
            p.q + (i as u64 * hq as u64 + h as u64) * d as u64 * 2
        } else if h < hq + hk {
            out.head(false, h - hq)
        } else {
            out.head(true, h - hq - hk)
        };
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

/// `qkv_rope_*`: k and v to contiguous `[n, num_kv_heads, head_dim]` buffers.
///
/// # Safety
/// Grid `(n)`; the body's contract, `k` and `v` holding `n·num_kv_heads·head_dim` elements.
#[inline(always)]
unsafe fn qkv_rope_rows<E: Elem>(p: &RopeParams) {
    let i = thread::block_idx_x();
    // head_dim ≥ 2 (host contract); the test also keeps the pair division panic-free.
    if i >= p.n || p.head_dim < 2 {
        return;
    }
    let row = i as u64 * p.num_kv_heads as u64;
    let head_bytes = p.head_dim as u64 * 2;
    let out = RowsOut {
        k: p.k + row * head_bytes,
        v: p.v + row * head_bytes,
        head_bytes,
    };
    // SAFETY: forwarded contract; `out` addresses token i's rows of k and v.
    unsafe { qkv_rope::<E, _>(p, i, out) }
}

/// `qkv_rope_append_*`: k and v into token `i`'s entry of its page.
///
/// # Safety
/// Grid `(n)`; the body's contract; host-validated append metadata (every batch index,
/// cache position and page id in range for the pool and its page tables, `n` entries);
/// pools of the pool layout's extent.
#[inline(always)]
unsafe fn qkv_rope_append<E: Elem>(p: &RopeAppendParams) {
    let r = &p.rope;
    let i = thread::block_idx_x();
    if i >= r.n || r.head_dim < 2 {
        return;
    }
    let page_size = NonZeroU32::new(p.pool.page_size).unwrap_or(NonZeroU32::MIN);
    // SAFETY: i < n entries of validated metadata.
    let (page, entry) = unsafe {
        let b = global::ld_u32(p.batch_indices + i as u64 * 4);
        let pos = global::ld_u32(p.cache_positions + i as u64 * 4);
        let (slot, entry) = page_and_entry(pos, page_size);
        let first = global::ld_u32(p.kv_indptr + b as u64 * 4);
        (
            global::ld_u32(p.kv_indices + (first + slot) as u64 * 4),
            entry,
        )
    };
    let out = SlotOut {
        k_pool: p.k_pool,
        v_pool: p.v_pool,
        strides: p.pool,
        page,
        entry,
    };
    // SAFETY: forwarded contract; `out` addresses the token's validated slot (offsets are
    // multiples of the even head_dim, so 4-byte aligned in 16-bit pools).
    unsafe { qkv_rope::<E, _>(r, i, out) }
}

macro_rules! rope_entries {
    ($($name:ident, $append:ident => $e:ty;)*) => {$(
        #[doc = concat!("Entry point: QKV split + RoPE, ", stringify!($e), " outputs.")]
        ///
        /// # Safety
        /// See [`qkv_rope_rows`].
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: RopeParams) {
            grid_dep::enter();
            // SAFETY: forwarded launch contract.
            unsafe { qkv_rope_rows::<$e>(&p) }
        }

        #[doc = concat!("Entry point: QKV split + RoPE with k and v appended to a paged pool, ", stringify!($e), ".")]
        ///
        /// # Safety
        /// See [`qkv_rope_append`].
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $append(p: RopeAppendParams) {
            grid_dep::enter();
            // SAFETY: forwarded launch contract.
            unsafe { qkv_rope_append::<$e>(&p) }
        }
    )*};
}

rope_entries! {
    qkv_rope_f16, qkv_rope_append_f16 => F16;
    qkv_rope_bf16, qkv_rope_append_bf16 => Bf16;
}
