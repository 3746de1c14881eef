//! The packed mat-vec's inner loops with AVX2, FMA and F16C: the 4-bit or 8-bit codes of a
//! block are widened to f32 in registers (never written out), multiplied into the input in f32,
//! and the block's scale is applied once to the block's partial sum:
//!
//! - Q4_1 (`w = q·d + m`): `Σ w·x = d·Σ q·x + m·Σ x`, with `Σ x` per input block computed
//!   once per call ([`block_sums`]) and shared by every output feature;
//! - Q4_0 (`w = (q − 8)·d`): the same with `m = −8·d`;
//! - Q8_0 (`w = q·d`): `d·Σ q·x`.
//!
//! The products `q·x` are exact in f32 fused multiply-adds against the same f32 inputs as the
//! dequantised path; only where the scale enters (once per block instead of once per weight)
//! and the summation order differ, so results agree with the dequantised product to f32
//! rounding (`tests` in `packed.rs`). Each output element is computed by the same instruction
//! sequence whatever the number of input rows, so a sequence's results do not depend on what
//! else shares the step.
use std::arch::x86_64::*;

use crate::gguf::GgmlType;

/// Whether this CPU runs these loops.
pub(super) fn available() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
}

/// `Σ x` over each 32-element block of each of the `rows` rows of `x` (`[rows, k]`):
/// `[rows, k/32]`.
pub(super) fn block_sums(x: &[f32], rows: usize, k: usize) -> Vec<f32> {
    let mut s = Vec::with_capacity(rows * k / 32);
    for r in 0..rows {
        for blk in x[r * k..(r + 1) * k].chunks_exact(32) {
            // A fixed order (the same for every row count): 4 lanes of 8, then pairwise.
            let mut a = [0f32; 8];
            for (l, &v) in blk.iter().enumerate() {
                a[l % 8] += v;
            }
            s.push(hsum(a));
        }
    }
    s
}

