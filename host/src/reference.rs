//! The f64 attention oracle used by the tests: a naive, two-pass softmax over explicitly masked
//! keys, written independently of the kernels' math (`ferrinfer_kernels::math`) so that a bug
//! there cannot hide by appearing on both sides.
//!
//! Semantics (every op's, GPU and CPU): query row `i` of `qo_len` sits at position
//! `pos_i = kv_len − qo_len + i`; key `j` is allowed iff `j <= pos_i` (causal only) and
//! `j >= pos_i − w` (sliding window `w`). Logit `t_j = sm_scale·q·k_j`, or
//! `c·tanh(sm_scale·q·k_j / c)` with soft-cap `c`. Output `o_i = Σ softmax(t)_j v_j`,
//! `lse_i = log2 Σ_j e^{t_j}` (base 2, FlashInfer's convention). No allowed key: `o_i = 0`,
//! `lse_i = −inf`. GQA: query head `h` reads KV head `h / (num_qo_heads / num_kv_heads)`.
//! A custom mask ([`attention_masked`], row-major `[qo_len, kv_len]` booleans, unpacked: the
//! oracle does not share the packed layout's indexing) further hides key `j` from row `i` when
//! entry `i·kv_len + j` is false.
use crate::checked;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::heads::HeadConfig;
use crate::options::AttentionOptions;

/// Oracle output: `o [qo_len, num_qo_heads, head_dim]`, `lse [qo_len, num_qo_heads]` (base 2).
#[derive(Clone, Debug, PartialEq)]
pub struct Reference {
    /// Attention output.
    pub o: Vec<f64>,
    /// Base-2 log-sum-exp of the logits (`−inf` for rows with no allowed key).
    pub lse: Vec<f64>,
}

/// Whether key `j` is visible to query row `i` (of `qo_len`) over `kv_len` keys.
pub fn allowed(i: usize, j: usize, qo_len: usize, kv_len: usize, opts: &AttentionOptions) -> bool {
    // In i128, where no usize input can wrap or change sign (a window of 2^63 or more cast to
    // i64 became negative and masked every key).
    let pos = kv_len as i128 - qo_len as i128 + i as i128;
    let j = j as i128;
    if opts.causal && j > pos {
        return false;
    }
    if let Some(w) = opts.window_left {
        if j < pos - w as i128 {
            return false;
        }
    }
    true
}

/// Single-request attention: q `[qo_len, Hq, D]`, k and v `[kv_len, Hkv, D]`, all contiguous.
pub fn attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    heads: &HeadConfig,
    qo_len: usize,
    kv_len: usize,
    opts: &AttentionOptions,
) -> Result<Reference> {
    attention_masked(q, k, v, heads, qo_len, kv_len, opts, None)
}

