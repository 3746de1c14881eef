//! Matrix products on the GGUF's own 32-element blocks (Q4_0, Q4_1, Q8_0), for the CPU
//! backend's decode steps: a decode step reads the packed weights (4.5–8.5 bits per weight)
//! instead of their f32 copies (32 bits). On x86-64 with AVX2/FMA/F16C the codes are widened
//! to f32 in registers and each block's scale is applied to its partial sum
//! (`packed_avx2`); elsewhere each block is decoded to its f32 weights first (one decoding
//! function, `gguf::decode_block`). Both multiply the same f32 inputs by the exact codes in
//! f32; they differ from the dequantised product only in rounding order.
//!
//! Each output element is computed by the same sequence of operations whatever the number of
//! input rows, so a sequence's results do not depend on what else is in the step.
use rayon::prelude::*;

use crate::error::{EngineError, Result};
use crate::gguf::{decode_block, GgmlType};

#[cfg(target_arch = "x86_64")]
use super::packed_avx2;

/// Input rows handled per pass over the weights (the accumulators stay in registers).
const ROWS_PER_PASS: usize = 4;
/// Parallel tasks per worker thread of one product.
const TASKS_PER_THREAD: usize = 2;
/// Fewest output features per task (smaller products run on fewer threads).
const MIN_FEATURES_PER_TASK: usize = 64;

/// A `[n, k]` weight matrix in a 32-element block format.
pub struct PackedMatrix {
    ty: GgmlType,
    n: usize,
    k: usize,
    row_bytes: usize,
    data: Vec<u8>,
}

impl PackedMatrix {
    /// Wraps the raw blocks of a `[n, k]` matrix; `None` when `ty` is not a block format.
    pub fn new(ty: GgmlType, n: usize, k: usize, bytes: &[u8]) -> Result<Option<Self>> {
        if !ty.is_block() {
            return Ok(None);
        }
        let row_bytes = ty
            .bytes_for(k as u64, k as u64)
            .map_err(EngineError::Model)? as usize;
        if n == 0 || k == 0 || bytes.len() != n * row_bytes {
            return Err(EngineError::Model(format!(
                "packed {ty:?} matrix [{n}, {k}]: {} bytes",
                bytes.len()
            )));
        }
        let mut data = Vec::new();
        data.try_reserve_exact(bytes.len())
            .map_err(|_| EngineError::Model("cannot allocate packed weights".into()))?;
        data.extend_from_slice(bytes);
        Ok(Some(Self {
            ty,
            n,
            k,
            row_bytes,
            data,
        }))
    }

    /// Stacks matrices of one format and width row-wise (Q|K|V, gate|up); `None` when any part
    /// is missing or the formats differ.
    pub fn stack(parts: Vec<Option<Self>>) -> Option<Self> {
        let mut parts = parts.into_iter();
        let mut first = parts.next()??;
        for p in parts {
            let p = p?;
            if p.ty != first.ty || p.k != first.k {
                return None;
            }
            first.data.extend_from_slice(&p.data);
            first.n += p.n;
        }
        Some(first)
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.n
    }

