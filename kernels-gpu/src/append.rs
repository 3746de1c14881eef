//! Paged-KV copies: `append_kv_b16` writes a ragged batch of new K/V rows into their pages,
//! `gather_kv_b16` copies one sequence's pages back out to contiguous rows, and
//! `append_fp8_*` quantises 16-bit rows into an fp8 pool as it writes them.
//!
//! Host twin: `host/src/kv/cache.rs`. The copy does not depend on the 16-bit element type, so
//! one instance serves f16 and bf16. Block `(head_dim/8, hy)`: lane x moves the 16-byte vector
//! `[8x, 8x+8)` of a head row, y walks heads; blocks grid-stride over rows, [`ROWS`] rows per
//! iteration so each thread has `2·ROWS` independent 16-byte loads in flight.
use core::num::NonZeroU32;

use crate::abi::{AppendFp8Params, AppendParams};
use crate::arch::{global, pipeline, shared, thread};
use crate::dtype::{Bf16, Elem, F16};
use crate::math::fp8::{quantize, E4m3, E5m2, Fp8Format};
use crate::math::layout::page_and_entry;

/// Rows per thread per iteration of the default instances (`append_kv_b16`, `gather_kv_b16`).
/// Measured on the H100 (prefill chunk 8 × 2048, D = 128, 8 heads): 1 row 52.4 µs, 2 rows
/// 53.1 µs, 4 rows 59.3 µs, 8 rows 75.0 µs — residency (26 registers → 2048 threads/SM) beats
/// per-thread depth. The other depths stay as tuning variants (`append_kv_b16_r{2,4,8}`).
const ROWS: usize = 1;

/// Read-only metadata load (`ld.global.nc`): the index arrays are never written by the kernel.
#[inline(always)]
unsafe fn ld_i32(base: u64, i: u32) -> u32 {
    // SAFETY: caller guarantees `i` indexes the array.
    unsafe { global::ld_nc_f32(base + (i as u64) * 4) }.to_bits()
}

/// Where the `ROWS` rows of one iteration live in the pool: page id and entry per row (8 bytes
/// of state per row, so prefetching the next iteration's costs few registers).
#[derive(Clone, Copy)]
struct RowPages<const R: usize> {
    page: [u32; R],
    entry: [u32; R],
    valid: [bool; R],
}

/// Resolves rows `n0 + r·stride` (r < ROWS): metadata loads only.
///
/// # Safety
/// Host-validated metadata (see [`copy_rows`]).
#[inline(always)]
unsafe fn resolve<const APPEND: bool, const R: usize>(
    p: &AppendParams,
    n0: u32,
    stride: u32,
    page_size: NonZeroU32,
) -> RowPages<R> {
    let mut o = RowPages {
        page: [0; R],
        entry: [0; R],
        valid: [false; R],
    };
    for r in 0..R {
        let n = n0 + (r as u32) * stride;
        o.valid[r] = n < p.nnz;
        if o.valid[r] {
            // SAFETY: n < nnz; the host validated indices/positions/page ids.
            let (b, pos) = unsafe {
                if APPEND {
                    (ld_i32(p.batch_indices, n), ld_i32(p.positions, n))
                } else {
                    (p.seq, n)
                }
            };
            let (slot, entry) = page_and_entry(pos, page_size);
            // SAFETY: as above.
            o.page[r] = unsafe { ld_i32(p.kv_indices, ld_i32(p.kv_indptr, b) + slot) };
            o.entry[r] = entry;
        }
    }
    o
}

