//! The register tile: a warp's 16 × `8·N` tile in the `mma.m16n8k16` accumulator (C) layout,
//! `N` n-tiles of 8 columns, element type `T` (f32 scores and outputs).
//!
//! Lane `l` holds, of n-tile `nt`, the four elements `e = 0..4` at row `l/4 + 8·(e/2)`, column
//! `8·nt + 2·(l%4) + e%2` (`math::frag::mma_c`, tested on the host): two rows per lane, called
//! its row halves `hh = 0, 1`. A row's other columns sit in the three other lanes of the quad,
//! so row reductions are a lane-local tree and two shuffles ([`crate::attn::state`]). The
//! vocabulary is what attention needs: row max and row sum (lane-local), scale rows, exp2,
//! mma into the tile, and packing as the A operand of the next product.
#[cfg(target_arch = "nvptx64")]
use crate::dtype::Elem;
use crate::math::fast::{exp2, fma, fmax};

/// A 16 × `8·N` register tile (see the module docs).
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(crate) struct RegTile<T, const N: usize>(pub(crate) [[T; 4]; N]);

impl<const N: usize> RegTile<f32, N> {
    /// Every element `v`.
    #[inline(always)]
    pub(crate) const fn splat(v: f32) -> Self {
        Self([[v; 4]; N])
    }

    /// Lane-local maximum of row half `hh` (a balanced tree over the lane's `2·N` columns).
    #[inline(always)]
    pub(crate) fn row_max(&self, hh: usize) -> f32 {
        self.row_reduce(hh, fmax)
    }

    /// Lane-local sum of row half `hh` (a balanced tree over the lane's `2·N` columns).
    #[inline(always)]
    pub(crate) fn row_sum(&self, hh: usize) -> f32 {
        self.row_reduce(hh, |a, b| a + b)
    }

    /// Reduces row half `hh` with `f` as a balanced tree: sequential chains of dependent
    /// operations were the kernels' main latency stall.
    #[inline(always)]
    fn row_reduce(&self, hh: usize, f: impl Fn(f32, f32) -> f32) -> f32 {
        let mut t = [0.0f32; N];
        for (nt, tv) in t.iter_mut().enumerate() {
            *tv = f(self.0[nt][2 * hh], self.0[nt][2 * hh + 1]);
        }
        tree(t, f)
    }

    /// Multiplies row half `hh` by `r[hh]`.
    #[inline(always)]
    pub(crate) fn scale_rows(&mut self, r: [f32; 2]) {
        for t in self.0.iter_mut() {
            t[0] *= r[0];
            t[1] *= r[0];
            t[2] *= r[1];
            t[3] *= r[1];
        }
    }

    /// `x ← 2^(x·scale − sub[hh])` on every element (one FFMA and one `ex2` each).
    #[inline(always)]
    pub(crate) fn exp2_rows(&mut self, scale: f32, sub: [f32; 2]) {
        for t in self.0.iter_mut() {
            for e in 0..4 {
                t[e] = exp2(fma(t[e], scale, -sub[e / 2]));
            }
        }
    }

    /// `x ← f(x)` on every element.
    #[inline(always)]
    pub(crate) fn map(&mut self, f: impl Fn(f32) -> f32) {
        for t in self.0.iter_mut() {
            for x in t.iter_mut() {
                *x = f(*x);
            }
        }
    }

    /// n-tiles `nt` and `nt + 1` (+)= A·B, `b` four B registers (two n-tiles, `ldmatrix.x4`).
    #[cfg(target_arch = "nvptx64")]
    #[inline(always)]
    pub(crate) fn mma_pair<E: Elem>(&mut self, nt: usize, a: [u32; 4], b: [u32; 4]) {
        self.0[nt] = E::mma(a, [b[0], b[1]], self.0[nt]);
        self.0[nt + 1] = E::mma(a, [b[2], b[3]], self.0[nt + 1]);
    }

