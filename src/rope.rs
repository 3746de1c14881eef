//! The f64 side of RoPE-inside-attention tests: rotating rows of the oracle's inputs.
//!
//! The angle is the f32 product `position · inv_freq[i]` the kernels and the CPU backend
//! compute (the definition of the op, as in Hugging Face's Llama), widened to f64; its sine and
//! cosine and the rotation are then exact to f64. So the oracle is "RoPE first, then
//! attention", computed independently of the kernels' range-reduced f32 `sincos`.
use ferrinfer::rope::RopeStyle;

/// Rotates every head of `x` (rows of `heads · head_dim`): row `r` to position `pos(r)`.
/// `inv_freq` has `rotary_dim / 2` entries; elements past the rotary dim stay.
pub fn rotate_rows(
    x: &mut [f64],
    heads: usize,
    head_dim: usize,
    inv_freq: &[f32],
    style: RopeStyle,
    pos: impl Fn(usize) -> u32,
) {
    let half = inv_freq.len();
    for (r, row) in x.chunks_exact_mut(heads * head_dim).enumerate() {
        let p = pos(r) as f32;
        for h in row.chunks_exact_mut(head_dim) {
            for (i, &f) in inv_freq.iter().enumerate() {
                let (s, c) = ((p * f) as f64).sin_cos();
                let (a, b) = match style {
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                    RopeStyle::Half => (i, i + half),
                };
                let (x0, x1) = (h[a], h[b]);
                h[a] = x0 * c - x1 * s;
                h[b] = x1 * c + x0 * s;
            }
        }
    }
}