/// # Safety
/// Block `(head_dim/8, hy)`, any grid; host-validated metadata: every batch index, position
/// and page id in range, pools sized for the page count, 16-byte aligned rows.
///
/// Software-pipelined: the page lookups of the next iteration (two dependent index loads per
/// row) are resolved while this iteration's data loads are in flight.
#[inline(always)]
unsafe fn copy_rows<const APPEND: bool, const R: usize, const STREAM: bool>(p: &AppendParams) {
    let x = thread::thread_idx_x();
    let hy = thread::block_dim_y();
    let vec_off = (x * 8) as u64;
    let page_size = NonZeroU32::new(p.pool.page_size).unwrap_or(NonZeroU32::MIN);
    let stride = thread::grid_dim_x();
    let step = stride * R as u32;
    let mut h = thread::thread_idx_y();
    while h < p.num_heads {
        let k_head = (h * p.k_rows_stride_h) as u64 + vec_off;
        let v_head = (h * p.v_rows_stride_h) as u64 + vec_off;
        let mut n0 = thread::block_idx_x();
        // SAFETY: forwarded contract.
        let mut next = unsafe { resolve::<APPEND, R>(p, n0, stride, page_size) };
        while n0 < p.nnz {
            let cur = next;
            let mut kd = [[0u32; 4]; R];
            let mut vd = [[0u32; 4]; R];
            for r in 0..R {
                if cur.valid[r] {
                    let n = (n0 + r as u32 * stride) as u64;
                    let pool = p.pool.offset(cur.page[r], cur.entry[r], h) + vec_off;
                    // SAFETY: offsets from validated metadata; 16-byte aligned.
                    unsafe {
                        if APPEND {
                            kd[r] = global::ld_nc_u32x4(
                                p.k_rows + (n * p.k_rows_stride_n as u64 + k_head) * 2,
                            );
                            vd[r] = global::ld_nc_u32x4(
                                p.v_rows + (n * p.v_rows_stride_n as u64 + v_head) * 2,
                            );
                        } else {
                            kd[r] = global::ld_u32x4(p.k_pool + pool * 2);
                            vd[r] = global::ld_u32x4(p.v_pool + pool * 2);
                        }
                    }
                }
            }
            // SAFETY: forwarded contract (rows past nnz resolve to invalid).
            next = unsafe { resolve::<APPEND, R>(p, n0 + step, stride, page_size) };
            for r in 0..R {
                if cur.valid[r] {
                    let n = (n0 + r as u32 * stride) as u64;
                    let pool = p.pool.offset(cur.page[r], cur.entry[r], h) + vec_off;
                    // SAFETY: as above.
                    unsafe {
                        if APPEND && STREAM {
                            global::st_cs_u32x4(p.k_pool + pool * 2, kd[r]);
                            global::st_cs_u32x4(p.v_pool + pool * 2, vd[r]);
                        } else if APPEND {
                            global::st_u32x4(p.k_pool + pool * 2, kd[r]);
                            global::st_u32x4(p.v_pool + pool * 2, vd[r]);
                        } else {
                            global::st_u32x4(
                                p.k_rows + (n * p.k_rows_stride_n as u64 + k_head) * 2,
                                kd[r],
                            );
                            global::st_u32x4(
                                p.v_rows + (n * p.v_rows_stride_n as u64 + v_head) * 2,
                                vd[r],
                            );
                        }
                    }
                }
            }
            n0 += step;
        }
        h += hy;
    }
}

