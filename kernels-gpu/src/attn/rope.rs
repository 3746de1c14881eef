//! RoPE inside attention (FlashInfer's `pos_encoding_mode = ROPE_LLAMA`): K/V stay unrotated in
//! the cache and the kernels rotate q and every key row on the fly, after reading them and
//! before the logits, by `position · inv_freq[i]` (the same f32 angle as the model's `qkv_rope`
//! epilogue and the CPU twin; its sine and cosine by [`sincos_fast`], a range reduction and the
//! special-function unit, because every key row of every head is rotated again).
//!
//! A position encoding is a variant type ([`PosEnc`]) of the kernel bodies: [`NoRope`] compiles
//! to nothing, so the plain kernels are unchanged. [`LaneRope`] is the rotation of one lane's
//! `N` elements of a head row, always `N/2` lane-local pairs: interleaved pairs `(2i, 2i+1)`
//! are neighbours in the lane's contiguous vector; for `rotate_half` pairs `(i, i + R/2)` (`R`
//! the rotary dim) the lane loads its q and K vector as two halves, `N/2` elements from the
//! first half of the rotary part and their partners `R/2` further on ([`PosEnc::halves`]), so
//! no lane needs another's data. The dot product `q·k` does not care which elements a lane
//! holds as long as q and K agree; V and the output keep the contiguous layout. Pairs past `R`
//! get frequency 0, an identity rotation.
//!
//! The tensor-core prefill stages K tiles (and, at some tile shapes, Q) in shared memory for
//! `ldmatrix`: there [`rotate_rows`] rotates the staged rows in place between the copy's barrier
//! and the reads (the rotated rows are rounded to the 16-bit type once, as FlashInfer's
//! in-shared-memory rotation does); the RoPE prefill kernels stage Q there too, for the same
//! rotation.
use crate::abi::{RopeAttn, ROPE_HALF};
use crate::arch::{global, shared};
use crate::attn::swizzle::swz;
use crate::dtype::Elem;
use crate::math::trig::sincos_fast;

/// A position-encoding variant of an attention kernel whose lanes hold `N` elements of a head
/// row.
pub(crate) trait PosEnc<const N: usize>: Sized {
    /// Whether the variant rotates at all (a constant: the plain kernels test it at compile
    /// time).
    const ON: bool;

    /// The rotation of the lane whose (contiguous, V-layout) vector starts at element `e0` of
    /// the head row.
    ///
    /// # Safety
    /// `p` as the host validated it (its table holds `rotary_dim / 2` frequencies).
    unsafe fn new(p: &RopeAttn, e0: u32) -> Self;

    /// Where the lane's q and K vector come from: elements `[lo, lo + N/2)` then
    /// `[hi, hi + N/2)` of the head row (`(e0, e0 + N/2)` unless pairs are split across the
    /// vector).
    fn halves(&self, e0: u32) -> (u32, u32);

    /// Rotates the lane's vector `x` (loaded as [`Self::halves`] says) to position `pos`.
    fn rotate(&self, x: &mut [f32; N], pos: u32);
}

/// No position encoding.
pub(crate) struct NoRope;

impl<const N: usize> PosEnc<N> for NoRope {
    const ON: bool = false;

    #[inline(always)]
    unsafe fn new(_: &RopeAttn, _: u32) -> Self {
        NoRope
    }

    #[inline(always)]
    fn halves(&self, e0: u32) -> (u32, u32) {
        (e0, e0 + N as u32 / 2)
    }

    #[inline(always)]
    fn rotate(&self, _: &mut [f32; N], _: u32) {}
}

/// Llama RoPE of one lane's `N` elements (`N` even): `N/2` pairs, pair `k` at vector positions
/// `(k, k + N/2)` (`rotate_half`) or `(2k, 2k + 1)` (interleaved).
pub(crate) struct LaneRope<const N: usize> {
    /// Per pair `k < N/2`: the inverse frequency (0: not rotated); the rest unused.
    freq: [f32; N],
    half: bool,
    /// Element offsets of the vector's two halves in the head row.
    lo: u32,
    hi: u32,
}

impl<const N: usize> PosEnc<N> for LaneRope<N> {
    const ON: bool = true;

    #[inline(always)]
    unsafe fn new(p: &RopeAttn, e0: u32) -> Self {
        let (r, n2) = (p.rotary_dim, N as u32 / 2);
        let half = p.style == ROPE_HALF;
        // Table index of the lane's pair 0, and how many of its pairs rotate.
        let (lo, hi, pair0, rotated) = if half && e0 < r {
            // Lane e0/N of the R/N rotating lanes: pairs (N/2)·(e0/N) + k, elements i and
            // i + R/2 (R/2 is a multiple of N/2: host-validated, so both halves stay aligned).
            let i = e0 / 2;
            (i, i + r / 2, i, n2)
        } else if half {
            (e0, e0 + n2, 0, 0)
        } else {
            // Interleaved: pairs (2i, 2i + 1) inside the vector; those from element r on are
            // not rotated.
            let live = if e0 < r {
                (r - e0).min(N as u32) / 2
            } else {
                0
            };
            (e0, e0 + n2, e0 / 2, live)
        };
        let mut freq = [0.0f32; N];
        for (k, f) in freq.iter_mut().take(N / 2).enumerate() {
            if (k as u32) < rotated {
                // SAFETY: rotated pairs index entries < rotary_dim / 2.
                *f = unsafe { global::ld_nc_f32(p.inv_freq + (pair0 + k as u32) as u64 * 4) };
            }
        }
        LaneRope { freq, half, lo, hi }
    }

