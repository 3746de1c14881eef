//! Merging attention states on the CPU (the CPU twin of [`crate::ops::merge`]).
//!
//! The attention state of a key subset `I` is the normalised output `o_I` with its base-2
//! log-sum-exp `lse_I`. Two states merge as
//! `o = w_a·o_a + w_b·o_b`, `lse = m + log2(2^(lse_a−m) + 2^(lse_b−m))` with
//! `w_x = 2^(lse_x−m) / (2^(lse_a−m) + 2^(lse_b−m))` and `m = max(lse_a, lse_b)`
//! ([`merge_weights`], the function the device code uses); an empty state (`lse = −inf`) has
//! weight 0, and merging two empty states gives `o = 0`, `lse = −inf`. The merge is commutative
//! and associative, so the state of a set of keys is the merge of the states of any partition
//! of it (split-KV, cascade).
//!
//! Layouts: outputs `o` are f32 `[num_heads, head_dim]` row-major, lse `[num_heads]`; the n-ary
//! [`merge_states`] takes `[n, num_heads, head_dim]` and `[n, num_heads]`. Slices may be longer
//! than required; only the leading elements are read or written. An lse value must be finite or
//! `−inf` (NaN and `+inf` are rejected). Terms of weight 0 are skipped, so the output row of an
//! empty state is never read.
use ferrinfer_kernels::math::fast::{exp2, fmax, log2, rcp};
use ferrinfer_kernels::math::softmax::{clamp_ref, merge_weights};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::validate::at_least;

/// Checks `num_heads`/`head_dim` and returns `num_heads * head_dim`.
fn geometry(op: &'static str, num_heads: usize, head_dim: usize) -> Result<usize> {
    if num_heads == 0 {
        return Err(Error::invalid(op, "num_heads", "must be positive"));
    }
    if head_dim == 0 {
        return Err(Error::invalid(op, "head_dim", "must be positive"));
    }
    num_heads.checked_mul(head_dim).ok_or(Error::Overflow {
        op,
        what: "state elements",
    })
}

/// `Err(InvalidArgument)` if any lse value is NaN or `+inf`.
fn check_lse(op: &'static str, what: &'static str, lse: &[f32]) -> Result<()> {
    match lse.iter().position(|l| l.is_nan() || *l == f32::INFINITY) {
        Some(i) => Err(Error::invalid(
            op,
            what,
            format!("lse[{i}] = {} (must be finite or -inf)", lse[i]),
        )),
        None => Ok(()),
    }
}

/// `o = w_a·a + w_b·b`, skipping zero-weight terms (whose rows may be anything).
fn combine(o: &mut [f32], wa: f32, a: &[f32], wb: f32, b: &[f32]) {
    match (wa != 0.0, wb != 0.0) {
        (true, true) => {
            for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
                *o = wa * x + wb * y;
            }
        }
        (true, false) => o.iter_mut().zip(a).for_each(|(o, &x)| *o = wa * x),
        (false, true) => o.iter_mut().zip(b).for_each(|(o, &y)| *o = wb * y),
        (false, false) => o.fill(0.0),
    }
}