/// [`attention`] with a custom mask: `mask[i·kv_len + j]` false hides key `j` from query row
/// `i` (on top of the causal and window masks of `opts`).
#[allow(clippy::too_many_arguments)]
pub fn attention_masked(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    heads: &HeadConfig,
    qo_len: usize,
    kv_len: usize,
    opts: &AttentionOptions,
    mask: Option<&[bool]>,
) -> Result<Reference> {
    heads.validate("reference")?;
    let (hq, hkv, d) = (heads.num_qo_heads, heads.num_kv_heads, heads.head_dim);
    const OP: &str = "reference";
    let nq = checked::product(OP, "q elements", &[qo_len, hq, d])?;
    let nkv = checked::product(OP, "k/v elements", &[kv_len, hkv, d])?;
    if q.len() != nq {
        return Err(Error::shape(OP, "q elements", nq, q.len()));
    }
    if k.len() != nkv || v.len() != nkv {
        return Err(Error::shape(OP, "k/v elements", nkv, k.len().min(v.len())));
    }
    if let Some(m) = mask {
        let n = checked::mul(OP, "mask entries", qo_len, kv_len)?;
        if m.len() != n {
            return Err(Error::shape(OP, "mask entries", n, m.len()));
        }
    }
    let scale = opts.sm_scale.map_or(1.0 / (d as f64).sqrt(), |s| s as f64);
    let group = hq / hkv;
    // Sized like q and k (which exist), so these allocations are bounded by the inputs.
    let mut o = vec![0.0f64; nq];
    let mut lse = vec![f64::NEG_INFINITY; qo_len * hq];
    let mut logits = vec![0.0f64; kv_len];
    for i in 0..qo_len {
        for h in 0..hq {
            let kh = h / group;
            let qrow = &q[(i * hq + h) * d..][..d];
            let mut any = false;
            let mut max = f64::NEG_INFINITY;
            for (j, t) in logits.iter_mut().enumerate() {
                if !allowed(i, j, qo_len, kv_len, opts) || mask.is_some_and(|m| !m[i * kv_len + j])
                {
                    *t = f64::NEG_INFINITY;
                    continue;
                }
                let krow = &k[(j * hkv + kh) * d..][..d];
                let s: f64 = qrow.iter().zip(krow).map(|(a, b)| a * b).sum();
                let mut x = scale * s;
                if let Some(c) = opts.soft_cap {
                    let c = c as f64;
                    x = c * (x / c).tanh();
                }
                *t = x;
                any = true;
                max = max.max(x);
            }
            if !any {
                continue;
            }
            let mut denom = 0.0;
            let orow = &mut o[(i * hq + h) * d..][..d];
            for (j, &t) in logits.iter().enumerate() {
                if t == f64::NEG_INFINITY {
                    continue;
                }
                let p = (t - max).exp();
                denom += p;
                let vrow = &v[(j * hkv + kh) * d..][..d];
                for (acc, &x) in orow.iter_mut().zip(vrow) {
                    *acc += p * x;
                }
            }
            for acc in orow.iter_mut() {
                *acc /= denom;
            }
            lse[i * hq + h] = (max + denom.ln()) * std::f64::consts::LOG2_E;
        }
    }
    Ok(Reference { o, lse })
}