    #[inline(always)]
    fn halves(&self, _: u32) -> (u32, u32) {
        (self.lo, self.hi)
    }

    #[inline(always)]
    fn rotate(&self, x: &mut [f32; N], pos: u32) {
        let p = pos as f32;
        for k in 0..N / 2 {
            let sc = sincos_fast(p * self.freq[k]);
            let (a, b) = if self.half {
                (k, k + N / 2)
            } else {
                (2 * k, 2 * k + 1)
            };
            (x[a], x[b]) = rot(x[a], x[b], sc);
        }
    }
}

/// `x·cos − y·sin, y·cos + x·sin`: pair `(x, y)` rotated by the angle whose `(sin, cos)` is
/// `sc`.
#[inline(always)]
fn rot(x: f32, y: f32, (s, c): (f32, f32)) -> (f32, f32) {
    (x * c - y * s, y * c + x * s)
}

/// Rotates rows `[0, rows)` of the swizzled `[rows][D]` 16-bit tile at shared address `base` in
/// place, row `r` to position `pos(r)`. The CTA's `threads` threads share the work in units of
/// one 16-byte chunk (and, with `rotate_half`, its partner chunk `R/16` chunks on); when the
/// units per row divide `threads` (every full-width rotary dim) each thread keeps one chunk
/// column, so it reads its frequencies once per call, not once per row. There is no barrier
/// inside: the caller's barriers order it after the tile's copies and before its readers.
///
/// # Safety
/// `base` a staged tile of at least `rows` rows of `D` elements; `rope` as validated by the
/// host (`rotary_dim ≤ D`, a multiple of 16 with [`ROPE_HALF`]).
#[inline(always)]
pub(crate) unsafe fn rotate_rows<E: Elem, const D: u32>(
    rope: &RopeAttn,
    base: u32,
    rows: u32,
    tid: u32,
    threads: u32,
    pos: impl Fn(u32) -> u32,
) {
    let half = rope.style == ROPE_HALF;
    let per_row = if half {
        rope.rotary_dim / 16
    } else {
        rope.rotary_dim.div_ceil(8)
    }
    .max(1);
    if threads % per_row == 0 {
        let c = tid % per_row;
        // SAFETY: c < per_row, a chunk of the rotary part.
        let f = unsafe { chunk_freqs(rope, c, half) };
        let mut row = tid / per_row;
        while row < rows {
            // SAFETY: row < rows, chunk c as above.
            unsafe { rotate_chunk::<E, D>(rope, half, base, row, c, per_row, &f, pos(row) as f32) };
            row += threads / per_row;
        }
    } else {
        let mut u = tid;
        while u < rows * per_row {
            let (row, c) = (u / per_row, u % per_row);
            // SAFETY: as above.
            unsafe {
                let f = chunk_freqs(rope, c, half);
                rotate_chunk::<E, D>(rope, half, base, row, c, per_row, &f, pos(row) as f32);
            }
            u += threads;
        }
    }
}

/// The inverse frequencies of chunk column `c`'s pairs: with `rotate_half` its 8 elements'
/// (pairs `8c + e`), interleaved its 4 pairs' (`4c + e`, 0 past the rotary dim).
///
/// # Safety
/// `c` a chunk of the rotary part (host-validated table of `rotary_dim / 2` entries).
#[inline(always)]
unsafe fn chunk_freqs(rope: &RopeAttn, c: u32, half: bool) -> [f32; 8] {
    let mut f = [0.0f32; 8];
    for (e, fe) in f.iter_mut().enumerate() {
        let i = if half { c * 8 } else { c * 4 } + e as u32;
        if (half || e < 4) && 2 * i < rope.rotary_dim {
            // SAFETY: i < rotary_dim / 2.
            *fe = unsafe { global::ld_nc_f32(rope.inv_freq + i as u64 * 4) };
        }
    }
    f
}

/// Rotates chunk `c` of tile row `row` (and, with `rotate_half` (`half`), its partner chunk)
/// to position `p`, one 32-bit word (an element pair) at a time: few registers live beside the
/// kernel's accumulators.
///
/// # Safety
/// As [`rotate_rows`]; `row` inside the tile, `c < per_row`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rotate_chunk<E: Elem, const D: u32>(
    rope: &RopeAttn,
    half: bool,
    base: u32,
    row: u32,
    c: u32,
    per_row: u32,
    f: &[f32; 8],
    p: f32,
) {
    let a = base + swz::<D>(row, c);
    for k in 0..4usize {
        let w = 4 * k as u32;
        if half {
            let b = base + swz::<D>(row, c + per_row);
            // SAFETY: inside the tile (c and its partner < D/8; row < rows).
            let (wa, wb) = unsafe { (shared::ld_u32(a + w), shared::ld_u32(b + w)) };
            let ((x0, x1), (y0, y1)) = (E::unpack2(wa), E::unpack2(wb));
            let (a0, b0) = rot(x0, y0, sincos_fast(p * f[2 * k]));
            let (a1, b1) = rot(x1, y1, sincos_fast(p * f[2 * k + 1]));
            // SAFETY: as above.
            unsafe {
                shared::st_u32(a + w, E::pack2(a0, a1));
                shared::st_u32(b + w, E::pack2(b0, b1));
            }
        } else if 2 * (c * 4 + k as u32) < rope.rotary_dim {
            // SAFETY: inside the tile.
            unsafe {
                let (x0, x1) = E::unpack2(shared::ld_u32(a + w));
                let (y0, y1) = rot(x0, x1, sincos_fast(p * f[k]));
                shared::st_u32(a + w, E::pack2(y0, y1));
            }
        }
    }
}
