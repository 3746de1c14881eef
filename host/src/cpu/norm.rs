//! RMSNorm, alone and fused with the residual add (FlashInfer's `rmsnorm` and
//! `fused_add_rmsnorm`): `y = x / sqrt(mean(x²) + eps) · w`, per row of `dim` elements, f32.
use rayon::prelude::*;

use crate::error::{Error, Result};

const OP: &str = "cpu_rms_norm";

fn check(x: usize, w: &[f32], eps: f32, out: usize) -> Result<usize> {
    let dim = w.len();
    if dim == 0 || !x.is_multiple_of(dim) {
        return Err(Error::shape(
            OP,
            "x elements",
            format!("a multiple of {dim}"),
            x,
        ));
    }
    if out != x {
        return Err(Error::shape(OP, "out elements", x, out));
    }
    if !(eps.is_finite() && eps > 0.0) {
        return Err(Error::invalid(OP, "eps", format!("{eps} (must be > 0)")));
    }
    Ok(dim)
}

/// One row: the reduction in f64 so that the CPU twin is the more exact side of every test.
fn norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ms = x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / x.len() as f64;
    let r = (1.0 / (ms + eps as f64).sqrt()) as f32;
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * r * g;
    }
}

/// `out = rmsnorm(x) · weight`, rows of `weight.len()` elements.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) -> Result<()> {
    let dim = check(x.len(), weight, eps, out.len())?;
    out.par_chunks_mut(dim)
        .zip(x.par_chunks(dim))
        .for_each(|(o, r)| norm_row(r, weight, eps, o));
    Ok(())
}

/// `residual += x; out = rmsnorm(residual) · weight` (the residual stream is updated in place).
pub fn add_rms_norm(
    residual: &mut [f32],
    x: &[f32],
    weight: &[f32],
    eps: f32,
    out: &mut [f32],
) -> Result<()> {
    let dim = check(residual.len(), weight, eps, out.len())?;
    if x.len() != residual.len() {
        return Err(Error::shape(OP, "x elements", residual.len(), x.len()));
    }
    out.par_chunks_mut(dim)
        .zip(residual.par_chunks_mut(dim))
        .zip(x.par_chunks(dim))
        .for_each(|((o, r), d)| {
            for (a, &b) in r.iter_mut().zip(d) {
                *a += b;
            }
            norm_row(r, weight, eps, o);
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_rows() {
        let x = [3.0, 4.0, 0.0, 0.0, 1.0, 1.0];
        let w = [1.0, 2.0, 3.0];
        let mut out = [0.0; 6];
        rms_norm(&x, &w, 1e-6, &mut out).unwrap();
        let r = 1.0 / (25.0f64 / 3.0 + 1e-6).sqrt();
        assert!((out[0] as f64 - 3.0 * r).abs() < 1e-6);
        assert!((out[1] as f64 - 8.0 * r).abs() < 1e-6);
        assert_eq!(out[3], 0.0);
        let mut res = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0];
        let mut out2 = [0.0; 6];
        add_rms_norm(&mut res, &x, &w, 1e-6, &mut out2).unwrap();
        assert_eq!(res, [4.0, 5.0, 1.0, 0.0, 1.0, 1.0]);
    }

    #[test]
    fn bad_shapes_and_eps() {
        let mut out = [0.0; 4];
        assert!(rms_norm(&[1.0; 4], &[1.0; 3], 1e-5, &mut out).is_err());
        assert!(rms_norm(&[1.0; 4], &[1.0; 2], 0.0, &mut out).is_err());
        assert!(rms_norm(&[1.0; 4], &[], 1e-5, &mut out).is_err());
        assert!(rms_norm(&[1.0; 4], &[1.0; 2], 1e-5, &mut out[..2]).is_err());
    }
}
