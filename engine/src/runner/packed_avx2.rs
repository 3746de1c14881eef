//! The packed mat-vec's inner loops with AVX2, FMA and F16C, in 16-bit integers: each
//! 32-element input block is rounded once per call to `i16` codes with its own scale
//! (`x ≈ dx·xq`, `|xq| ≤ 32767`: relative error at most 2⁻¹⁶ of the block's largest value,
//! [`Inputs`]), the weight codes are widened to `i16` in registers and `vpmaddwd` forms the
//! exact integer products and pair sums; the block's two scales are applied once to its
//! integer partial sum:
//!
//! - Q4_1 (`w = q·d + m`): `Σ w·x = d·dx·Σ q·xq + m·Σ x`, with the exact f32 `Σ x` per input
//!   block computed once per call and shared by every output feature;
//! - Q4_0 (`w = (q − 8)·d`): the same with `m = −8·d`;
//! - Q8_0 (`w = q·d`): `d·dx·Σ q·xq`.
//!
//! Against the f32 product of the dequantised weights this adds only the input rounding, far
//! below the 4–8-bit weights' own (`tests` in `packed.rs`). Each output element is computed by
//! the same instruction sequence whatever the number of input rows, so a sequence's results do
//! not depend on what else shares the step.
use std::arch::x86_64::*;

use crate::gguf::GgmlType;

/// Whether this CPU runs these loops.
pub(super) fn available() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
}

/// The inputs `x` (`[rows, k]`) prepared once per call: per 32-element block the `i16` codes,
/// their scale `dx` and the exact f32 sum `Σ x`.
pub(super) struct Inputs {
    xq: Vec<i16>,
    dx: Vec<f32>,
    sx: Vec<f32>,
}

impl Inputs {
    pub(super) fn new(x: &[f32], rows: usize, k: usize) -> Self {
        let nb = rows * k / 32;
        let (mut xq, mut dx, mut sx) = (
            vec![0i16; rows * k],
            Vec::with_capacity(nb),
            Vec::with_capacity(nb),
        );
        for (blk, q) in x[..rows * k].chunks_exact(32).zip(xq.chunks_exact_mut(32)) {
            // A fixed order (the same for every row count): 8 lanes, then pairwise.
            let mut a = [0f32; 8];
            let mut amax = 0f32;
            for (l, &v) in blk.iter().enumerate() {
                a[l % 8] += v;
                amax = amax.max(v.abs());
            }
            sx.push(hsum(a));
            let d = amax / 32767.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            for (o, &v) in q.iter_mut().zip(blk) {
                *o = (v * inv).round() as i16;
            }
            dx.push(d);
        }
        Inputs { xq, dx, sx }
    }

    /// Rows `[i0, i0 + rows)`.
    fn rows(&self, i0: usize, rows: usize, k: usize) -> (&[i16], &[f32], &[f32]) {
        let nb = k / 32;
        (
            &self.xq[i0 * k..(i0 + rows) * k],
            &self.dx[i0 * nb..(i0 + rows) * nb],
            &self.sx[i0 * nb..(i0 + rows) * nb],
        )
    }
}

