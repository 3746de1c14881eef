//! SwiGLU's gate: `out = silu(x[:, :F]) · x[:, F:]` per row of `2F` (FlashInfer's
//! `silu_and_mul`), f32.
use rayon::prelude::*;

use crate::error::{Error, Result};

const OP: &str = "cpu_silu_and_mul";

/// `silu(g) = g / (1 + e^{-g})`.
pub fn silu(g: f32) -> f32 {
    g / (1.0 + (-g).exp())
}

/// Rows of `x` are `[gate | up]` (`2 · out_dim` each); `out` rows are `out_dim`.
pub fn silu_and_mul(x: &[f32], out_dim: usize, out: &mut [f32]) -> Result<()> {
    if out_dim == 0 || !out.len().is_multiple_of(out_dim) {
        return Err(Error::shape(
            OP,
            "out elements",
            format!("a multiple of {out_dim}"),
            out.len(),
        ));
    }
    if Some(x.len()) != out.len().checked_mul(2) {
        return Err(Error::shape(OP, "x elements", 2 * out.len(), x.len()));
    }
    out.par_chunks_mut(out_dim)
        .zip(x.par_chunks(2 * out_dim))
        .for_each(|(o, r)| {
            let (g, u) = r.split_at(out_dim);
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = silu(g) * u;
            }
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_rows() {
        let x = [0.0, 2.0, 3.0, 5.0];
        let mut out = [0.0; 2];
        silu_and_mul(&x, 2, &mut out).unwrap();
        assert_eq!(out[0], 0.0);
        assert!((out[1] - 2.0 / (1.0 + (-2f32).exp()) * 5.0).abs() < 1e-6);
        assert!(silu_and_mul(&x, 3, &mut [0.0; 3]).is_err());
        assert!(silu_and_mul(&x[..3], 2, &mut out).is_err());
        assert!(silu_and_mul(&x, 0, &mut []).is_err());
    }
}
