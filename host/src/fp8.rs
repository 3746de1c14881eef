//! fp8 KV storage: [`Fp8<F>`], one byte per element in format `F` ([`E4m3`] or [`E5m2`], the
//! device crate's codecs, so host and device quantise identically), and [`KvScales`], the
//! per-tensor `k_scale` / `v_scale` of vLLM and FlashInfer: a stored value times its scale is
//! the real value. Appends quantise `x / scale` (round to nearest even, saturating, NaN stays
//! NaN); attention dequantises on the fly. Queries and outputs stay f16/bf16.
use std::marker::PhantomData;

use ferrinfer_kernels::math::fp8;
pub use ferrinfer_kernels::math::fp8::{E4m3, E5m2, Fp8Format, Fp8Kind};

use crate::dtype::{KvDtype, KvElem};
use crate::error::{Error, Result};

/// One fp8 code of format `F` (a KV page pool's element type).
#[repr(transparent)]
pub struct Fp8<F> {
    bits: u8,
    _format: PhantomData<F>,
}

impl<F> Clone for Fp8<F> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F> Copy for Fp8<F> {}

impl<F> PartialEq for Fp8<F> {
    fn eq(&self, other: &Self) -> bool {
        self.bits == other.bits
    }
}

impl<F> Eq for Fp8<F> {}

impl<F> Default for Fp8<F> {
    /// The code of +0.
    fn default() -> Self {
        Self::from_bits(0)
    }
}

impl<F: Fp8Format> std::fmt::Debug for Fp8<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({:#04x} = {})", F::NAME, self.bits, self.to_f32())
    }
}

impl<F> Fp8<F> {
    /// The code `bits`.
    pub const fn from_bits(bits: u8) -> Self {
        Self {
            bits,
            _format: PhantomData,
        }
    }

    /// The code.
    pub const fn to_bits(self) -> u8 {
        self.bits
    }
}

impl<F: Fp8Format> Fp8<F> {
    /// The code stored for the real value `x` under `scale`: `x / scale`, rounded to nearest
    /// even, saturated to the format's largest finite value, NaN kept.
    pub fn quantize(x: f32, scale: f32) -> Self {
        Self::from_bits(fp8::quantize::<F>(x, scale))
    }

    /// The code's value before its scale (exact).
    pub fn to_f32(self) -> f32 {
        F::decode(self.bits)
    }

    /// The real value under `scale`: the code's value times `scale`.
    pub fn dequantize(self, scale: f32) -> f32 {
        self.to_f32() * scale
    }
}

// SAFETY: `repr(transparent)` over a `u8`: plain bytes, valid for any bit pattern (zero too).
unsafe impl<F: Fp8Format> cudarc::driver::DeviceRepr for Fp8<F> {}
// SAFETY: as above; all-zero bits are the code of +0.
unsafe impl<F: Fp8Format> cudarc::driver::ValidAsZeroBits for Fp8<F> {}

impl<F: Fp8Format> KvElem for Fp8<F> {
    const KV_DTYPE: KvDtype = match F::KIND {
        Fp8Kind::E4m3 => KvDtype::E4m3,
        Fp8Kind::E5m2 => KvDtype::E5m2,
    };
    #[inline(always)]
    fn load(self) -> f32 {
        self.to_f32()
    }
}

/// The checks every fp8 run makes before any launch: the op reads format `F` (`reads`, set by
/// its `set_kv_dtype`) and the scales are finite and > 0; `InvalidArgument` naming `kv dtype`
/// or the bad scale otherwise.
pub(crate) fn check_run<F: Fp8Format>(
    op: &'static str,
    reads: KvDtype,
    scales: KvScales,
) -> Result<()> {
    if Fp8::<F>::KV_DTYPE != reads {
        return Err(Error::invalid(
            op,
            "kv dtype",
            format!(
                "the op reads {reads} K/V, the cache holds {}",
                Fp8::<F>::KV_DTYPE
            ),
        ));
    }
    scales.validate(op)
}

/// Per-tensor scales of an fp8 KV cache (stored × scale = real), passed at run time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KvScales {
    /// Scale of K.
    pub k: f32,
    /// Scale of V.
    pub v: f32,
}

impl KvScales {
    /// Scale 1 for both (what a 16-bit cache is read with).
    pub const ONE: KvScales = KvScales { k: 1.0, v: 1.0 };

    /// Scales `k` and `v`, validated ([`KvScales::validate`]).
    pub fn new(k: f32, v: f32) -> Result<Self> {
        let s = KvScales { k, v };
        s.validate("kv_scales")?;
        Ok(s)
    }

    /// `Err(InvalidArgument)` naming `k_scale` or `v_scale` unless both are finite and > 0
    /// (a zero, negative, infinite or NaN scale would silently zero, flip or poison the
    /// attention).
    pub fn validate(&self, op: &'static str) -> Result<()> {
        for (what, s) in [("k_scale", self.k), ("v_scale", self.v)] {
            if !(s.is_finite() && s > 0.0) {
                return Err(Error::invalid(
                    op,
                    what,
                    format!("{s} (must be finite and > 0)"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_are_validated() {
        assert!(KvScales::new(0.5, 2.0).is_ok());
        for bad in [0.0, -1.0, f32::NAN, f32::INFINITY, -0.0] {
            let e = KvScales::new(bad, 1.0).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::InvalidArgument {
                        what: "k_scale",
                        ..
                    }
                ),
                "{e}"
            );
            let e = KvScales::new(1.0, bad).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::InvalidArgument {
                        what: "v_scale",
                        ..
                    }
                ),
                "{e}"
            );
        }
    }

    #[test]
    fn quantize_applies_the_scale() {
        let c = Fp8::<E4m3>::quantize(3.0, 0.5);
        assert_eq!(c.to_f32(), 6.0);
        assert_eq!(c.dequantize(0.5), 3.0);
        // Saturates at 448 × scale.
        assert_eq!(Fp8::<E4m3>::quantize(1e9, 2.0).dequantize(2.0), 896.0);
        assert!(Fp8::<E5m2>::quantize(f32::NAN, 1.0).to_f32().is_nan());
        assert_eq!(std::mem::size_of::<Fp8<E4m3>>(), 1);
    }
}
