//! Online softmax in base 2, and the merge of attention states.
//!
//! Notation: logits are kept in the *scaled base-2 domain*,
//! `x_j = t_j · log2(e)` where `t_j` is the transformed logit (`sm_scale · q·k_j`, optionally
//! soft-capped). A running [`State`] holds `m = max_j x_j` and `d = Σ_j 2^(x_j − m)`; the output
//! accumulator `o = Σ_j 2^(x_j − m) v_j` lives beside it (in registers on the device). Finalising
//! gives `o / d` and `lse = m + log2(d)` — FlashInfer's base-2 log-sum-exp.
//!
//! The empty state is `m = −inf, d = 0`. Every update clamps the reference maximum to `−f32::MAX`
//! before subtracting, so `−inf − (−inf)` never appears and an all-masked row stays empty
//! (o = 0, lse = −inf) without NaN.
//!
//! Device users: `attn::state` and `attn::split` (the attention kernels), `merge.rs`; host
//! users: the CPU backend.

use super::fast::{exp2, fmax, log2, rcp, tanh};

/// log2(e), to move natural-exponent logits into the base-2 domain.
pub const LOG2_E: f32 = core::f32::consts::LOG2_E;

/// How a raw score `s = q·k` becomes a base-2 logit.
///
/// Without soft-cap: `x = s · pre` with `pre = sm_scale · log2 e`.
/// With soft-cap `c`: `x = post · tanh(s · pre)` with `pre = sm_scale / c`, `post = c · log2 e`,
/// i.e. `log2(e) · c · tanh(sm_scale · s / c)` — sm_scale is applied inside the tanh.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LogitTransform {
    /// Multiplier applied to the raw score first.
    pub pre: f32,
    /// Multiplier applied after `tanh` (soft-cap only).
    pub post: f32,
    /// 1 when soft-capping is on, 0 otherwise.
    pub soft_cap: u32,
    /// Keeps the struct 16 bytes; must be 0.
    pub reserved: u32,
}

impl LogitTransform {
    /// Builds the transform for `sm_scale` and an optional soft-cap `c > 0`.
    pub fn new(sm_scale: f32, soft_cap: Option<f32>) -> Self {
        match soft_cap {
            Some(c) if c > 0.0 => Self {
                pre: sm_scale / c,
                post: c * LOG2_E,
                soft_cap: 1,
                reserved: 0,
            },
            _ => Self {
                pre: sm_scale * LOG2_E,
                post: 1.0,
                soft_cap: 0,
                reserved: 0,
            },
        }
    }

    /// The base-2 logit of raw score `s`.
    #[inline(always)]
    pub fn apply(&self, s: f32) -> f32 {
        if self.soft_cap != 0 {
            self.post * tanh(s * self.pre)
        } else {
            s * self.pre
        }
    }
}

/// Running max and denominator of an online softmax (base 2).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct State {
    /// Running maximum of the base-2 logits seen so far (`−inf` when empty).
    pub m: f32,
    /// `Σ 2^(x_j − m)` over the logits seen so far (0 when empty).
    pub d: f32,
}

impl Default for State {
    fn default() -> Self {
        Self::EMPTY
    }
}

/// `max(m, −f32::MAX)`: the reference point used in exponent arguments.
#[inline(always)]
pub fn clamp_ref(m: f32) -> f32 {
    fmax(m, -f32::MAX)
}

impl State {
    /// The state of an empty set of keys.
    pub const EMPTY: State = State {
        m: f32::NEG_INFINITY,
        d: 0.0,
    };

    /// Moves the state to a new maximum `m_new >= self.m` and returns the factor every
    /// accumulator built against the old maximum must be multiplied by.
    #[inline(always)]
    pub fn rescale_to(&mut self, m_new: f32) -> f32 {
        let r = exp2(self.m - clamp_ref(m_new));
        self.d *= r;
        self.m = m_new;
        r
    }

    /// Adds one base-2 logit `x` (`−inf` = masked) whose maximum was already folded in with
    /// [`State::rescale_to`]; returns its weight `p = 2^(x − m)`.
    #[inline(always)]
    pub fn weight(&mut self, x: f32) -> f32 {
        let p = exp2(x - clamp_ref(self.m));
        self.d += p;
        p
    }

    /// Log-sum-exp (base 2) of the keys seen: `m + log2(d)`, `−inf` when empty.
    #[inline(always)]
    pub fn lse(&self) -> f32 {
        if self.d > 0.0 {
            self.m + log2(self.d)
        } else {
            f32::NEG_INFINITY
        }
    }

    /// Factor turning the accumulator into the normalised output: `1/d`, or 0 when empty.
    #[inline(always)]
    pub fn inv_denominator(&self) -> f32 {
        if self.d > 0.0 {
            rcp(self.d)
        } else {
            0.0
        }
    }