    /// `out[m, n] = x[m, k] · Wᵀ` (overwrites `out`).
    pub fn matmul(&self, x: &[f32], out: &mut [f32]) -> Result<()> {
        let (n, k) = (self.n, self.k);
        if !x.len().is_multiple_of(k) || out.len() != x.len() / k * n {
            return Err(EngineError::Model(format!(
                "packed matmul: x {} / out {} for [{n}, {k}]",
                x.len(),
                out.len()
            )));
        }
        let m = x.len() / k;
        if m == 0 {
            return Ok(());
        }
        #[cfg(target_arch = "x86_64")]
        let simd = packed_avx2::available();
        #[cfg(not(target_arch = "x86_64"))]
        let simd = false;
        // The per-block input sums of the SIMD path's offset term, once for every feature.
        #[cfg(target_arch = "x86_64")]
        let sx = if simd {
            packed_avx2::block_sums(x, m, k)
        } else {
            Vec::new()
        };
        // Tasks own disjoint feature ranges (a few per thread: each fork-join costs
        // microseconds, a decode step makes ~120 of them); a single input row writes its range
        // in place, several rows go through a local [m, range] buffer copied into place.
        let per_task = n
            .div_ceil(TASKS_PER_THREAD * rayon::current_num_threads())
            .next_multiple_of(8)
            .max(MIN_FEATURES_PER_TASK);
        let range = |j0: usize, o: &mut [f32]| {
            let j1 = (j0 + per_task).min(n);
            for i0 in (0..m).step_by(ROWS_PER_PASS) {
                let rows = (m - i0).min(ROWS_PER_PASS);
                let (xs, o) = (&x[i0 * k..(i0 + rows) * k], &mut o[i0 * (j1 - j0)..]);
                #[cfg(target_arch = "x86_64")]
                if simd {
                    let nb = k / 32;
                    // SAFETY: the CPU runs the SIMD loops (checked above); whole rows of
                    // blocks, x rows of k, their block sums.
                    unsafe {
                        packed_avx2::features(
                            self.ty,
                            &self.data,
                            self.row_bytes,
                            k,
                            xs,
                            &sx[i0 * nb..(i0 + rows) * nb],
                            rows,
                            (j0, j1),
                            o,
                        )
                    };
                    continue;
                }
                self.run_generic(xs, rows, j0, j1, o);
            }
        };
        if m == 1 {
            out.par_chunks_mut(per_task)
                .enumerate()
                .for_each(|(t, o)| range(t * per_task, o));
            return Ok(());
        }
        let parts: Vec<(usize, Vec<f32>)> = (0..n.div_ceil(per_task))
            .into_par_iter()
            .map(|t| {
                let j0 = t * per_task;
                let mut local = vec![0f32; m * ((j0 + per_task).min(n) - j0)];
                range(j0, &mut local);
                (j0, local)
            })
            .collect();
        for (j0, local) in parts {
            let w = local.len() / m;
            for i in 0..m {
                out[i * n + j0..i * n + j0 + w].copy_from_slice(&local[i * w..(i + 1) * w]);
            }
        }
        Ok(())
    }

