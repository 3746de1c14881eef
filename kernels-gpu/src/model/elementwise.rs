//! Row copies and element-wise kernels: `gather_rows` (embedding lookup; `_f16`/`_bf16`: rows of
//! 16-bit tensors), `silu_and_mul` (SwiGLU's gate; `_f16`/`_bf16`: 16-bit output, a matrix
//! product's input) and `to_f32_*` (16-bit attention output → f32).
use super::out::{Out, F32};
use crate::abi::{ConvertParams, GatherParams, SiluMulParams};
use crate::arch::{global, grid_dep, thread};
use crate::dtype::{Bf16, Elem, F16};
use crate::math::fast::silu;

/// The gather body: `out[i, :] = table[ids[i], :]` in `O` (a bit copy), one CTA per gathered
/// row; an id `≥ table_rows` writes a NaN row instead of reading out of bounds.
///
/// # Safety
/// Grid `(n)`, block 1-D; `ids` holds `n` u32, `table` `table_rows · dim` elements of `O` (not
/// written during the launch), `out` `n · dim` (validated by the host).
#[inline(always)]
unsafe fn gather<O: Out>(p: &GatherParams) {
    let i = thread::block_idx_x();
    if i >= p.n {
        return;
    }
    // SAFETY: ids holds n entries.
    let id = unsafe { global::ld_u32(p.ids + i as u64 * 4) };
    let valid = id < p.table_rows;
    let src = id as u64 * p.dim as u64;
    let dst = i as u64 * p.dim as u64;
    let mut c = thread::thread_idx_x();
    while c < p.dim {
        let v = if valid {
            // SAFETY: id < table_rows and c < dim: inside the table.
            unsafe { O::load_bits(p.table, src + c as u64) }
        } else {
            O::nan_bits()
        };
        // SAFETY: row i < n of the output, c < dim.
        unsafe { O::store_bits(p.out, dst + c as u64, v) };
        c += thread::block_dim_x();
    }
}

/// The SwiGLU gate body: `out[r, c] = silu(x[r, c]) · x[r, dim + c]` in `O`, one thread per
/// output element.
///
/// # Safety
/// Grid covering `rows · dim` threads (1-D), `rows · dim` fits in u32; `x` holds `rows · 2·dim`
/// f32, `out` `rows · dim` elements of `O` (validated by the host).
#[inline(always)]
unsafe fn silu_mul<O: Out>(p: &SiluMulParams) {
    let e = thread::block_idx_x() * thread::block_dim_x() + thread::thread_idx_x();
    if p.dim == 0 || e >= p.rows * p.dim {
        return;
    }
    let r = e / p.dim;
    let c = e - r * p.dim;
    let g_at = p.x + (r as u64 * 2 * p.dim as u64 + c as u64) * 4;
    // SAFETY: r < rows, c < dim: the gate and up elements of row r exist.
    let (g, u) = unsafe {
        (
            global::ld_nc_f32(g_at),
            global::ld_nc_f32(g_at + p.dim as u64 * 4),
        )
    };
    // SAFETY: e < rows · dim.
    unsafe { O::store(p.out, e as u64, silu(g) * u) };
}

macro_rules! out_entries {
    ($($name:ident => $body:ident, $params:ty, $o:ty, $what:literal;)*) => {$(
        #[doc = concat!("Entry point: ", $what, ", ", stringify!($o), " elements.")]
        ///
        /// # Safety
        /// See the body's launch contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: $params) {
            grid_dep::enter();
            // SAFETY: forwarded launch contract.
            unsafe { $body::<$o>(&p) }
        }
    )*};
}

out_entries! {
    gather_rows => gather, GatherParams, F32, "row gather (embedding lookup)";
    gather_rows_f16 => gather, GatherParams, F16, "row gather";
    gather_rows_bf16 => gather, GatherParams, Bf16, "row gather";
    silu_and_mul => silu_mul, SiluMulParams, F32, "SiLU-and-mul";
    silu_and_mul_f16 => silu_mul, SiluMulParams, F16, "SiLU-and-mul";
    silu_and_mul_bf16 => silu_mul, SiluMulParams, Bf16, "SiLU-and-mul";
}

/// The conversion body: thread `t` widens elements `2t` and `2t + 1` (one 4-byte load; a 2-byte
/// load for the last element of an odd `n`).
///
/// # Safety
/// Grid covering `ceil(n/2)` threads (1-D); `x` holds `n` 16-bit elements and is 4-byte aligned,
/// `out` holds `n` f32 (validated by the host).
#[inline(always)]
unsafe fn to_f32<E: Elem>(p: &ConvertParams) {
    let t =
        thread::block_idx_x() as u64 * thread::block_dim_x() as u64 + thread::thread_idx_x() as u64;
    let e = 2 * t;
    let n = p.n as u64;
    if e >= n {
        return;
    }
    let out = p.out + e * 4;
    if e + 1 < n {
        // SAFETY: elements e, e+1 < n; e even and x 4-byte aligned.
        let (a, b) = E::unpack2(unsafe { global::ld_u32(p.x + e * 2) });
        // SAFETY: as above.
        unsafe {
            global::st_f32(out, a);
            global::st_f32(out + 4, b);
        }
    } else {
        // SAFETY: element e < n.
        let (a, _) = E::unpack2(unsafe { global::ld_u16(p.x + e * 2) } as u32);
        // SAFETY: as above.
        unsafe { global::st_f32(out, a) };
    }
}

macro_rules! convert_entries {
    ($($name:ident => $e:ty;)*) => {$(
        #[doc = concat!("Entry point: ", stringify!($e), " → f32.")]
        ///
        /// # Safety
        /// See the body's launch contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: ConvertParams) {
            grid_dep::enter();
            // SAFETY: forwarded launch contract.
            unsafe { to_f32::<$e>(&p) }
        }
    )*};
}

convert_entries! {
    to_f32_f16 => F16;
    to_f32_bf16 => Bf16;
}
