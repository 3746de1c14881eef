//! Row copies and element-wise kernels: `gather_rows` (embedding lookup), `silu_and_mul`
//! (SwiGLU's gate) and `to_f32_*` (16-bit attention output → f32).
use crate::abi::{ConvertParams, GatherParams, SiluMulParams};
use crate::arch::{global, thread};
use crate::dtype::{Bf16, Elem, F16};
use crate::math::fast::silu;

/// Entry point: `out[i, :] = table[ids[i], :]`, one CTA per gathered row; an id `≥ table_rows`
/// writes a NaN row instead of reading out of bounds.
///
/// # Safety
/// Grid `(n)`, block 1-D; `ids` holds `n` u32, `table` `table_rows · dim` f32 (not written during
/// the launch), `out` `n · dim` f32 (validated by the host).
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn gather_rows(p: GatherParams) {
    let i = thread::block_idx_x();
    if i >= p.n {
        return;
    }
    // SAFETY: ids holds n entries.
    let id = unsafe { global::ld_u32(p.ids + i as u64 * 4) };
    let valid = id < p.table_rows;
    let src = p.table + id as u64 * p.dim as u64 * 4;
    let dst = p.out + i as u64 * p.dim as u64 * 4;
    let mut c = thread::thread_idx_x();
    while c < p.dim {
        let v = if valid {
            // SAFETY: id < table_rows and c < dim: inside the table.
            unsafe { global::ld_nc_f32(src + c as u64 * 4) }
        } else {
            f32::NAN
        };
        // SAFETY: row i < n of the output, c < dim.
        unsafe { global::st_f32(dst + c as u64 * 4, v) };
        c += thread::block_dim_x();
    }
}

/// Entry point: `out[r, c] = silu(x[r, c]) · x[r, dim + c]`, one thread per output element.
///
/// # Safety
/// Grid covering `rows · dim` threads (1-D), `rows · dim` fits in u32; `x` holds `rows · 2·dim`
/// f32, `out` `rows · dim` (validated by the host).
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn silu_and_mul(p: SiluMulParams) {
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
    unsafe { global::st_f32(p.out + e as u64 * 4, silu(g) * u) };
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
            // SAFETY: forwarded launch contract.
            unsafe { to_f32::<$e>(&p) }
        }
    )*};
}

convert_entries! {
    to_f32_f16 => F16;
    to_f32_bf16 => Bf16;
}