    /// Merges another (unnormalised) state into this one and returns the factors `(a, b)` by
    /// which this state's and the other state's accumulators must be scaled before adding them.
    #[inline(always)]
    pub fn merge(&mut self, other: State) -> (f32, f32) {
        let m = fmax(self.m, other.m);
        let mr = clamp_ref(m);
        let a = exp2(self.m - mr);
        let b = exp2(other.m - mr);
        self.d = self.d * a + other.d * b;
        self.m = m;
        (a, b)
    }
}

/// Weights for merging *normalised* states given by their base-2 lse values.
///
/// Returns `(w_a, w_b, lse)` with `o = w_a·o_a + w_b·o_b` and `w_a + w_b = 1` (both 0 and
/// `lse = −inf` when both inputs are empty). This is the merge of two attention states over
/// disjoint key sets (FlashInfer's `merge_state`).
#[inline(always)]
pub fn merge_weights(lse_a: f32, lse_b: f32) -> (f32, f32, f32) {
    let m = fmax(lse_a, lse_b);
    if m == f32::NEG_INFINITY {
        return (0.0, 0.0, f32::NEG_INFINITY);
    }
    let a = exp2(lse_a - m);
    let b = exp2(lse_b - m);
    let s = a + b;
    let inv = rcp(s);
    (a * inv, b * inv, m + log2(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold(xs: &[f32]) -> State {
        let mut st = State::EMPTY;
        for &x in xs {
            let m_new = fmax(st.m, x);
            st.rescale_to(m_new);
            st.weight(x);
        }
        st
    }

    fn lse_direct(xs: &[f32]) -> f32 {
        let m = xs.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        if m == f32::NEG_INFINITY {
            return m;
        }
        m + xs.iter().map(|x| (x - m).exp2()).sum::<f32>().log2()
    }

    #[test]
    fn empty_state_is_zero_and_neg_inf() {
        let st = fold(&[]);
        assert_eq!(st.lse(), f32::NEG_INFINITY);
        assert_eq!(st.inv_denominator(), 0.0);
        let st = fold(&[f32::NEG_INFINITY, f32::NEG_INFINITY]);
        assert_eq!(st.d, 0.0);
        assert!(!st.lse().is_nan());
        assert_eq!(st.lse(), f32::NEG_INFINITY);
    }

    #[test]
    fn single_token_has_weight_one() {
        let st = fold(&[3.25]);
        assert_eq!(st.d, 1.0);
        assert_eq!(st.lse(), 3.25);
    }

    #[test]
    fn online_equals_direct() {
        let xs = [1.0, -2.0, 7.5, f32::NEG_INFINITY, 0.25, 7.5, -30.0];
        let st = fold(&xs);
        assert!((st.lse() - lse_direct(&xs)).abs() < 1e-5);
    }

    #[test]
    fn merge_is_order_independent_and_matches_whole() {
        let xs = [0.5, 3.0, -1.0, 2.0, 9.0, -4.0, 1.5];
        for split in 0..=xs.len() {
            let (a, b) = xs.split_at(split);
            let mut sa = fold(a);
            let sb = fold(b);
            let mut sb2 = sb;
            sb2.merge(fold(a));
            sa.merge(sb);
            assert!((sa.lse() - lse_direct(&xs)).abs() < 1e-5, "split {split}");
            assert!((sa.lse() - sb2.lse()).abs() < 1e-6);
        }
    }

    #[test]
    fn merge_weights_cover_empty_cases() {
        assert_eq!(
            merge_weights(f32::NEG_INFINITY, f32::NEG_INFINITY),
            (0.0, 0.0, f32::NEG_INFINITY)
        );
        let (wa, wb, l) = merge_weights(f32::NEG_INFINITY, 2.0);
        assert_eq!((wa, wb, l), (0.0, 1.0, 2.0));
        let (wa, wb, l) = merge_weights(1.0, 1.0);
        assert_eq!((wa, wb, l), (0.5, 0.5, 2.0));
    }

    #[test]
    fn merge_weights_agree_with_state_merge() {
        let a = [0.5f32, 3.0, -1.0];
        let b = [2.0f32, 9.0];
        let (wa, wb, l) = merge_weights(fold(&a).lse(), fold(&b).lse());
        let all: Vec<f32> = a.iter().chain(b.iter()).cloned().collect();
        assert!((l - lse_direct(&all)).abs() < 1e-5);
        assert!((wa + wb - 1.0).abs() < 1e-6);
    }

    #[test]
    fn soft_cap_transform_bounds_logits() {
        let t = LogitTransform::new(0.125, Some(30.0));
        let x = t.apply(1e6);
        assert!((x - 30.0 * LOG2_E).abs() < 1e-3);
        let t = LogitTransform::new(0.125, None);
        assert_eq!(t.apply(8.0), LOG2_E);
    }
}
