//! Attention-state merge: `(o, lse)` pairs computed over disjoint key sets combine into the
//! state over their union: with base-2 lse values, `lse = log2(2^lse_a + 2^lse_b)` and
//! `o = 2^(lse_a − lse)·o_a + 2^(lse_b − lse)·o_b` (`math::softmax::merge_weights`). The public `merge_state`/`merge_states` ops and the
//! split-KV merge of batch prefill run these kernels. Host twin: `host/src/ops/merge.rs`.
//!
//! One warp per (row, head); lane `l` owns elements `[l·V, l·V + V)` of the head (`V = D/32`).
//! Two passes over the row's lse values (the max, then the weights) and one over the values:
//! the lse reads are warp-broadcast loads, the value reads are coalesced across the warp.
use crate::abi::MergeParams;
use crate::arch::{global, thread, warp};
use crate::dtype::{Bf16, Elem, F16};
use crate::math::fast::{exp2, fmax, log2, rcp};

/// Storage type of the merged states' values.
trait StateIn {
    /// Bytes per element.
    const BYTES: u64;
    /// Loads `V` consecutive elements starting at `addr` as f32.
    ///
    /// # Safety
    /// `addr` must address `V` readable elements, aligned to 4 bytes (`V` even).
    unsafe fn load<const V: usize>(addr: u64) -> [f32; V];
}

/// f32 states (split-KV partial outputs).
struct F32In;

impl StateIn for F32In {
    const BYTES: u64 = 4;

    #[inline(always)]
    unsafe fn load<const V: usize>(addr: u64) -> [f32; V] {
        let mut x = [0.0f32; V];
        for (i, e) in x.iter_mut().enumerate() {
            // SAFETY: per the caller's contract.
            *e = f32::from_bits(unsafe { global::ld_u32(addr + 4 * i as u64) });
        }
        x
    }
}

/// 16-bit states of element type `E`.
struct HalfIn<E>(core::marker::PhantomData<E>);

impl<E: Elem> StateIn for HalfIn<E> {
    const BYTES: u64 = 2;

    #[inline(always)]
    unsafe fn load<const V: usize>(addr: u64) -> [f32; V] {
        let mut x = [0.0f32; V];
        let mut i = 0;
        while i < V {
            // SAFETY: per the caller's contract.
            let (a, b) = E::unpack2(unsafe { global::ld_u32(addr + 2 * i as u64) });
            x[i] = a;
            x[i + 1] = b;
            i += 2;
        }
        x
    }
}