/// Append through shared memory: each thread `cp.async`-copies its `R` rows of K and V into a
/// private double buffer, so the loads in flight hold no registers; the next iteration's copies
/// are issued before this iteration's rows are stored. Dynamic smem: `2 × R × 32` bytes per
/// thread.
///
/// # Safety
/// As [`copy_rows`] (append direction), plus dynamic shared memory of
/// `2 · R · 32 · blockDim.x · blockDim.y` bytes.
#[inline(always)]
unsafe fn append_rows_async<const R: usize>(p: &AppendParams) {
    let x = thread::thread_idx_x();
    let hy = thread::block_dim_y();
    let nthreads = thread::block_dim_x() * hy;
    let tid = thread::thread_idx_y() * thread::block_dim_x() + x;
    let vec_off = (x * 8) as u64;
    let page_size = NonZeroU32::new(p.pool.page_size).unwrap_or(NonZeroU32::MIN);
    let stride = thread::grid_dim_x();
    let step = stride * R as u32;
    let smem = shared::dyn_smem_base();
    // Staged vector (buffer, row, k|v) of this thread.
    let slot =
        |buf: u32, r: u32, kv: u32| smem + (((buf * R as u32 + r) * 2 + kv) * nthreads + tid) * 16;
    let mut h = thread::thread_idx_y();
    while h < p.num_heads {
        let k_head = (h * p.k_rows_stride_h) as u64 + vec_off;
        let v_head = (h * p.v_rows_stride_h) as u64 + vec_off;
        let issue = |pages: &RowPages<R>, n0: u32, buf: u32| {
            for r in 0..R {
                if pages.valid[r] {
                    let n = (n0 + r as u32 * stride) as u64;
                    // SAFETY: validated rows; staging slots inside the dynamic smem.
                    unsafe {
                        pipeline::cp_async_cg_16(
                            slot(buf, r as u32, 0),
                            p.k_rows + (n * p.k_rows_stride_n as u64 + k_head) * 2,
                            16,
                        );
                        pipeline::cp_async_cg_16(
                            slot(buf, r as u32, 1),
                            p.v_rows + (n * p.v_rows_stride_n as u64 + v_head) * 2,
                            16,
                        );
                    }
                }
            }
            pipeline::commit_group();
        };
        let mut n0 = thread::block_idx_x();
        // SAFETY: forwarded contract.
        let mut cur = unsafe { resolve::<true, R>(p, n0, stride, page_size) };
        issue(&cur, n0, 0);
        // SAFETY: as above.
        let mut nxt = unsafe { resolve::<true, R>(p, n0 + step, stride, page_size) };
        let mut buf = 0u32;
        while n0 < p.nnz {
            issue(&nxt, n0 + step, buf ^ 1);
            // SAFETY: as above (rows past nnz resolve to invalid).
            let after = unsafe { resolve::<true, R>(p, n0 + 2 * step, stride, page_size) };
            pipeline::wait_group::<1>();
            for r in 0..R {
                if cur.valid[r] {
                    let pool = p.pool.offset(cur.page[r], cur.entry[r], h) + vec_off;
                    // SAFETY: this thread's own completed copies; validated pool offsets.
                    unsafe {
                        global::st_u32x4(
                            p.k_pool + pool * 2,
                            shared::ld_u32x4(slot(buf, r as u32, 0)),
                        );
                        global::st_u32x4(
                            p.v_pool + pool * 2,
                            shared::ld_u32x4(slot(buf, r as u32, 1)),
                        );
                    }
                }
            }
            cur = nxt;
            nxt = after;
            n0 += step;
            buf ^= 1;
        }
        pipeline::wait_all();
        h += hy;
    }
}

/// Entry point: append through a shared-memory `cp.async` double buffer, 2 rows per thread
/// (tuning variant).
///
/// # Safety
/// See [`append_rows_async`].
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn append_kv_b16_async2(p: AppendParams) {
    crate::arch::grid_dep::enter();
    // SAFETY: forwarded launch contract.
    unsafe { append_rows_async::<2>(&p) }
}

/// Entry point: as `append_kv_b16_async2` with 4 rows per thread.
///
/// # Safety
/// See [`append_rows_async`].
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn append_kv_b16_async4(p: AppendParams) {
    crate::arch::grid_dep::enter();
    // SAFETY: forwarded launch contract.
    unsafe { append_rows_async::<4>(&p) }
}

/// Entry point: append ragged K/V rows (16-bit elements) into their pages.
///
/// # Safety
/// See the body's launch contract.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn append_kv_b16(p: AppendParams) {
    crate::arch::grid_dep::enter();
    // SAFETY: forwarded launch contract.
    unsafe { copy_rows::<true, ROWS, false>(&p) }
}

/// Entry point: gather one sequence's K/V pages (16-bit elements) into contiguous rows.
///
/// # Safety
/// See the body's launch contract.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn gather_kv_b16(p: AppendParams) {
    crate::arch::grid_dep::enter();
    // SAFETY: forwarded launch contract.
    unsafe { copy_rows::<false, ROWS, false>(&p) }
}

