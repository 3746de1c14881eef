//! The online-softmax state of a lane's two rows of a register tile (FlashInfer's `state_t`):
//! running maximum `m` of the base-2 logits and running sum `d = Σ 2^(x − m)`, with the tile
//! update, the quad reduction and the normalisation (`1/d`, `lse = m + log2 d`).
//!
//! Empty rows stay `m = −inf, d = 0`: every exponent is taken against `clamp_ref(m)` (never
//! `−inf − (−inf)`), and a row that saw no key writes zeros with `lse = −inf`. The scalar
//! form of the same state and its merge are `math::softmax` (tested on the host).
use crate::arch::warp;
use crate::attn::tile::RegTile;
use crate::math::fast::{exp2, fma, fmax};
use crate::math::softmax::{clamp_ref, State};

/// Running max and sum of a lane's two tile rows (`d` lane-partial until [`reduce_quad`]).
///
/// [`reduce_quad`]: RowState::reduce_quad
#[derive(Clone, Copy)]
pub(crate) struct RowState {
    pub(crate) m: [f32; 2],
    pub(crate) d: [f32; 2],
}

impl RowState {
    /// The state of rows that saw no key.
    pub(crate) const EMPTY: Self = Self {
        m: [f32::NEG_INFINITY; 2],
        d: [0.0; 2],
    };

    /// Folds key tile `s` in: `s` holds raw scores (`scale` the logit scale, folded into the
    /// exp2's FFMA) or base-2 logits (`scale` 1), masked keys at `−inf`. Turns `s` into the
    /// probabilities `2^(x − m_new)`, updates `m` and `d`, and returns the factor each row's
    /// output accumulated so far must be multiplied by.
    #[inline(always)]
    pub(crate) fn update<const N: usize>(
        &mut self,
        s: &mut RegTile<f32, N>,
        scale: f32,
    ) -> [f32; 2] {
        let mut r_scale = [1.0f32; 2];
        let mut mref = [0.0f32; 2];
        for hh in 0..2 {
            // The row's max over the quad's four lanes.
            let mut v = s.row_max(hh);
            v = fmax(v, warp::shfl_xor_f32(v, 1));
            v = fmax(v, warp::shfl_xor_f32(v, 2));
            let m_new = fmax(self.m[hh], v * scale);
            mref[hh] = clamp_ref(m_new);
            r_scale[hh] = exp2(self.m[hh] - mref[hh]);
            self.m[hh] = m_new;
        }
        s.exp2_rows(scale, mref);
        // Indexed (not `iter_mut`): the iterator form changes the Hopper kernels' schedule.
        #[allow(clippy::needless_range_loop)]
        for hh in 0..2 {
            self.d[hh] = fma(self.d[hh], r_scale[hh], s.row_sum(hh));
        }
        r_scale
    }

    /// Completes the row sums over the quad (each lane held its columns' part).
    #[inline(always)]
    pub(crate) fn reduce_quad(&mut self) {
        for dh in self.d.iter_mut() {
            *dh += warp::shfl_xor_f32(*dh, 1);
            *dh += warp::shfl_xor_f32(*dh, 2);
        }
    }

    /// Row half `hh` as a scalar [`State`] (for its normalisation: `1/d` and the lse).
    #[inline(always)]
    pub(crate) fn row(&self, hh: usize) -> State {
        State {
            m: self.m[hh],
            d: self.d[hh],
        }
    }
}