/// Merges two attention states per head: `(o_a, lse_a) ⊕ (o_b, lse_b) → (o, lse)`.
///
/// `o_a`, `o_b`, `o`: `[num_heads, head_dim]` f32; `lse_a`, `lse_b`, `lse`: `[num_heads]` base 2.
///
/// # Errors
/// [`Error::InvalidArgument`] for zero `num_heads`/`head_dim` or an lse input that is NaN or
/// `+inf`; [`Error::Shape`] when a slice is too short; [`Error::Overflow`] when
/// `num_heads * head_dim` overflows. Nothing is written on error.
#[allow(clippy::too_many_arguments)]
pub fn merge_state(
    num_heads: usize,
    head_dim: usize,
    o_a: &[f32],
    lse_a: &[f32],
    o_b: &[f32],
    lse_b: &[f32],
    o: &mut [f32],
    lse: &mut [f32],
) -> Result<()> {
    const OP: &str = "cpu::merge_state";
    let n = geometry(OP, num_heads, head_dim)?;
    at_least(OP, "o_a elements", n, o_a.len())?;
    at_least(OP, "o_b elements", n, o_b.len())?;
    at_least(OP, "o elements", n, o.len())?;
    at_least(OP, "lse_a elements", num_heads, lse_a.len())?;
    at_least(OP, "lse_b elements", num_heads, lse_b.len())?;
    at_least(OP, "lse elements", num_heads, lse.len())?;
    check_lse(OP, "lse_a", &lse_a[..num_heads])?;
    check_lse(OP, "lse_b", &lse_b[..num_heads])?;
    o[..n]
        .par_chunks_mut(head_dim)
        .zip(lse[..num_heads].par_iter_mut())
        .enumerate()
        .for_each(|(h, (row, l))| {
            let (wa, wb, m) = merge_weights(lse_a[h], lse_b[h]);
            let r = h * head_dim..(h + 1) * head_dim;
            combine(row, wa, &o_a[r.clone()], wb, &o_b[r]);
            *l = m;
        });
    Ok(())
}

/// Merges `(o_other, lse_other)` into `(o, lse)` in place, per head.
///
/// Same layouts, semantics and errors as [`merge_state`] (with `(o, lse)` as state `a`; its lse
/// values are validated too). Nothing is written on error.
pub fn merge_state_in_place(
    num_heads: usize,
    head_dim: usize,
    o: &mut [f32],
    lse: &mut [f32],
    o_other: &[f32],
    lse_other: &[f32],
) -> Result<()> {
    const OP: &str = "cpu::merge_state_in_place";
    let n = geometry(OP, num_heads, head_dim)?;
    at_least(OP, "o elements", n, o.len())?;
    at_least(OP, "o_other elements", n, o_other.len())?;
    at_least(OP, "lse elements", num_heads, lse.len())?;
    at_least(OP, "lse_other elements", num_heads, lse_other.len())?;
    check_lse(OP, "lse", &lse[..num_heads])?;
    check_lse(OP, "lse_other", &lse_other[..num_heads])?;
    o[..n]
        .par_chunks_mut(head_dim)
        .zip(lse[..num_heads].par_iter_mut())
        .enumerate()
        .for_each(|(h, (row, l))| {
            let (wa, wb, m) = merge_weights(*l, lse_other[h]);
            let b = &o_other[h * head_dim..(h + 1) * head_dim];
            match (wa != 0.0, wb != 0.0) {
                (true, true) => {
                    for (o, &y) in row.iter_mut().zip(b) {
                        *o = wa * *o + wb * y;
                    }
                }
                (true, false) => row.iter_mut().for_each(|o| *o *= wa),
                (false, true) => row.iter_mut().zip(b).for_each(|(o, &y)| *o = wb * y),
                (false, false) => row.fill(0.0),
            }
            *l = m;
        });
    Ok(())
}

