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
use crate::abi::{RopeAttn, ROPE_HALF};
use crate::arch::{global, warp};
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
        let r = p.rotary_dim;
        let mut freq = [0.0f32; N];
        let half = p.style == ROPE_HALF;
        let (mut partner, mut sign) = (lane, 1.0f32);
        if half {
            let h = r / 2;
            // The lane's elements are all first halves, all second halves or all unrotated
            // (h is a multiple of N).
            let (pair0, rotated) = if e0 < h {
                partner = lane + h / N as u32;
                sign = -1.0;
                (e0, true)
            } else if e0 < r {
                partner = lane - h / N as u32;
                (e0 - h, true)
            } else {
                (0, false)
            };
            if rotated {
                for (e, f) in freq.iter_mut().enumerate() {
                    // SAFETY: pair0 + e < h = rotary_dim / 2 entries.
                    *f = unsafe { global::ld_nc_f32(p.inv_freq + (pair0 + e as u32) as u64 * 4) };
                }
            }
        } else {
            for e in (0..N).step_by(2) {
                let pair = (e0 + e as u32) / 2;
                if 2 * pair < r {
                    // SAFETY: pair < rotary_dim / 2 entries.
                    let f = unsafe { global::ld_nc_f32(p.inv_freq + pair as u64 * 4) };
                    freq[e] = f;
                    freq[e + 1] = f;
                }
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
            for e in (0..N).step_by(2) {
                let (s, c) = sincos(p * self.freq[e]);
                let (x0, x1) = (x[e], x[e + 1]);
                x[e] = x0 * c - x1 * s;
                x[e + 1] = x1 * c + x0 * s;
            }
        }
    }
}