/// Relative L2 error `‖out − ref‖ / ‖ref‖` (absolute L2 when `‖ref‖ = 0`); NaN in `out` gives
/// `+inf`.
pub fn rel_l2(out: &[f64], reference: &[f64]) -> f64 {
    let mut num = 0.0;
    let mut den = 0.0;
    for (&a, &b) in out.iter().zip(reference) {
        if a.is_nan() {
            return f64::INFINITY;
        }
        num += (a - b) * (a - b);
        den += b * b;
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// Maximum absolute difference (`+inf` on NaN; equal infinities count as 0).
pub fn max_abs(out: &[f64], reference: &[f64]) -> f64 {
    out.iter()
        .zip(reference)
        .map(|(&a, &b)| {
            if a.is_nan() || b.is_nan() {
                f64::INFINITY
            } else if a == b {
                0.0
            } else {
                (a - b).abs()
            }
        })
        .fold(0.0, f64::max)
}

/// Accuracy bounds for an output of `dtype` computed with f32 accumulation, against the f64
/// oracle fed the *same rounded inputs*.
///
/// Why these numbers: the output is rounded to the storage type once (relative step 2^-8 for
/// bf16, 2^-11 for f16, i.e. RMS relative error ≈ 2^-9.8 / 2^-12.8 ≈ 1.1e-3 / 1.4e-4), and the
/// f32 pipeline adds `ex2.approx` (2 ulp) and summation error far below that. The bounds leave
/// about 5× headroom over the rounding floor (FlashInfer's own bf16 decode measured 2.5e-3 on
/// the H100): relative L2 ≤ 5e-3 (bf16) / 1e-3 (f16); max abs ≤ 3e-2 / 4e-3 for outputs of
/// magnitude ≤ 1. lse is f32 and never rounded to 16 bits: |Δlse| ≤ 1e-3 + 1e-4·|lse|
/// (`lg2.approx` and the f32 dot products).
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    /// Bound on ‖out − ref‖ / ‖ref‖.
    pub rel_l2: f64,
    /// Bound on max |out − ref|.
    pub max_abs: f64,
}

/// The tolerance for outputs stored as `dtype` (see [`Tolerance`]).
pub fn tolerance(dtype: DType) -> Tolerance {
    match dtype {
        DType::Bf16 => Tolerance {
            rel_l2: 5e-3,
            max_abs: 3e-2,
        },
        DType::F16 => Tolerance {
            rel_l2: 1e-3,
            max_abs: 4e-3,
        },
    }
}

/// Bound on the absolute lse error for a reference value `lse` (see [`Tolerance`]).
pub fn lse_tolerance(lse: f64) -> f64 {
    1e-3 + 1e-4 * lse.abs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads(hq: usize, hkv: usize, d: usize) -> HeadConfig {
        HeadConfig::new(hq, hkv, d).unwrap()
    }

    #[test]
    fn single_key_returns_its_value_and_logit() {
        let h = heads(1, 1, 2);
        let r = attention(
            &[1.0, 2.0],
            &[3.0, 4.0],
            &[5.0, 6.0],
            &h,
            1,
            1,
            &AttentionOptions::default(),
        )
        .unwrap();
        assert_eq!(r.o, vec![5.0, 6.0]);
        let t = 11.0 / 2f64.sqrt();
        assert!((r.lse[0] - t * std::f64::consts::LOG2_E).abs() < 1e-12);
    }

    #[test]
    fn empty_kv_gives_zero_and_neg_inf() {
        let h = heads(2, 1, 2);
        let r = attention(&[1.0; 4], &[], &[], &h, 1, 0, &AttentionOptions::default()).unwrap();
        assert_eq!(r.o, vec![0.0; 4]);
        assert!(r.lse.iter().all(|&l| l == f64::NEG_INFINITY));
    }

    #[test]
    fn equal_logits_average_values() {
        let h = heads(1, 1, 1);
        let r = attention(
            &[0.0],
            &[1.0, 2.0, 3.0],
            &[1.0, 2.0, 6.0],
            &h,
            1,
            3,
            &AttentionOptions::default(),
        )
        .unwrap();
        assert!((r.o[0] - 3.0).abs() < 1e-12);
        assert!((r.lse[0] - 3f64.log2()).abs() < 1e-12);
    }

    #[test]
    fn masks_follow_the_offset_convention() {
        let o = AttentionOptions::default().with_causal(true);
        // 2 queries over 4 keys: query 0 sits at position 2, query 1 at 3.
        assert!(allowed(0, 2, 2, 4, &o) && !allowed(0, 3, 2, 4, &o));
        assert!(allowed(1, 3, 2, 4, &o));
        let w = AttentionOptions::default().with_window_left(1);
        // Decode at position 9 with window 1 sees keys 8 and 9.
        assert!(!allowed(0, 7, 1, 10, &w) && allowed(0, 8, 1, 10, &w) && allowed(0, 9, 1, 10, &w));
        // Causal rows before the context start see nothing.
        assert!(!allowed(0, 0, 3, 2, &o));
    }

    #[test]
    fn gqa_maps_query_heads_to_kv_heads() {
        // 4 query heads, 2 KV heads, D = 1, one key: heads 0,1 read kv head 0; 2,3 read kv head 1.
        let h = heads(4, 2, 1);
        let r = attention(
            &[1.0; 4],
            &[0.5, 0.5],
            &[10.0, 20.0],
            &h,
            1,
            1,
            &AttentionOptions::default(),
        )
        .unwrap();
        assert_eq!(r.o, vec![10.0, 10.0, 20.0, 20.0]);
    }

    #[test]
    fn soft_cap_bounds_the_logit() {
        let h = heads(1, 1, 1);
        let o = AttentionOptions::default()
            .with_sm_scale(1.0)
            .with_soft_cap(2.0);
        let r = attention(&[100.0], &[100.0], &[1.0], &h, 1, 1, &o).unwrap();
        assert!((r.lse[0] - 2.0 * std::f64::consts::LOG2_E).abs() < 1e-9);
    }

    #[test]
    fn error_metrics() {
        assert_eq!(rel_l2(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert_eq!(rel_l2(&[f64::NAN], &[1.0]), f64::INFINITY);
        assert_eq!(max_abs(&[f64::NEG_INFINITY], &[f64::NEG_INFINITY]), 0.0);
        assert_eq!(max_abs(&[1.0, 5.0], &[1.5, 5.0]), 0.5);
    }
}
