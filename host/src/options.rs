//! Options shared by the attention ops (FlashInfer's `sm_scale`, `logits_soft_cap`,
//! `window_left`), with host-side validation.
use ferrinfer_kernels::math::softmax::LogitTransform;

use crate::error::{Error, Result};
use crate::heads::HeadConfig;

/// Attention options. `Default` is plain softmax attention with `sm_scale = 1/sqrt(head_dim)`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AttentionOptions {
    /// Softmax scale applied to `q·k`; `None` means `1/sqrt(head_dim)`.
    pub sm_scale: Option<f32>,
    /// Logits soft-cap `c > 0`: logits become `c · tanh(sm_scale · q·k / c)`.
    pub soft_cap: Option<f32>,
    /// Sliding window: a query at position `p` sees keys `j >= p - w` (so `w + 1` keys including
    /// itself). `None` disables the window.
    pub window_left: Option<usize>,
    /// Causal mask (prefill only; vacuous for decode).
    pub causal: bool,
}

impl AttentionOptions {
    /// Sets `sm_scale`.
    pub fn with_sm_scale(mut self, s: f32) -> Self {
        self.sm_scale = Some(s);
        self
    }

    /// Sets the logits soft-cap.
    pub fn with_soft_cap(mut self, c: f32) -> Self {
        self.soft_cap = Some(c);
        self
    }

    /// Sets the left sliding window.
    pub fn with_window_left(mut self, w: usize) -> Self {
        self.window_left = Some(w);
        self
    }

    /// Sets the causal flag.
    pub fn with_causal(mut self, causal: bool) -> Self {
        self.causal = causal;
        self
    }

    /// The effective softmax scale for `heads`.
    pub fn scale(&self, heads: &HeadConfig) -> f32 {
        self.sm_scale
            .unwrap_or_else(|| 1.0 / (heads.head_dim as f32).sqrt())
    }

    /// Validates the option values for op `op`: `sm_scale` finite, soft-cap finite and `> 0`,
    /// and the multipliers the kernels actually compute with (`sm_scale · log2 e`, or with a
    /// soft-cap `sm_scale / c` and `c · log2 e`; [`LogitTransform`]) finite, so no option that
    /// passes turns every logit into ±inf and every output into NaN. The default scale
    /// `1/sqrt(head_dim)` is at most 1 and is checked as 1.
    pub fn validate(&self, op: &'static str) -> Result<()> {
        if let Some(s) = self.sm_scale {
            if !s.is_finite() {
                return Err(Error::invalid(op, "sm_scale", format!("{s} is not finite")));
            }
        }
        if let Some(c) = self.soft_cap {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::invalid(
                    op,
                    "soft_cap",
                    format!("{c} must be finite and > 0"),
                ));
            }
        }
        let t = LogitTransform::new(self.sm_scale.unwrap_or(1.0), self.soft_cap);
        if !(t.pre.is_finite() && t.post.is_finite()) {
            return Err(Error::invalid(
                op,
                if self.soft_cap.is_some() {
                    "sm_scale / soft_cap"
                } else {
                    "sm_scale"
                },
                format!(
                    "sm_scale {:?} with soft_cap {:?} overflows f32 once scaled by log2(e)",
                    self.sm_scale, self.soft_cap
                ),
            ));
        }
        Ok(())
    }
}
