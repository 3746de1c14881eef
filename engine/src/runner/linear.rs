//! Dense layers on the CPU: `y = x · Wᵀ` with `W` row-major `[out, in]`, through the `gemm`
//! crate (SIMD microkernels, rayon threads).
use crate::error::{EngineError, Result};

/// `out[rows, n] = x[rows, k] · w[n, k]ᵀ` (overwrites `out`).
pub fn linear(x: &[f32], w: &[f32], k: usize, n: usize, out: &mut [f32]) -> Result<()> {
    if k == 0
        || n == 0
        || !x.len().is_multiple_of(k)
        || w.len() != n * k
        || out.len() != x.len() / k * n
    {
        return Err(EngineError::Model(format!(
            "linear: x {} / w {} / out {} for k {k}, n {n}",
            x.len(),
            w.len(),
            out.len()
        )));
    }
    let m = x.len() / k;
    if m == 0 {
        return Ok(());
    }
    let threads = rayon::current_num_threads();
    // SAFETY: the three slices hold exactly m·k, n·k and m·n elements (checked above); the
    // strides describe x row-major [m, k], wᵀ as the column-major view [k, n] of w, and out
    // row-major [m, n]; `out` does not alias the inputs (it is a distinct &mut).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(threads),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_naive_product() {
        let (m, k, n) = (3, 5, 4);
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut out = vec![f32::NAN; m * n];
        linear(&x, &w, k, n, &mut out).unwrap();
        for i in 0..m {
            for j in 0..n {
                let r: f32 = (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum();
                assert!((out[i * n + j] - r).abs() < 1e-5);
            }
        }
        assert!(linear(&x, &w, k, n + 1, &mut out).is_err());
    }
}
