//! The logits transform as a variant type with hooks ([`Logits`]): how a raw score `s = q·k`
//! becomes a base-2 logit, `x = s · pre` (scale) or `x = post · tanh(s · pre)` (soft-cap; see
//! [`LogitTransform`] for the constants the host precomputes). A new transform (an fp8 scale, a
//! bias) is a new type implementing [`Logits`].
use crate::attn::tile::RegTile;
use crate::math::fast::{fma, tanh};
use crate::math::softmax::LogitTransform;

/// A logits-transform variant, built from the launch's [`LogitTransform`].
pub(crate) trait Logits: Copy {
    /// The variant of a launch.
    fn new(tf: LogitTransform) -> Self;

    /// The base-2 logit of raw score `s`.
    fn logit(&self, s: f32) -> f32;

    /// The base-2 logit of a score already multiplied by the scale (`y = s · pre`, as when the
    /// query was scaled on load).
    fn logit_scaled(&self, y: f32) -> f32;

    /// The scale (`pre`) applied to raw scores.
    fn scale(&self) -> f32;

    /// Whether the softmax may take raw scores and fold the scale into its `exp2`: the
    /// transform is a positive scale only, so the max of raw scores is the max of logits.
    fn folds(&self) -> bool;

    /// Turns a tile of raw scores into logits, branching once per tile (per-score branches
    /// split an unrolled tile into basic blocks ptxas cannot schedule across); nothing when
    /// `folds` ([`Logits::folds`], evaluated once by the caller outside its loops).
    fn tile<const N: usize>(&self, s: &mut RegTile<f32, N>, folds: bool);

    /// The same without a branch: the soft-cap's `tanh` is computed and discarded when off
    /// (for code where a branch would wait on a tensor-core product in flight; the Hopper
    /// prefill, sm_90a images only).
    #[cfg_attr(not(target_feature = "sm_90a"), allow(dead_code))]
    fn tile_branchless<const N: usize>(&self, s: &mut RegTile<f32, N>);
}

/// Scale with an optional soft-cap, as the launch parameters give it.
#[derive(Clone, Copy)]
pub(crate) struct ScaleSoftCap(pub(crate) LogitTransform);

impl Logits for ScaleSoftCap {
    #[inline(always)]
    fn new(tf: LogitTransform) -> Self {
        Self(tf)
    }

    #[inline(always)]
    fn logit(&self, s: f32) -> f32 {
        let tf = self.0;
        if tf.soft_cap != 0 {
            tf.post * tanh(s * tf.pre)
        } else {
            s * tf.pre
        }
    }

    #[inline(always)]
    fn logit_scaled(&self, y: f32) -> f32 {
        let tf = self.0;
        if tf.soft_cap != 0 {
            tf.post * tanh(y)
        } else {
            y
        }
    }

    #[inline(always)]
    fn scale(&self) -> f32 {
        self.0.pre
    }

    #[inline(always)]
    fn folds(&self) -> bool {
        self.0.soft_cap == 0 && self.0.pre > 0.0
    }

    #[inline(always)]
    fn tile<const N: usize>(&self, s: &mut RegTile<f32, N>, folds: bool) {
        let tf = self.0;
        if tf.soft_cap != 0 {
            s.map(|x| tf.post * tanh(x * tf.pre));
        } else if !folds {
            s.map(|x| x * tf.pre);
        }
    }

    #[inline(always)]
    fn tile_branchless<const N: usize>(&self, s: &mut RegTile<f32, N>) {
        let tf = self.0;
        let (lin, cap) = if tf.soft_cap != 0 {
            (0.0, tf.post)
        } else {
            (1.0, 0.0)
        };
        s.map(|x| {
            let y = x * tf.pre;
            fma(y, lin, cap * tanh(y))
        });
    }
}
