//! Rotary position embedding parameters: the per-pair inverse frequencies that RoPE rotates by,
//! computed once on the host (Llama's base-θ schedule, linear and Llama-3.1 scaling, or a
//! model's own per-pair factors) and read by the CPU and GPU RoPE ops.
use crate::error::{Error, Result};

const OP: &str = "rope";

/// Which elements of a head form a rotated pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(2i, 2i+1)`: GPT-J / llama.cpp's layout of GGUF Llama weights (whose Q/K rows the
    /// GGUF converter permuted so that this layout holds).
    Interleaved,
    /// Pairs `(i, i + rotary_dim/2)`: Hugging Face's `rotate_half` (FlashInfer's default).
    Half,
}

/// Frequency scaling applied on top of the base-θ schedule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    /// None.
    None,
    /// Positions divided by `factor` (every frequency divided by it).
    Linear {
        /// The factor (> 0).
        factor: f32,
    },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        /// Overall factor (8 for Llama 3.1).
        factor: f32,
        /// Wavelengths above `original_context / low_freq_factor` are divided by `factor`.
        low_freq_factor: f32,
        /// Wavelengths below `original_context / high_freq_factor` are kept.
        high_freq_factor: f32,
        /// The pre-training context length.
        original_context: usize,
    },
}

/// RoPE of one model: base, rotated dimensions, scaling, pairing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeConfig {
    /// Base θ (10 000 for Llama 2, 500 000 for Llama 3, 100 000 for SmolLM2).
    pub theta: f32,
    /// Rotated elements per head (even; usually the head dim).
    pub rotary_dim: usize,
    /// Frequency scaling.
    pub scaling: RopeScaling,
    /// Pairing.
    pub style: RopeStyle,
}

impl RopeConfig {
    /// Checks the parameters.
    pub fn validate(&self, head_dim: usize) -> Result<()> {
        if !(self.theta.is_finite() && self.theta > 1.0) {
            return Err(Error::invalid(
                OP,
                "theta",
                format!("{} (must be > 1)", self.theta),
            ));
        }
        if self.rotary_dim == 0 || !self.rotary_dim.is_multiple_of(2) || self.rotary_dim > head_dim
        {
            return Err(Error::invalid(
                OP,
                "rotary_dim",
                format!("{} (even, in (0, {head_dim}])", self.rotary_dim),
            ));
        }
        let ok = |f: f32| f.is_finite() && f > 0.0;
        match self.scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } if ok(factor) => {}
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_context,
            } if ok(factor)
                && ok(low_freq_factor)
                && ok(high_freq_factor)
                && high_freq_factor > low_freq_factor
                && original_context > 0 => {}
            s => return Err(Error::invalid(OP, "scaling", format!("{s:?}"))),
        }
        Ok(())
    }

    /// The `rotary_dim / 2` inverse frequencies (radians per position) of the rotated pairs.
    /// `factors` (a model's own per-pair divisors, llama.cpp's `rope_freqs` tensor) divide them
    /// when given.
    pub fn inv_freq(&self, head_dim: usize, factors: Option<&[f32]>) -> Result<Vec<f32>> {
        self.validate(head_dim)?;
        let half = self.rotary_dim / 2;
        if let Some(f) = factors {
            if f.len() != half || f.iter().any(|&x| !(x.is_finite() && x > 0.0)) {
                return Err(Error::invalid(
                    OP,
                    "frequency factors",
                    format!("{} positive values expected", half),
                ));
            }
        }
        let theta = self.theta as f64;
        Ok((0..half)
            .map(|i| {
                let base = 1.0 / theta.powf((2 * i) as f64 / self.rotary_dim as f64);
                let scaled = match self.scaling {
                    RopeScaling::None => base,
                    RopeScaling::Linear { factor } => base / factor as f64,
                    RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_context,
                    } => llama3(
                        base,
                        factor as f64,
                        low_freq_factor as f64,
                        high_freq_factor as f64,
                        original_context as f64,
                    ),
                };
                let div = factors.map_or(1.0, |f| f[i] as f64);
                (scaled / div) as f32
            })
            .collect())
    }
}

/// Llama 3.1: long wavelengths slowed by `factor`, short ones kept, a smooth blend between.
fn llama3(freq: f64, factor: f64, low: f64, high: f64, original: f64) -> f64 {
    let wavelen = 2.0 * std::f64::consts::PI / freq;
    let (low_wavelen, high_wavelen) = (original / low, original / high);
    if wavelen < high_wavelen {
        freq
    } else if wavelen > low_wavelen {
        freq / factor
    } else {
        let smooth = (original / wavelen - low) / (high - low);
        (1.0 - smooth) * freq / factor + smooth * freq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(scaling: RopeScaling) -> RopeConfig {
        RopeConfig {
            theta: 500_000.0,
            rotary_dim: 128,
            scaling,
            style: RopeStyle::Half,
        }
    }

    #[test]
    fn base_schedule() {
        let f = cfg(RopeScaling::None).inv_freq(128, None).unwrap();
        assert_eq!(f.len(), 64);
        assert_eq!(f[0], 1.0);
        let want = 1.0 / 500_000f64.powf(2.0 * 10.0 / 128.0);
        assert!((f[10] as f64 - want).abs() <= want * 1e-7);
    }

    #[test]
    fn llama3_keeps_high_and_slows_low_frequencies() {
        let s = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context: 8192,
        };
        let base = cfg(RopeScaling::None).inv_freq(128, None).unwrap();
        let f = cfg(s).inv_freq(128, None).unwrap();
        assert_eq!(f[0], base[0]); // wavelength 2π < 2048: kept
        assert!((f[63] * 8.0 - base[63]).abs() <= base[63] * 1e-6); // longest: / 8
        for i in 0..64 {
            assert!(f[i] <= base[i] && f[i] >= base[i] / 8.0 * 0.999_999);
        }
    }

    #[test]
    fn bad_parameters_are_errors() {
        let mut c = cfg(RopeScaling::None);
        c.rotary_dim = 7;
        assert!(c.inv_freq(128, None).is_err());
        c.rotary_dim = 256;
        assert!(c.inv_freq(128, None).is_err());
        let c = cfg(RopeScaling::Linear { factor: f32::NAN });
        assert!(c.inv_freq(128, None).is_err());
        let c = cfg(RopeScaling::None);
        assert!(c.inv_freq(128, Some(&[1.0; 3])).is_err());
        assert!(c.inv_freq(128, Some(&[0.0; 64])).is_err());
    }
}