/// The kernel body: `V = D / 32` elements per lane.
///
/// # Safety
/// Grid `(ceil(num_rows / 4), num_heads)`, block 128; every state, row-list entry and output
/// the parameters address exists (validated by the host).
#[inline(always)]
unsafe fn merge<I: StateIn, O: Elem, const V: usize>(p: &MergeParams) {
    let tid = thread::thread_idx_x();
    let lane = tid % 32;
    let row = thread::block_idx_x() * 4 + tid / 32;
    let h = thread::block_idx_y();
    let num_rows = if p.num_rows_dev != 0 {
        // SAFETY: host-provided u32 count.
        unsafe { global::ld_u32(p.num_rows_dev) }
    } else {
        p.num_rows
    };
    if row >= num_rows {
        return;
    }
    // (output row, element offset of state 0's value row, lse offset of state 0, count)
    let (out_row, v0, s0, n) = if p.rows != 0 {
        let at = p.rows + row as u64 * 12;
        // SAFETY: host-provided row list of num_rows triples.
        let (o, first, count) = unsafe {
            (
                global::ld_u32(at),
                global::ld_u32(at + 4),
                global::ld_u32(at + 8),
            )
        };
        (
            o,
            first as i64 * p.v_stride_state,
            first as i64 * p.s_stride_state,
            count,
        )
    } else {
        (
            row,
            row as i64 * p.v_stride_row,
            row as i64 * p.s_stride_row,
            p.num_states,
        )
    };
    let v_base = p.v as i64 + (v0 + (h * p.v_stride_h + lane * V as u32) as i64) * I::BYTES as i64;
    let s_base = p.s as i64 + (s0 + (h * p.s_stride_h) as i64) * 4;
    let s_at = |j: u32| (s_base + j as i64 * p.s_stride_state * 4) as u64;

    let mut m = f32::NEG_INFINITY;
    for j in 0..n {
        // SAFETY: state j's lse exists (host contract).
        m = fmax(m, f32::from_bits(unsafe { global::ld_u32(s_at(j)) }));
    }
    let mut acc = [0.0f32; V];
    let mut den = 0.0f32;
    if m != f32::NEG_INFINITY {
        for j in 0..n {
            // SAFETY: as above.
            let s = f32::from_bits(unsafe { global::ld_u32(s_at(j)) });
            let w = exp2(s - m);
            den += w;
            let addr = (v_base + j as i64 * p.v_stride_state * I::BYTES as i64) as u64;
            // SAFETY: state j's value row exists; V even and element offsets even → aligned.
            let x = unsafe { I::load::<V>(addr) };
            // Indexed, not `zip(x)`: a by-value array iterator lands in local memory.
            for i in 0..V {
                acc[i] += w * x[i];
            }
        }
    }
    // Every lane computed the same sum; the shuffle is also a warp barrier, so every lane's lse
    // reads happen before lane 0 stores the merged lse (in-place merges alias it).
    let den = warp::shfl_idx_f32(den, 0);
    // No state with a finite lse (every input covered no keys): o = 0, lse = −inf.
    let inv = if den > 0.0 { rcp(den) } else { 0.0 };
    let o_base = p.o + ((out_row * p.o_stride_row + h * p.o_stride_h + lane * V as u32) as u64) * 2;
    let mut i = 0;
    while i < V {
        // SAFETY: output row exists (host contract); 4-byte aligned.
        unsafe {
            global::st_u32(
                o_base + 2 * i as u64,
                O::pack2(acc[i] * inv, acc[i + 1] * inv),
            )
        };
        i += 2;
    }
    if p.lse != 0 && lane == 0 {
        let lse = if den > 0.0 {
            m + log2(den)
        } else {
            f32::NEG_INFINITY
        };
        // SAFETY: lse [rows, lse_stride_row] (host contract).
        unsafe { global::st_f32(p.lse + ((out_row * p.lse_stride_row + h) as u64) * 4, lse) };
    }
}

macro_rules! merge_entries {
    ($($name:ident => $i:ty, $o:ty, $v:literal;)*) => {$(
        #[doc = concat!("Entry point: state merge, ", stringify!($i), " states → ",
                        stringify!($o), ", ", $v, " elements per lane.")]
        ///
        /// # Safety
        /// See the generic body's launch contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: MergeParams) {
            crate::arch::grid_dep::enter();
            // SAFETY: forwarded launch contract.
            unsafe { merge::<$i, $o, $v>(&p) }
        }
    )*};
}

merge_entries! {
    merge_f16_d64 => HalfIn<F16>, F16, 2;
    merge_f16_d128 => HalfIn<F16>, F16, 4;
    merge_f16_d256 => HalfIn<F16>, F16, 8;
    merge_bf16_d64 => HalfIn<Bf16>, Bf16, 2;
    merge_bf16_d128 => HalfIn<Bf16>, Bf16, 4;
    merge_bf16_d256 => HalfIn<Bf16>, Bf16, 8;
    merge_f32_f16_d64 => F32In, F16, 2;
    merge_f32_f16_d128 => F32In, F16, 4;
    merge_f32_f16_d256 => F32In, F16, 8;
    merge_f32_bf16_d64 => F32In, Bf16, 2;
    merge_f32_bf16_d128 => F32In, Bf16, 4;
    merge_f32_bf16_d256 => F32In, Bf16, 8;
}