/// The fixed pairwise order in which 8 lane sums are added.
#[inline(always)]
fn hsum(a: [f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// Output features `j0..j1` of `rows ≤ 4` input rows into `out` (`[rows, j1 − j0]`).
///
/// # Safety
/// [`available`] is true; `data` holds whole rows of `row_bytes` bytes of `ty` blocks for
/// features `< j1`, `x` is `[rows, k]` with `k = 32 · row_bytes / block bytes`, `sx` its
/// [`block_sums`].
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn features(
    ty: GgmlType,
    data: &[u8],
    row_bytes: usize,
    k: usize,
    x: &[f32],
    sx: &[f32],
    rows: usize,
    js: (usize, usize),
    out: &mut [f32],
) {
    let a = Args {
        data,
        row_bytes,
        k,
        x,
        sx,
        js,
    };
    // SAFETY: forwarded contract; the format and row count pick the instance.
    unsafe {
        match ty {
            GgmlType::Q8_0 => by_rows::<Q8_0>(&a, rows, out),
            GgmlType::Q4_0 => by_rows::<Q4_0>(&a, rows, out),
            _ => by_rows::<Q4_1>(&a, rows, out),
        }
    }
}

/// The operands of one call.
struct Args<'a> {
    data: &'a [u8],
    row_bytes: usize,
    k: usize,
    x: &'a [f32],
    sx: &'a [f32],
    js: (usize, usize),
}

/// # Safety
/// As [`features`].
unsafe fn by_rows<F: Block>(a: &Args<'_>, rows: usize, out: &mut [f32]) {
    // SAFETY: forwarded contract.
    unsafe {
        match rows {
            1 => run::<F, 1>(a, out),
            2 => run::<F, 2>(a, out),
            3 => run::<F, 3>(a, out),
            _ => run::<F, 4>(a, out),
        }
    }
}

/// A 32-element block format: its bytes and how a block's codes, scale and offset are read.
trait Block {
    const BYTES: usize;
    /// The codes as f32 (element order), the scale `d` and the offset `m` (`w = q·d + m`).
    ///
    /// # Safety
    /// `BYTES` readable bytes at `blk`; AVX2 and F16C available.
    unsafe fn read(blk: *const u8) -> ([__m256; 4], f32, f32);
}

struct Q4_1;
struct Q4_0;
struct Q8_0;

impl Block for Q4_1 {
    const BYTES: usize = 20;
    #[inline(always)]
    unsafe fn read(blk: *const u8) -> ([__m256; 4], f32, f32) {
        // SAFETY: d, m, then 16 bytes of nibbles.
        unsafe { (q4_codes(blk.add(4)), half(blk), half(blk.add(2))) }
    }
}

impl Block for Q4_0 {
    const BYTES: usize = 18;
    #[inline(always)]
    unsafe fn read(blk: *const u8) -> ([__m256; 4], f32, f32) {
        // SAFETY: d, then 16 bytes of nibbles (codes biased by 8).
        unsafe {
            let d = half(blk);
            (q4_codes(blk.add(2)), d, -8.0 * d)
        }
    }
}

impl Block for Q8_0 {
    const BYTES: usize = 34;
    #[inline(always)]
    unsafe fn read(blk: *const u8) -> ([__m256; 4], f32, f32) {
        // SAFETY: d, then 32 signed codes.
        unsafe { (q8_codes(blk.add(2)), half(blk), 0.0) }
    }
}

/// How far ahead of the block being multiplied the weights are prefetched, in bytes. The
/// rows are read once per step, front to back; left to the hardware prefetcher, each block's
/// load waited on memory (~80 % of the loop's samples sat on it) and a token's 96 MB streamed
/// at 6–9 GB/s on the 2-vCPU development machine. A software prefetch 4 KB ahead (≈ 11 rows
/// of a 576-wide Q4_1 matrix) keeps enough lines in flight: per-token decode time 17.4–18.6
/// → 6.7–6.9 ms there (512 B: 12.5, 1 KB: 8.5, 2 KB: 7.2, 8 KB: 6.7 ms; docs/perf-notes.md,
/// 2026-12-08). A prefetch never faults, so running past the row's or the matrix's end is
/// harmless (the address is formed with `wrapping_add`, never dereferenced).
const PREFETCH: usize = 4096;

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run<F: Block, const R: usize>(a: &Args<'_>, out: &mut [f32]) {
    let (k, (j0, j1)) = (a.k, a.js);
    let nb = k / 32;
    let width = j1 - j0;
    assert!(a.row_bytes == nb * F::BYTES && a.data.len() >= j1 * a.row_bytes);
    assert!(a.x.len() >= R * k && a.sx.len() >= R * nb && out.len() >= R * width);
    for j in j0..j1 {
        let row = &a.data[j * a.row_bytes..(j + 1) * a.row_bytes];
        let mut acc = [_mm256_setzero_ps(); R];
        let mut off = [0f32; R];
        for b in 0..nb {
            // SAFETY: block b lies inside the row (asserted: nb blocks of BYTES); the x reads are
            // the 32 elements of block b of rows < R (length asserted above).
            unsafe {
                let pf = row.as_ptr().wrapping_add(b * F::BYTES + PREFETCH);
                _mm_prefetch::<_MM_HINT_T0>(pf as *const i8);
                let (w, d, m) = F::read(row.as_ptr().add(b * F::BYTES));
                let dv = _mm256_set1_ps(d);
                for r in 0..R {
                    let xp = a.x.as_ptr().add(r * k + b * 32);
                    let mut s = _mm256_mul_ps(w[0], _mm256_loadu_ps(xp));
                    s = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xp.add(8)), s);
                    s = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xp.add(16)), s);
                    s = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xp.add(24)), s);
                    acc[r] = _mm256_fmadd_ps(s, dv, acc[r]);
                    off[r] = m.mul_add(*a.sx.get_unchecked(r * nb + b), off[r]);
                }
            }
        }
        for r in 0..R {
            let mut lanes = [0f32; 8];
            // SAFETY: 8 floats into an 8-float array.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r]) };
            out[r * width + (j - j0)] = hsum(lanes) + off[r];
        }
    }
}

/// An f16 at `p` (little-endian) as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn half(p: *const u8) -> f32 {
    // SAFETY: two readable bytes at p.
    unsafe {
        let h = u16::from_le_bytes([*p, *p.add(1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
    }
}

/// Eight unsigned bytes (the low 8 of `b`) as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn u8x8_f32(b: __m128i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b))
}

/// The 32 4-bit codes at `q` (16 bytes: element `j` in the low nibble of byte `j`, element
/// `j + 16` in its high nibble) as f32, in element order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_codes(q: *const u8) -> [__m256; 4] {
    // SAFETY: 16 readable bytes at q.
    let v = unsafe { _mm_loadu_si128(q as *const __m128i) };
    let mask = _mm_set1_epi8(0x0f);
    let lo = _mm_and_si128(v, mask);
    let hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
    [
        u8x8_f32(lo),
        u8x8_f32(_mm_srli_si128(lo, 8)),
        u8x8_f32(hi),
        u8x8_f32(_mm_srli_si128(hi, 8)),
    ]
}

/// The 32 signed 8-bit codes at `q` as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_codes(q: *const u8) -> [__m256; 4] {
    let mut w = [_mm256_setzero_ps(); 4];
    for (i, wi) in w.iter_mut().enumerate() {
        // SAFETY: 32 readable bytes at q.
        let b = unsafe { _mm_loadl_epi64(q.add(8 * i) as *const __m128i) };
        *wi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
    }
    w
}