    /// The tile rounded to `E` as `K = N/2` A-operand fragments of the next product: k-step
    /// `ks` covers columns `16·ks .. 16·ks + 16`.
    #[cfg(target_arch = "nvptx64")]
    #[inline(always)]
    pub(crate) fn pack_a<E: Elem, const K: usize>(&self) -> [[u32; 4]; K] {
        const { assert!(2 * K == N) };
        let mut pa = [[0u32; 4]; K];
        for (ks, pk) in pa.iter_mut().enumerate() {
            let (lo, hi) = (self.0[2 * ks], self.0[2 * ks + 1]);
            *pk = [
                E::pack2(lo[0], lo[1]),
                E::pack2(lo[2], lo[3]),
                E::pack2(hi[0], hi[1]),
                E::pack2(hi[2], hi[3]),
            ];
        }
        pa
    }
}

/// A balanced reduction tree over `N` values (`N` a power of two, at most 16): pairs of
/// neighbours first, as `((t0 ∘ t1) ∘ (t2 ∘ t3)) ∘ …`.
#[inline(always)]
pub(crate) fn tree<const N: usize>(t: [f32; N], f: impl Fn(f32, f32) -> f32) -> f32 {
    const { assert!(N.is_power_of_two() && N <= 16) };
    // Each level written out (fixed trip counts, unrolled fully after monomorphisation).
    let mut v = t;
    if N >= 16 {
        for i in 0..8 {
            v[i] = f(v[2 * i], v[2 * i + 1]);
        }
    }
    if N >= 8 {
        for i in 0..4 {
            v[i] = f(v[2 * i], v[2 * i + 1]);
        }
    }
    if N >= 4 {
        for i in 0..2 {
            v[i] = f(v[2 * i], v[2 * i + 1]);
        }
    }
    if N >= 2 {
        v[0] = f(v[0], v[1]);
    }
    v[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tree is the neighbour-pairs tree the kernels wrote out by hand (same association,
    /// so bit-identical sums).
    #[test]
    fn tree_is_pairwise() {
        let t: [f32; 16] = core::array::from_fn(|i| 1.0 / (i as f32 + 3.0));
        let add = |a: f32, b: f32| a + b;
        let p8 = |t: &[f32]| ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
        assert_eq!(tree([t[0], t[1]], add).to_bits(), (t[0] + t[1]).to_bits());
        let p4 = (t[0] + t[1]) + (t[2] + t[3]);
        assert_eq!(tree([t[0], t[1], t[2], t[3]], add).to_bits(), p4.to_bits());
        let t8: [f32; 8] = core::array::from_fn(|i| t[i]);
        assert_eq!(tree(t8, add).to_bits(), p8(&t).to_bits());
        assert_eq!(
            tree(t, add).to_bits(),
            (p8(&t[..8]) + p8(&t[8..])).to_bits()
        );
        assert_eq!(tree(t, fmax), t.iter().copied().fold(f32::MIN, f32::max));
    }

    /// Row reductions and row scaling follow the C layout: element `e` is row half `e / 2`.
    #[test]
    fn rows_follow_the_c_layout() {
        let mut s = RegTile::<f32, 2>([[1.0, 2.0, 10.0, 20.0], [3.0, -1.0, 30.0, 5.0]]);
        assert_eq!([s.row_max(0), s.row_max(1)], [3.0, 30.0]);
        assert_eq!([s.row_sum(0), s.row_sum(1)], [5.0, 65.0]);
        s.scale_rows([2.0, 0.5]);
        assert_eq!(s.0, [[2.0, 4.0, 5.0, 10.0], [6.0, -2.0, 15.0, 2.5]]);
        s.exp2_rows(1.0, [1.0, 15.0]);
        assert_eq!(s.0[0][0], 2.0);
        assert_eq!(s.0[1][2], 1.0);
        assert_eq!(s.0[0][2], 2f32.powi(-10));
    }
}
