//! RoPE inside attention (FlashInfer's `pos_encoding_mode = ROPE_LLAMA`): K/V stay unrotated in
//! the cache and the kernels rotate q and every key row on the fly, after reading them and
//! before the logits, by `position · inv_freq[i]` (the same f32 angle and the same range-reduced
//! [`sincos`] as the model's `qkv_rope` epilogue and its CPU twin).
//!
//! A position encoding is a variant type ([`PosEnc`]) of the kernel bodies: [`NoRope`] compiles
//! to nothing, so the plain kernels are unchanged. [`LaneRope`] is the rotation of one lane's
//! `N` consecutive elements of a head row: with interleaved pairs `(2i, 2i+1)` both halves of a
//! pair are in the lane; with `rotate_half` pairs `(i, i + R/2)` (`R` the rotary dim, a multiple
//! of `2N`, host-validated) the partner element sits `R/(2N)` lanes away and comes by a warp
//! shuffle. Elements past `R` get frequency 0, an identity rotation, so every lane runs the same
//! instructions (the shuffle needs the whole warp).
//!
//! The tensor-core prefill stages K tiles (and, at some tile shapes, Q) in shared memory for
//! `ldmatrix`: there [`rotate_rows`] rotates the staged rows in place between the copy's barrier
//! and the reads (the rotated rows are rounded to the 16-bit type once, as FlashInfer's
//! in-shared-memory rotation does); the RoPE prefill kernels stage Q there too, for the same
//! rotation.
use crate::abi::{RopeAttn, ROPE_HALF};
use crate::arch::{global, shared, warp};
use crate::attn::swizzle::swz;
use crate::dtype::Elem;
use crate::math::trig::sincos;

/// A position-encoding variant of an attention kernel.
pub(crate) trait PosEnc<const N: usize>: Sized {
    /// Whether the variant rotates at all (a constant: the plain kernels test it at compile
    /// time).
    const ON: bool;

    /// The rotation of lane `lane` (of its warp) whose vector starts at element `e0` of the
    /// head row.
    ///
    /// # Safety
    /// `p` as the host validated it (its table holds `rotary_dim / 2` frequencies).
    unsafe fn new(p: &RopeAttn, e0: u32, lane: u32) -> Self;

    /// Rotates the lane's vector `x` to position `pos`. Every lane of the warp must call it
    /// together (it may shuffle).
    fn rotate(&self, x: &mut [f32; N], pos: u32);
}

/// No position encoding.
pub(crate) struct NoRope;

impl<const N: usize> PosEnc<N> for NoRope {
    const ON: bool = false;

    #[inline(always)]
    unsafe fn new(_: &RopeAttn, _: u32, _: u32) -> Self {
        NoRope
    }

    #[inline(always)]
    fn rotate(&self, _: &mut [f32; N], _: u32) {}
}

/// Llama RoPE of one lane's `N` elements (`N` even).
pub(crate) struct LaneRope<const N: usize> {
    /// Per element: the inverse frequency of its pair (0: not rotated).
    freq: [f32; N],
    /// `rotate_half` pairing: the partner comes from lane `partner`; else from the lane itself.
    half: bool,
    partner: u32,
    /// `rotate_half`: −1 when the lane holds first halves (`y = x·cos − x'·sin`), +1 for
    /// second halves (`y = x·cos + x'·sin`).
    sign: f32,
}

impl<const N: usize> PosEnc<N> for LaneRope<N> {
    const ON: bool = true;

