//! `gemv_{f16,bf16}`: the matrix products of a decode step, `out[r, c] = Σ_k x[r, k] · w[c, k]`
//! for the few rows `r` of a decode step (one token per request) — the shape where a general GEMM library
//! spends most of its time in set-up, not on the bytes (cuBLAS 4.6–6.2 µs for SmolLM2's
//! 0.7–3.5 MB projections on an H100, perf-notes). 16-bit `x` and `w`, f32 products and sums,
//! f32 `out`: the same arithmetic as the f32-accumulating GEMM it replaces, in another order.
//!
//! One warp per output column `c`: lane `l` reads 16-byte vectors `l, l + 32, ...` of `w`'s row
//! `c` (read-only, non-coherent path: the weights are read once per step) with
//! [`UNROLL`] loads in flight, multiplies each with the same vector of every `x` row (`x` is
//! small and shared by every warp: it stays in L1/L2), and the warp sums its lanes. Every
//! column is independent, so the grid is `ceil(n / warps_per_cta)` CTAs, times one for each
//! group of [`GEMV_GROUP_ROWS`] rows (grid y): every group repeats the weight reads (from L2
//! after the first) and the same per-row arithmetic, so a row's result is the same bits
//! whatever the other rows and their number.
use crate::abi::{GemvParams, GEMV_GROUP_ROWS};
use crate::arch::{global, grid_dep, thread, warp};
use crate::dtype::{Bf16, Elem, F16};
use crate::math::fast::{fma, silu};

/// 16-byte vectors of `w` a lane has in flight per step of its loop (the `step!` calls below
/// must match).
const UNROLL: u32 = 4;

/// Σ over the 8 elements of two 16-byte vectors of `E`, products in f32, added to `acc` in
/// element order.
#[inline(always)]
fn dot8<E: Elem>(a: [u32; 4], b: [u32; 4], mut acc: f32) -> f32 {
    for i in 0..4 {
        let (a0, a1) = E::unpack2(a[i]);
        let (b0, b1) = E::unpack2(b[i]);
        acc = fma(a0, b0, acc);
        acc = fma(a1, b1, acc);
    }
    acc
}

/// How a product reads vector `v` (8 elements, as 16-bit `E` packed in pairs) of input row `r`.
trait Input<E: Elem> {
    /// # Safety
    /// `r < m`, `v < k/8` of the launch's validated extents.
    unsafe fn load(p: &GemvParams, r: u32, v: u32) -> [u32; 4];
}

/// `x` is 16-bit `[m, k]`.
struct Plain;

impl<E: Elem> Input<E> for Plain {
    #[inline(always)]
    unsafe fn load(p: &GemvParams, r: u32, v: u32) -> [u32; 4] {
        let at = p.x + (r as u64 * p.k as u64 + v as u64 * 8) * 2;
        // SAFETY: r < m, v < k/8: a whole 16-byte vector inside x.
        unsafe { global::ld_nc_u32x4(at) }
    }
}

/// `x` is f32 `[m, 2k]` (gate | up); the input is `round_E(silu(gate) · up)`.
struct SiluGated;

impl<E: Elem> Input<E> for SiluGated {
    #[inline(always)]
    unsafe fn load(p: &GemvParams, r: u32, v: u32) -> [u32; 4] {
        let g_at = p.x + (r as u64 * 2 * p.k as u64 + v as u64 * 8) * 4;
        let u_at = g_at + p.k as u64 * 4;
        // SAFETY: r < m, v < k/8: 8 gate and 8 up f32 of row r, 16-byte aligned (k a multiple
        // of 8 and x 16-byte aligned).
        let (g0, g1, u0, u1) = unsafe {
            (
                global::ld_nc_u32x4(g_at),
                global::ld_nc_u32x4(g_at + 16),
                global::ld_nc_u32x4(u_at),
                global::ld_nc_u32x4(u_at + 16),
            )
        };
        // Constant indices only (a loop over a computed index put the arrays in local memory).
        let a = |g: u32, u: u32| silu(f32::from_bits(g)) * f32::from_bits(u);
        [
            E::pack2(a(g0[0], u0[0]), a(g0[1], u0[1])),
            E::pack2(a(g0[2], u0[2]), a(g0[3], u0[3])),
            E::pack2(a(g1[0], u1[0]), a(g1[1], u1[1])),
            E::pack2(a(g1[2], u1[2]), a(g1[3], u1[3])),
        ]
    }
}

