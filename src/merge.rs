//! Random attention states and the state merge evaluated in f64, for the merge-op tests
//! (`tests/merge.rs`) and the large sweep (`tests/gpu_sweep.rs`).
use ferrinfer::ops::MergeShape;
use ferrinfer::Float16;
use rand::Rng;

use crate::random_values;

/// `n` states per row: values `[rows, n, heads, D]` (as stored), lse `[rows, n, heads]` (base 2).
pub struct States<T> {
    /// Values as stored.
    pub v: Vec<T>,
    /// Their exact f64 images.
    pub vf: Vec<f64>,
    /// lse per (row, state, head).
    pub s: Vec<f32>,
}

/// Random states: values in [-1, 1], lse in [-20, 20] or, with probability `empty`, −inf (an
/// empty state, which the merge must ignore).
pub fn states<T: Float16>(r: &mut impl Rng, shape: MergeShape, n: usize, empty: f64) -> States<T> {
    let len = shape.seq_len * n * shape.num_heads * shape.head_dim;
    let (v, vf) = random_values::<T>(r, len, 1.0);
    let s = (0..shape.seq_len * n * shape.num_heads)
        .map(|_| {
            if r.random_bool(empty) {
                f32::NEG_INFINITY
            } else {
                r.random_range(-20.0f32..20.0)
            }
        })
        .collect();
    States { v, vf, s }
}

/// The merge of `n` states per row in f64: o `[rows, heads, D]`, lse `[rows, heads]`; rows
/// whose states are all empty give o = 0, lse = −inf.
pub fn merge_oracle(shape: MergeShape, n: usize, vf: &[f64], s: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let (hh, d) = (shape.num_heads, shape.head_dim);
    let mut o = vec![0.0; shape.seq_len * hh * d];
    let mut lse = vec![f64::NEG_INFINITY; shape.seq_len * hh];
    for i in 0..shape.seq_len {
        for h in 0..hh {
            let sj = |j: usize| s[(i * n + j) * hh + h] as f64;
            let m = (0..n).map(sj).fold(f64::NEG_INFINITY, f64::max);
            if m == f64::NEG_INFINITY {
                continue;
            }
            let w: Vec<f64> = (0..n).map(|j| (sj(j) - m).exp2()).collect();
            let den: f64 = w.iter().sum();
            for x in 0..d {
                let acc: f64 = (0..n)
                    .map(|j| w[j] * vf[((i * n + j) * hh + h) * d + x])
                    .sum();
                o[(i * hh + h) * d + x] = acc / den;
            }
            lse[i * hh + h] = m + den.log2();
        }
    }
    (o, lse)
}

/// Splits two-state data `[rows, 2, per]` into separate `a` and `b` tensors `[rows, per]`.
pub fn split2<T: Copy>(x: &[T], rows: usize, per: usize) -> (Vec<T>, Vec<T>) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..rows {
        a.extend_from_slice(&x[(2 * i) * per..(2 * i + 1) * per]);
        b.extend_from_slice(&x[(2 * i + 1) * per..(2 * i + 2) * per]);
    }
    (a, b)
}

/// The merge ops' bound: merged values are one rounding of an f32 sum of a few terms, so the
/// output rounding dominates (bf16 2^-9 relative, f16 2^-12); lse is f32 math on inputs of
/// magnitude ≤ 20 (1e-4 absolute).
pub fn merge_within(s: &crate::ErrorStats, bf16: bool) -> bool {
    let tol = if bf16 { 5e-3 } else { 1e-3 };
    !s.has_nan && s.rel_l2 <= tol && s.lse_ok && s.lse_abs <= 1e-4
}