    #[inline(always)]
    unsafe fn new(p: &RopeAttn, e0: u32, lane: u32) -> Self {
        let (r, n) = (p.rotary_dim, N as u32);
        let half = p.style == ROPE_HALF;
        let (mut partner, mut sign) = (lane, 1.0f32);
        // Table index of the lane's first pair and how many of its elements rotate.
        let (pair0, rotated) = if half {
            let h = r / 2;
            // The lane's elements are all first halves, all second halves or all unrotated
            // (h is a multiple of N).
            if e0 < h {
                partner = lane + h / n;
                sign = -1.0;
                (e0, n)
            } else if e0 < r {
                partner = lane - h / n;
                (e0 - h, n)
            } else {
                (0, 0)
            }
        } else {
            // Pairs (2i, 2i + 1) inside the lane; those from element r on are not rotated.
            (e0 / 2, if e0 < r { (r - e0).min(n) } else { 0 })
        };
        let mut freq = [0.0f32; N];
        for (e, f) in freq.iter_mut().enumerate() {
            let e = e as u32;
            if e < rotated {
                let i = pair0 + if half { e } else { e / 2 };
                // SAFETY: rotated elements index pairs < rotary_dim / 2.
                *f = unsafe { global::ld_nc_f32(p.inv_freq + i as u64 * 4) };
            }
        }
        LaneRope {
            freq,
            half,
            partner: partner % 32,
            sign,
        }
    }

    #[inline(always)]
    fn rotate(&self, x: &mut [f32; N], pos: u32) {
        let p = pos as f32;
        if self.half {
            let mut y = [0.0f32; N];
            for e in 0..N {
                let other = warp::shfl_idx_f32(x[e], self.partner);
                let (s, c) = sincos(p * self.freq[e]);
                y[e] = x[e] * c + self.sign * other * s;
            }
            *x = y;
        } else {
            for k in 0..N / 2 {
                let (s, c) = sincos(p * self.freq[2 * k]);
                let (x0, x1) = (x[2 * k], x[2 * k + 1]);
                x[2 * k] = x0 * c - x1 * s;
                x[2 * k + 1] = x1 * c + x0 * s;
            }
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
/// place, row `r` to position `pos(r)`. The CTA's `threads` threads share the work (thread
/// `tid` takes every `threads`-th unit); there is no barrier inside: the caller's barriers
/// order it after the tile's copies and before its readers.
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
    let r = rope.rotary_dim;
    let half = rope.style == ROPE_HALF;
    // A unit: with rotate_half a chunk of 8 first-half elements and its partner chunk R/16
    // chunks on; interleaved, one chunk of 4 lane-local pairs.
    let per_row = if half { r / 16 } else { r.div_ceil(8) }.max(1);
    let mut u = tid;
    while u < rows * per_row {
        let (row, c) = (u / per_row, u % per_row);
        let p = pos(row) as f32;
        let a = base + swz::<D>(row, c);
        // One 32-bit word (an element pair) at a time: few registers live beside the
        // kernel's accumulators.
        for k in 0..4u32 {
            if half {
                let b = base + swz::<D>(row, c + per_row);
                // SAFETY: inside the tile (c and its partner < D/8; row < rows).
                let (wa, wb) = unsafe { (shared::ld_u32(a + 4 * k), shared::ld_u32(b + 4 * k)) };
                let ((x0, x1), (y0, y1)) = (E::unpack2(wa), E::unpack2(wb));
                let i = c * 8 + 2 * k;
                // SAFETY: i + 1 < R/2 entries of the table.
                let (f0, f1) = unsafe {
                    (
                        global::ld_nc_f32(rope.inv_freq + i as u64 * 4),
                        global::ld_nc_f32(rope.inv_freq + (i + 1) as u64 * 4),
                    )
                };
                let (a0, b0) = rot(x0, y0, sincos(p * f0));
                let (a1, b1) = rot(x1, y1, sincos(p * f1));
                // SAFETY: as above.
                unsafe {
                    shared::st_u32(a + 4 * k, E::pack2(a0, a1));
                    shared::st_u32(b + 4 * k, E::pack2(b0, b1));
                }
            } else {
                let i = c * 4 + k; // pair (2i, 2i + 1)
                if 2 * i < r {
                    // SAFETY: inside the tile; i < R/2 entries of the table.
                    unsafe {
                        let (x0, x1) = E::unpack2(shared::ld_u32(a + 4 * k));
                        let f = global::ld_nc_f32(rope.inv_freq + i as u64 * 4);
                        let (y0, y1) = rot(x0, x1, sincos(p * f));
                        shared::st_u32(a + 4 * k, E::pack2(y0, y1));
                    }
                }
            }
        }
        u += threads;
    }
}