/// The fixed pairwise order in which 8 lane sums are added.
#[inline(always)]
fn hsum(a: [f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// Output features `j0..j1` of input rows `[i0, i0 + rows)` (`rows ≤ 4`) into `out`
/// (`[rows, j1 − j0]`).
///
/// # Safety
/// [`available`] is true; `data` holds whole rows of `row_bytes` bytes of `ty` blocks for
/// features `< j1`, `x` holds at least `i0 + rows` rows of `k = 32 · row_bytes / block bytes`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn features(
    ty: GgmlType,
    data: &[u8],
    row_bytes: usize,
    k: usize,
    x: &Inputs,
    (i0, rows): (usize, usize),
    js: (usize, usize),
    out: &mut [f32],
) {
    let (xq, dx, sx) = x.rows(i0, rows, k);
    let a = Args {
        data,
        row_bytes,
        k,
        xq,
        dx,
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
    xq: &'a [i16],
    dx: &'a [f32],
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
    /// The codes as `i16` (elements 0–15, 16–31), the scale `d` and the offset `m`
    /// (`w = q·d + m`).
    ///
    /// # Safety
    /// `BYTES` readable bytes at `blk`; AVX2 and F16C available.
    unsafe fn read(blk: *const u8) -> ([__m256i; 2], f32, f32);
}

struct Q4_1;
struct Q4_0;
struct Q8_0;

impl Block for Q4_1 {
    const BYTES: usize = 20;
    #[inline(always)]
    unsafe fn read(blk: *const u8) -> ([__m256i; 2], f32, f32) {
        // SAFETY: d, m, then 16 bytes of nibbles.
        unsafe { (q4_codes(blk.add(4)), half(blk), half(blk.add(2))) }
    }
}

impl Block for Q4_0 {
    const BYTES: usize = 18;
    #[inline(always)]
    unsafe fn read(blk: *const u8) -> ([__m256i; 2], f32, f32) {
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
    unsafe fn read(blk: *const u8) -> ([__m256i; 2], f32, f32) {
        // SAFETY: d, then 32 signed codes.
        unsafe { (q8_codes(blk.add(2)), half(blk), 0.0) }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run<F: Block, const R: usize>(a: &Args<'_>, out: &mut [f32]) {
    let (k, (j0, j1)) = (a.k, a.js);
    let nb = k / 32;
    let width = j1 - j0;
    assert!(a.row_bytes == nb * F::BYTES && a.data.len() >= j1 * a.row_bytes);
    assert!(a.xq.len() >= R * k && a.dx.len() >= R * nb && a.sx.len() >= R * nb);
    assert!(out.len() >= R * width);
    for j in j0..j1 {
        let row = &a.data[j * a.row_bytes..(j + 1) * a.row_bytes];
        let mut acc = [_mm256_setzero_ps(); R];
        let mut off = [0f32; R];
        for b in 0..nb {
            // SAFETY: block b lies inside the row (asserted: nb blocks of BYTES); the input
            // reads are block b of rows < R (lengths asserted above).
            unsafe {
                let (w, d, m) = F::read(row.as_ptr().add(b * F::BYTES));
                for r in 0..R {
                    let xp = a.xq.as_ptr().add(r * k + b * 32) as *const __m256i;
                    let p = _mm256_add_epi32(
                        _mm256_madd_epi16(w[0], _mm256_loadu_si256(xp)),
                        _mm256_madd_epi16(w[1], _mm256_loadu_si256(xp.add(1))),
                    );
                    let scale = _mm256_set1_ps(d * *a.dx.get_unchecked(r * nb + b));
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[r]);
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

/// The 32 4-bit codes at `q` (16 bytes: element `j` in the low nibble of byte `j`, element
/// `j + 16` in its high nibble) as `i16`, elements 0–15 then 16–31.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_codes(q: *const u8) -> [__m256i; 2] {
    // SAFETY: 16 readable bytes at q.
    let v = unsafe { _mm_loadu_si128(q as *const __m128i) };
    let mask = _mm_set1_epi8(0x0f);
    let lo = _mm_and_si128(v, mask);
    let hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
    [_mm256_cvtepu8_epi16(lo), _mm256_cvtepu8_epi16(hi)]
}

/// The 32 signed 8-bit codes at `q` as `i16`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_codes(q: *const u8) -> [__m256i; 2] {
    // SAFETY: 32 readable bytes at q.
    unsafe {
        let lo = _mm_loadu_si128(q as *const __m128i);
        let hi = _mm_loadu_si128(q.add(16) as *const __m128i);
        [_mm256_cvtepi8_epi16(lo), _mm256_cvtepi8_epi16(hi)]
    }
}
