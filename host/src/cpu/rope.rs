//! RoPE on the CPU: rotates the pairs of every head of `x` (`[tokens, heads, head_dim]`, f32) by
//! `position · inv_freq[i]` (FlashInfer's `apply_rope_pos_ids`, in place).
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::rope::RopeStyle;

const OP: &str = "cpu_rope";

/// Rotates `x` in place: token `t` at position `positions[t]`; `inv_freq` has one entry per
/// rotated pair (`rotary_dim / 2`); elements past `rotary_dim` are left as they are.
pub fn apply_rope(
    x: &mut [f32],
    heads: usize,
    head_dim: usize,
    positions: &[i32],
    inv_freq: &[f32],
    style: RopeStyle,
) -> Result<()> {
    let row = heads.checked_mul(head_dim).ok_or(Error::Overflow {
        op: OP,
        what: "row",
    })?;
    let want = row
        .checked_mul(positions.len())
        .ok_or(Error::Overflow { op: OP, what: "x" })?;
    if row == 0 || x.len() != want {
        return Err(Error::shape(OP, "x elements", want, x.len()));
    }
    let half = inv_freq.len();
    if half == 0 || 2 * half > head_dim {
        return Err(Error::shape(
            OP,
            "inv_freq length",
            format!("in [1, {}]", head_dim / 2),
            half,
        ));
    }
    if let Some(p) = positions.iter().find(|&&p| p < 0) {
        return Err(Error::invalid(OP, "position", p));
    }
    x.par_chunks_mut(row)
        .zip(positions.par_iter())
        .for_each(|(r, &p)| {
            for h in r.chunks_exact_mut(head_dim) {
                rotate_head(h, p as u32, inv_freq, style);
            }
        });
    Ok(())
}

/// Rotates one head row `h` to `position` (`inv_freq.len()` pairs, at most `h.len() / 2`; the
/// caller checks): the one rotation behind [`apply_rope`] and RoPE inside the CPU attention.
pub(crate) fn rotate_head(h: &mut [f32], position: u32, inv_freq: &[f32], style: RopeStyle) {
    let half = inv_freq.len();
    for (i, &f) in inv_freq.iter().enumerate() {
        // The angle in f32 as Hugging Face computes it (position · inv_freq).
        let (s, c) = (position as f32 * f).sin_cos();
        let (a, b) = match style {
            RopeStyle::Interleaved => (2 * i, 2 * i + 1),
            RopeStyle::Half => (i, i + half),
        };
        let (x0, x1) = (h[a], h[b]);
        h[a] = x0 * c - x1 * s;
        h[b] = x1 * c + x0 * s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_pairs_by_position() {
        // One head of 4: pairs (0,1),(2,3) interleaved; frequencies 1 and 0.5.
        let mut x = vec![1.0, 0.0, 1.0, 0.0];
        apply_rope(&mut x, 1, 4, &[2], &[1.0, 0.5], RopeStyle::Interleaved).unwrap();
        assert!((x[0] - 2f32.cos()).abs() < 1e-6 && (x[1] - 2f32.sin()).abs() < 1e-6);
        assert!((x[2] - 1f32.cos()).abs() < 1e-6 && (x[3] - 1f32.sin()).abs() < 1e-6);
        let mut y = vec![1.0, 1.0, 0.0, 0.0];
        apply_rope(&mut y, 1, 4, &[2], &[1.0, 0.5], RopeStyle::Half).unwrap();
        assert!((y[0] - 2f32.cos()).abs() < 1e-6 && (y[2] - 2f32.sin()).abs() < 1e-6);
        assert!((y[1] - 1f32.cos()).abs() < 1e-6 && (y[3] - 1f32.sin()).abs() < 1e-6);
    }

    #[test]
    fn rotation_keeps_norms_and_relative_positions() {
        // q·k after RoPE depends only on the position difference.
        let inv = [1.0, 0.1, 0.01];
        let q0: Vec<f32> = vec![0.3, -1.2, 0.7, 0.2, 1.1, -0.4];
        let k0: Vec<f32> = vec![-0.5, 0.9, 0.4, 1.3, -0.2, 0.8];
        let dot = |pq: i32, pk: i32| {
            let (mut q, mut k) = (q0.clone(), k0.clone());
            apply_rope(&mut q, 1, 6, &[pq], &inv, RopeStyle::Half).unwrap();
            apply_rope(&mut k, 1, 6, &[pk], &inv, RopeStyle::Half).unwrap();
            q.iter().zip(&k).map(|(a, b)| a * b).sum::<f32>()
        };
        assert!((dot(10, 7) - dot(103, 100)).abs() < 1e-4);
    }

    #[test]
    fn bad_input() {
        let mut x = vec![0.0; 8];
        assert!(apply_rope(&mut x, 2, 4, &[0], &[1.0, 1.0], RopeStyle::Half).is_ok());
        assert!(apply_rope(&mut x, 2, 4, &[0, 1], &[1.0], RopeStyle::Half).is_err());
        assert!(apply_rope(&mut x, 2, 4, &[-1], &[1.0], RopeStyle::Half).is_err());
        assert!(apply_rope(&mut x, 2, 4, &[0], &[1.0; 3], RopeStyle::Half).is_err());
        assert!(apply_rope(&mut x, 2, 4, &[0], &[], RopeStyle::Half).is_err());
    }
}