    /// Features `j0..j1` for `rows ≤ ROWS_PER_PASS` input rows; `out` is `[rows, j1 - j0]`.
    /// The portable path (other CPUs): each block decoded to f32 first.
    fn run_generic(&self, x: &[f32], rows: usize, j0: usize, j1: usize, out: &mut [f32]) {
        let k = self.k;
        let bb = self.row_bytes / (k / 32);
        let width = j1 - j0;
        for j in j0..j1 {
            let row = &self.data[j * self.row_bytes..(j + 1) * self.row_bytes];
            let mut acc = [[0f32; 8]; ROWS_PER_PASS];
            let mut w = [0f32; 32];
            for (b, blk) in row.chunks_exact(bb).enumerate() {
                decode_block(self.ty, blk, &mut w);
                for (i, a) in acc.iter_mut().enumerate().take(rows) {
                    let xb = &x[i * k + b * 32..i * k + b * 32 + 32];
                    for l in 0..32 {
                        a[l % 8] += w[l] * xb[l];
                    }
                }
            }
            for (i, a) in acc.iter().enumerate().take(rows) {
                // A fixed pairwise order: the same for every row count.
                let s = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
                out[i * width + (j - j0)] = s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    fn q4_1_matrix(n: usize, k: usize) -> Vec<u8> {
        let mut b = Vec::new();
        for r in 0..n {
            for blk in 0..k / 32 {
                b.extend_from_slice(&f16::from_f32(0.01 * (r + 1) as f32).to_le_bytes());
                b.extend_from_slice(&f16::from_f32(-0.05 * blk as f32).to_le_bytes());
                b.extend((0..16).map(|j| ((r * 7 + blk * 3 + j) % 256) as u8));
            }
        }
        b
    }

    #[test]
    fn matches_the_dequantised_product() {
        let (n, k) = (130, 96);
        let bytes = q4_1_matrix(n, k);
        let mut dense = vec![0f32; n * k];
        GgmlType::Q4_1.to_f32(&bytes, &mut dense).unwrap();
        let p = PackedMatrix::new(GgmlType::Q4_1, n, k, &bytes)
            .unwrap()
            .unwrap();
        for m in [1, 3, 4, 7] {
            let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut out = vec![f32::NAN; m * n];
            p.matmul(&x, &mut out).unwrap();
            for i in 0..m {
                for j in 0..n {
                    let r: f64 = (0..k)
                        .map(|t| x[i * k + t] as f64 * dense[j * k + t] as f64)
                        .sum();
                    assert!((out[i * n + j] as f64 - r).abs() < 1e-4 * (1.0 + r.abs()));
                }
            }
        }
    }

    /// Q8_0 and Q4_0 (the LM head's format and the other 4-bit one) against their dequantised
    /// product, with the same bound as Q4_1.
    #[test]
    fn other_block_formats_match_the_dequantised_product() {
        let (n, k) = (37, 64);
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0] {
            let mut bytes = Vec::new();
            for r in 0..n {
                for blk in 0..k / 32 {
                    let d = 0.003 * (1 + (r + blk) % 5) as f32;
                    bytes.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                    let codes = if ty == GgmlType::Q8_0 { 32 } else { 16 };
                    bytes.extend((0..codes).map(|j| ((r * 31 + blk * 7 + j * 13) % 256) as u8));
                }
            }
            let mut dense = vec![0f32; n * k];
            ty.to_f32(&bytes, &mut dense).unwrap();
            let p = PackedMatrix::new(ty, n, k, &bytes).unwrap().unwrap();
            let x: Vec<f32> = (0..2 * k).map(|i| (i as f32 * 0.61).cos() * 3.0).collect();
            let mut out = vec![f32::NAN; 2 * n];
            p.matmul(&x, &mut out).unwrap();
            for i in 0..2 {
                for j in 0..n {
                    let r: f64 = (0..k)
                        .map(|t| x[i * k + t] as f64 * dense[j * k + t] as f64)
                        .sum();
                    let err = (out[i * n + j] as f64 - r).abs();
                    assert!(err < 1e-4 * (1.0 + r.abs()), "{ty:?}: {err:e}");
                }
            }
        }
    }

    #[test]
    fn a_row_does_not_depend_on_the_other_rows() {
        let (n, k) = (70, 64);
        let p = PackedMatrix::new(GgmlType::Q4_1, n, k, &q4_1_matrix(n, k))
            .unwrap()
            .unwrap();
        let x: Vec<f32> = (0..6 * k).map(|i| (i as f32 * 0.91).cos()).collect();
        let mut all = vec![0f32; 6 * n];
        p.matmul(&x, &mut all).unwrap();
        for i in 0..6 {
            let mut one = vec![0f32; n];
            p.matmul(&x[i * k..(i + 1) * k], &mut one).unwrap();
            assert_eq!(one, all[i * n..(i + 1) * n], "row {i}");
        }
    }

    #[test]
    fn stacking_and_bad_shapes() {
        let a = PackedMatrix::new(GgmlType::Q4_1, 2, 32, &q4_1_matrix(2, 32)).unwrap();
        let b = PackedMatrix::new(GgmlType::Q4_1, 3, 32, &q4_1_matrix(3, 32)).unwrap();
        assert_eq!(PackedMatrix::stack(vec![a, b]).unwrap().rows(), 5);
        assert!(PackedMatrix::new(GgmlType::Q4_1, 2, 32, &[0; 39]).is_err());
        assert!(PackedMatrix::new(GgmlType::F32, 2, 32, &[0; 256])
            .unwrap()
            .is_none());
        let p = PackedMatrix::new(GgmlType::Q4_1, 2, 32, &q4_1_matrix(2, 32))
            .unwrap()
            .unwrap();
        assert!(p.matmul(&[0.0; 33], &mut [0.0; 2]).is_err());
        // No input rows (a step that wants no logits): nothing to do.
        assert!(p.matmul(&[], &mut []).is_ok());
    }
}