/// Merges `n` attention states per head: `states_o [n, num_heads, head_dim]`,
/// `states_lse [n, num_heads]` → `o [num_heads, head_dim]`, `lse [num_heads]`.
///
/// Computed like the device's split-KV merge: `M = max_c lse_c`,
/// `w_c = 2^(lse_c − M) / Σ_c 2^(lse_c − M)`, `o = Σ_c w_c·o_c`,
/// `lse = M + log2 Σ_c 2^(lse_c − M)` — the n-ary form of [`merge_state`]. `n = 0`, or every
/// state empty, gives `o = 0` and `lse = −inf`.
///
/// # Errors
/// As [`merge_state`]; also [`Error::Overflow`] when `n * num_heads * head_dim` overflows.
pub fn merge_states(
    n: usize,
    num_heads: usize,
    head_dim: usize,
    states_o: &[f32],
    states_lse: &[f32],
    o: &mut [f32],
    lse: &mut [f32],
) -> Result<()> {
    const OP: &str = "cpu::merge_states";
    let per = geometry(OP, num_heads, head_dim)?;
    let overflow = Error::Overflow {
        op: OP,
        what: "states elements",
    };
    let need_o = n.checked_mul(per).ok_or(overflow)?;
    let need_l = n.checked_mul(num_heads).ok_or(Error::Overflow {
        op: OP,
        what: "states lse elements",
    })?;
    at_least(OP, "states_o elements", need_o, states_o.len())?;
    at_least(OP, "states_lse elements", need_l, states_lse.len())?;
    at_least(OP, "o elements", per, o.len())?;
    at_least(OP, "lse elements", num_heads, lse.len())?;
    check_lse(OP, "states_lse", &states_lse[..need_l])?;
    o[..per]
        .par_chunks_mut(head_dim)
        .zip(lse[..num_heads].par_iter_mut())
        .enumerate()
        .for_each(|(h, (row, l))| {
            let lse_c = |c: usize| states_lse[c * num_heads + h];
            let m = (0..n).map(lse_c).fold(f32::NEG_INFINITY, fmax);
            let mr = clamp_ref(m);
            let sum: f32 = (0..n).map(|c| exp2(lse_c(c) - mr)).sum();
            row.fill(0.0);
            if sum > 0.0 {
                let inv = rcp(sum);
                for c in 0..n {
                    let w = exp2(lse_c(c) - mr) * inv;
                    if w != 0.0 {
                        let src = &states_o[(c * num_heads + h) * head_dim..][..head_dim];
                        for (o, &x) in row.iter_mut().zip(src) {
                            *o += w * x;
                        }
                    }
                }
                *l = m + log2(sum);
            } else {
                *l = f32::NEG_INFINITY;
            }
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NI: f32 = f32::NEG_INFINITY;

    #[test]
    fn two_empty_states_give_zero_and_neg_inf() {
        let mut o = [f32::NAN; 4];
        let mut l = [f32::NAN; 2];
        // Rows of empty states are never read, even when they hold garbage.
        let junk = [f32::NAN; 4];
        merge_state(2, 2, &junk, &[NI, NI], &junk, &[NI, NI], &mut o, &mut l).unwrap();
        assert_eq!(o, [0.0; 4]);
        assert_eq!(l, [NI, NI]);
        merge_states(3, 2, 2, &[f32::NAN; 12], &[NI; 6], &mut o, &mut l).unwrap();
        assert_eq!(o, [0.0; 4]);
        assert_eq!(l, [NI, NI]);
        let mut o = [1.0f32; 4];
        let mut l = [NI; 2];
        merge_state_in_place(2, 2, &mut o, &mut l, &junk, &[NI, NI]).unwrap();
        assert_eq!(o, [0.0; 4]);
    }

    #[test]
    fn zero_states_merge_to_empty() {
        let mut o = [f32::NAN; 3];
        let mut l = [f32::NAN];
        merge_states(0, 1, 3, &[], &[], &mut o, &mut l).unwrap();
        assert_eq!(o, [0.0; 3]);
        assert_eq!(l, [NI]);
    }

    #[test]
    fn empty_is_the_identity() {
        let x = [0.25f32, -3.5, 7.0];
        let mut o = [f32::NAN; 3];
        let mut l = [f32::NAN];
        merge_state(1, 3, &[f32::NAN; 3], &[NI], &x, &[1.5], &mut o, &mut l).unwrap();
        assert_eq!((o, l), (x, [1.5]));
        merge_state(1, 3, &x, &[1.5], &[f32::NAN; 3], &[NI], &mut o, &mut l).unwrap();
        assert_eq!((o, l), (x, [1.5]));
        let mut s = [f32::NAN; 3];
        let mut ls = [NI];
        merge_state_in_place(1, 3, &mut s, &mut ls, &x, &[1.5]).unwrap();
        assert_eq!((s, ls), (x, [1.5]));
    }

    #[test]
    fn equal_lse_averages_and_adds_one_bit() {
        let mut o = [0.0f32; 2];
        let mut l = [0.0f32];
        merge_state(
            1,
            2,
            &[1.0, 2.0],
            &[3.0],
            &[3.0, 6.0],
            &[3.0],
            &mut o,
            &mut l,
        )
        .unwrap();
        assert_eq!((o, l), ([2.0, 4.0], [4.0]));
        merge_states(2, 1, 2, &[1.0, 2.0, 3.0, 6.0], &[3.0, 3.0], &mut o, &mut l).unwrap();
        assert_eq!((o, l), ([2.0, 4.0], [4.0]));
    }

    #[test]
    fn n_ary_agrees_with_pairwise_folds() {
        let (heads, d, n) = (3usize, 5usize, 4usize);
        let so: Vec<f32> = (0..n * heads * d)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let sl: Vec<f32> = (0..n * heads)
            .map(|i| {
                if i == 4 {
                    NI
                } else {
                    (i as f32 * 1.3).cos() * 20.0
                }
            })
            .collect();
        let mut o = vec![0.0f32; heads * d];
        let mut l = vec![0.0f32; heads];
        merge_states(n, heads, d, &so, &sl, &mut o, &mut l).unwrap();
        let mut acc = vec![0.0f32; heads * d];
        let mut acc_l = vec![NI; heads];
        for c in 0..n {
            let (co, cl) = (&so[c * heads * d..][..heads * d], &sl[c * heads..][..heads]);
            merge_state_in_place(heads, d, &mut acc, &mut acc_l, co, cl).unwrap();
        }
        for (a, b) in o.iter().zip(&acc).chain(l.iter().zip(&acc_l)) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn bad_inputs_are_typed_errors_and_write_nothing() {
        let mut o = [9.0f32; 4];
        let mut l = [9.0f32; 2];
        let x = [1.0f32; 4];
        let lx = [0.0f32; 2];
        let shape = |e: Error| matches!(e, Error::Shape { .. });
        let invalid = |e: Error| matches!(e, Error::InvalidArgument { .. });
        assert!(shape(
            merge_state(2, 2, &x[..3], &lx, &x, &lx, &mut o, &mut l).unwrap_err()
        ));
        assert!(shape(
            merge_state(2, 2, &x, &lx, &x, &lx[..1], &mut o, &mut l).unwrap_err()
        ));
        assert!(shape(
            merge_state(2, 2, &x, &lx, &x, &lx, &mut o[..3], &mut l).unwrap_err()
        ));
        assert!(shape(
            merge_state(2, 2, &x, &lx, &x, &lx, &mut o, &mut l[..1]).unwrap_err()
        ));
        assert!(invalid(
            merge_state(2, 2, &x, &[0.0, f32::NAN], &x, &lx, &mut o, &mut l).unwrap_err()
        ));
        assert!(invalid(
            merge_state(2, 2, &x, &lx, &x, &[f32::INFINITY, 0.0], &mut o, &mut l).unwrap_err()
        ));
        assert!(invalid(
            merge_state(0, 2, &x, &lx, &x, &lx, &mut o, &mut l).unwrap_err()
        ));
        assert!(invalid(
            merge_state(2, 0, &x, &lx, &x, &lx, &mut o, &mut l).unwrap_err()
        ));
        assert!(shape(
            merge_states(2, 2, 2, &[0.0; 7], &[0.0; 4], &mut o, &mut l).unwrap_err()
        ));
        assert!(shape(
            merge_states(2, 2, 2, &[0.0; 8], &[0.0; 3], &mut o, &mut l).unwrap_err()
        ));
        assert!(invalid(
            merge_states(1, 2, 2, &x, &[f32::NAN, 0.0], &mut o, &mut l).unwrap_err()
        ));
        assert!(matches!(
            merge_states(usize::MAX, 2, 2, &x, &lx, &mut o, &mut l).unwrap_err(),
            Error::Overflow { .. }
        ));
        assert!(shape(
            merge_state_in_place(2, 2, &mut o, &mut l, &x[..3], &lx).unwrap_err()
        ));
        assert_eq!((o, l), ([9.0; 4], [9.0; 2]));
        let mut bad = [f32::NAN, 0.0];
        assert!(invalid(
            merge_state_in_place(2, 2, &mut o, &mut bad, &x, &lx).unwrap_err()
        ));
        assert_eq!(o, [9.0; 4]);
    }
}