macro_rules! append_variants {
    ($($name:ident => $rows:literal, $stream:literal;)*) => {$(
        #[doc = concat!("Entry point: append, ", $rows, " rows per thread per iteration, streaming stores: ", $stream, " (tuning variant, see `ROWS`).")]
        ///
        /// # Safety
        /// See the body's launch contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: AppendParams) {
            crate::arch::grid_dep::enter();
            // SAFETY: forwarded launch contract.
            unsafe { copy_rows::<true, $rows, $stream>(&p) }
        }
    )*};
}

append_variants! {
    append_kv_b16_cs => 1, true;
    append_kv_b16_r2 => 2, false;
    append_kv_b16_r4 => 4, false;
    append_kv_b16_r8 => 8, false;
}

/// Eight 16-bit values (one 16-byte row vector) quantised with `scale` into eight fp8 codes
/// (8 bytes, the first value in the lowest byte).
#[inline(always)]
fn quantize8<E: Elem, F: Fp8Format>(raw: [u32; 4], scale: f32) -> [u32; 2] {
    let mut out = [0u32; 2];
    for (j, &w) in raw.iter().enumerate() {
        let (lo, hi) = E::unpack2(w);
        let pair = quantize::<F>(lo, scale) as u32 | (quantize::<F>(hi, scale) as u32) << 8;
        out[j / 2] |= pair << (16 * (j % 2));
    }
    out
}

/// The quantising append: as [`copy_rows`]'s append direction with one row per thread per
/// iteration (the measured default), each lane reading 16 bytes (8 elements) of a row and
/// storing their 8 codes. The pool's offsets are in elements, which for fp8 are bytes.
///
/// # Safety
/// As [`copy_rows`], with `p.base.k_pool`/`v_pool` fp8 pools (8-byte aligned head rows: head
/// dims are multiples of 8).
#[inline(always)]
unsafe fn quantize_rows<E: Elem, F: Fp8Format>(p: &AppendFp8Params) {
    let b = &p.base;
    let x = thread::thread_idx_x();
    let hy = thread::block_dim_y();
    let vec_off = (x * 8) as u64;
    let page_size = NonZeroU32::new(b.pool.page_size).unwrap_or(NonZeroU32::MIN);
    let stride = thread::grid_dim_x();
    let mut h = thread::thread_idx_y();
    while h < b.num_heads {
        let k_head = (h * b.k_rows_stride_h) as u64 + vec_off;
        let v_head = (h * b.v_rows_stride_h) as u64 + vec_off;
        let mut n = thread::block_idx_x();
        while n < b.nnz {
            // SAFETY: forwarded contract (n < nnz resolves to a valid row).
            let at = unsafe { resolve::<true, 1>(b, n, stride, page_size) };
            let pool = b.pool.offset(at.page[0], at.entry[0], h) + vec_off;
            let row = n as u64;
            // SAFETY: offsets from validated metadata; 16-byte aligned rows, 8-byte aligned
            // pool vectors.
            unsafe {
                let kd =
                    global::ld_nc_u32x4(b.k_rows + (row * b.k_rows_stride_n as u64 + k_head) * 2);
                let vd =
                    global::ld_nc_u32x4(b.v_rows + (row * b.v_rows_stride_n as u64 + v_head) * 2);
                global::st_u32x2(b.k_pool + pool, quantize8::<E, F>(kd, p.k_scale));
                global::st_u32x2(b.v_pool + pool, quantize8::<E, F>(vd, p.v_scale));
            }
            n += stride;
        }
        h += hy;
    }
}

macro_rules! append_fp8_entries {
    ($($name:ident => $e:ty, $f:ty;)*) => {$(
        #[doc = concat!("Entry point: append ", stringify!($e), " rows into a ", stringify!($f), " pool, quantising with the scales.")]
        ///
        /// # Safety
        /// See [`quantize_rows`].
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(p: AppendFp8Params) {
            crate::arch::grid_dep::enter();
            // SAFETY: forwarded launch contract.
            unsafe { quantize_rows::<$e, $f>(&p) }
        }
    )*};
}

append_fp8_entries! {
    append_fp8_e4m3_f16 => F16, E4m3;
    append_fp8_e4m3_bf16 => Bf16, E4m3;
    append_fp8_e5m2_f16 => F16, E5m2;
    append_fp8_e5m2_bf16 => Bf16, E5m2;
}