/// The [`UNROLL`] 16-byte vectors `v0, v0 + 32, ...` of `w`'s row at `w_row` that exist
/// (`< vecs`); zeros for the others.
///
/// # Safety
/// `w_row` is a row of `vecs` 16-byte vectors inside `w`.
#[inline(always)]
unsafe fn load_w(w_row: u64, v0: u32, vecs: u32) -> [[u32; 4]; UNROLL as usize] {
    let mut wv = [[0u32; 4]; UNROLL as usize];
    for u in 0..UNROLL {
        let v = v0 + u * 32;
        if v < vecs {
            // SAFETY: v < vecs: a whole vector of the row.
            wv[u as usize] = unsafe { global::ld_nc_u32x4(w_row + v as u64 * 16) };
        }
    }
    wv
}

/// The kernel body.
///
/// The first [`UNROLL`] weight vectors of each lane are loaded before
/// [`grid_dep::wait_prior_grids`]: no kernel of a step writes the weights, so under a
/// programmatic launch those loads overlap the previous kernel (the norm or product that writes
/// `x`), and only the reads of `x` and the store wait for it.
///
/// # Safety
/// Block `(32·w)` (whole warps), grid `(x, y)` with `x` covering `n` warps and `y =
/// ceil(m / GEMV_GROUP_ROWS)`; `m ≥ 1`; `k` a multiple of 8; `x` holds `m` rows of `I`'s input (`m·k` elements of `E`, or `m·2k` f32)
/// and `w` `n·k` elements of `E`, both 16-byte aligned; `out` holds `m·n` f32 and overlaps
/// neither (validated by the host); `w` is not written by the kernels before it on the stream.
#[inline(always)]
unsafe fn gemv<E: Elem, I: Input<E>>(p: &GemvParams) {
    let lane = thread::thread_idx_x() % 32;
    let warps = thread::block_dim_x() / 32;
    let c = thread::block_idx_x() * warps + thread::thread_idx_x() / 32;
    // A warp past the last column loads nothing but still waits (see `grid_dep::enter`).
    let vecs = if c < p.n { p.k / 8 } else { 0 };
    let w_row = p.w + c as u64 * p.k as u64 * 2;
    let mut v0 = lane;
    // SAFETY: c < n when vecs > 0: w's row c.
    let mut wv = unsafe { load_w(w_row, v0, vecs) };
    grid_dep::enter();
    if c >= p.n {
        return;
    }
    // This CTA's row group: rows r0 .. r0 + m.
    let r0 = thread::block_idx_y() * GEMV_GROUP_ROWS as u32;
    if r0 >= p.m {
        return;
    }
    let left = p.m - r0;
    let m = if left > GEMV_GROUP_ROWS as u32 {
        GEMV_GROUP_ROWS as u32
    } else {
        left
    };
    let mut acc = [0.0f32; GEMV_GROUP_ROWS];
    while v0 < vecs {
        // One step per loaded vector, written out so `wv` is indexed by constants (a loop
        // over `u` that LLVM left rolled put `wv` in local memory in the SiLU form).
        macro_rules! step {
            ($u:literal) => {
                let v = v0 + $u * 32;
                if v < vecs {
                    for r in 0..GEMV_GROUP_ROWS {
                        if (r as u32) < m {
                            // SAFETY: r0 + r < p.m, v < k/8.
                            let xv = unsafe { I::load(p, r0 + r as u32, v) };
                            acc[r] = dot8::<E>(wv[$u], xv, acc[r]);
                        }
                    }
                }
            };
        }
        step!(0);
        step!(1);
        step!(2);
        step!(3);
        v0 += UNROLL * 32;
        if v0 < vecs {
            // SAFETY: w's row c (c < n).
            wv = unsafe { load_w(w_row, v0, vecs) };
        }
    }
    for r in 0..GEMV_GROUP_ROWS {
        if (r as u32) < m {
            let s = warp::group_sum_f32(acc[r], 32);
            if lane == 0 {
                let row = (r0 + r as u32) as u64;
                // SAFETY: row < p.m, c < n: inside out.
                unsafe { global::st_f32(p.out + (row * p.n as u64 + c as u64) * 4, s) };
            }
        }
    }
}

macro_rules! gemv_entries {
    ($($name:ident => $e:ty, $input:ty, $what:literal;)*) => {$(
        #[doc = concat!("Entry point: few-row product, ", $what, ", ", stringify!($e), " weights, f32 out.")]
        ///
        /// # Safety
        /// See the body's launch contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: GemvParams) {
            // SAFETY: forwarded launch contract.
            unsafe { gemv::<$e, $input>(&p) }
        }
    )*};
}

gemv_entries! {
    gemv_f16 => F16, Plain, "16-bit input";
    gemv_bf16 => Bf16, Plain, "16-bit input";
    gemv_silu_f16 => F16, SiluGated, "SiLU-and-mul of an f32 gate|up input";
    gemv_silu_bf16 => Bf16, SiluGated, "SiLU-and-mul of an f32 gate|up input";
}
