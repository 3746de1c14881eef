//! The model kernels (`ferrinfer::ops::ModelKernels`: RMSNorm, residual-add + RMSNorm, the fused
//! QKV split + RoPE epilogue, SiLU-and-mul, 16-bit → f32, embedding gather, argmax) against
//! their CPU twins (`ferrinfer::cpu::{norm, rope, activation, sampling}`), which define the
//! semantics: random shapes (SmolLM2's 576 and Llama's 4096/8192 among them, head dims 64 and
//! 128 and odd ones, both RoPE styles, f16 and bf16, one token and many), outputs poisoned with
//! NaN and allocated larger than needed (the slack must stay untouched), every element checked
//! against a per-element bound whose reason is written beside it; bad input → typed error for
//! every op. RMSNorm, SiLU-and-mul and the gather also run with f16 and bf16 outputs (the
//! inputs of 16-bit matrix products): the f32 result rounded once ([`Out`]).
use ferrinfer::cpu::{activation, norm, rope, sampling};
use ferrinfer::ops::model::ModelOut;
use ferrinfer::ops::ModelKernels;
use ferrinfer::rope::{RopeConfig, RopeScaling, RopeStyle};
use ferrinfer::{DeviceBuffer, Error, Float16, Gpu};
use ferrinfer_harness::{gpu_or_skip, proptest_cases, rng, ErrorStats};
use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use rand::Rng;

mod elementwise;
mod gemv;
mod qkv_rope;
mod qkv_rope_append;
mod rms_norm;

/// `n` values uniform in `[-scale, scale]`.
fn uniform(r: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| r.random_range(-scale..=scale)).collect()
}

/// `data` followed by `slack` copies of `fill`: buffers larger than an op needs.
fn padded<T: Copy>(data: &[T], slack: usize, fill: T) -> Vec<T> {
    let mut v = data.to_vec();
    v.extend(std::iter::repeat_n(fill, slack));
    v
}

/// Checks every element: `|got − want| ≤ bound(i, want)`, NaN never accepted; then the
/// summary statistics (rel-L2 and max-abs, for the printed worst case).
fn check(what: &str, got: &[f32], want: &[f32], bound: impl Fn(usize, f32) -> f32) -> ErrorStats {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        assert!(
            err <= bound(i, w),
            "{what}: element {i}: got {g}, want {w} (error {err:e} > bound {:e})",
            bound(i, w)
        );
    }
    let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    ErrorStats::compare(&f(got), &f(want), None)
}

/// The first `n` elements of a downloaded buffer; the rest must still hold `fill` (nothing written past the
/// op's extent).
fn unpadded<T: Poison>(all: Vec<T>, n: usize, what: &str) -> Vec<T> {
    assert!(
        all[n..].iter().all(|x| x.is_poison()),
        "{what}: the op wrote past its {n} elements"
    );
    all[..n].to_vec()
}

/// Element types whose slack is poisoned: NaN for floats, a sentinel for ids.
trait Poison: Copy {
    fn is_poison(&self) -> bool;
}
impl Poison for f32 {
    fn is_poison(&self) -> bool {
        self.is_nan()
    }
}
impl Poison for f16 {
    fn is_poison(&self) -> bool {
        self.is_nan()
    }
}
impl Poison for bf16 {
    fn is_poison(&self) -> bool {
        self.is_nan()
    }
}
impl Poison for u32 {
    fn is_poison(&self) -> bool {
        *self == POISON_ID
    }
}

/// An output type of the model kernels as the tests see it: f32, or a 16-bit type the op's
/// f32 result is rounded to (once, to nearest even).
trait Out: ModelOut + Poison + Default + Clone {
    /// The largest relative error of rounding a normal f32 to this type: 2^-p for p
    /// significant bits (0 for f32 itself).
    const U: f32;
    /// Half the smallest subnormal spacing: the absolute error floor of rounding to this type.
    const FLOOR: f32;
    fn from_f32(v: f32) -> Self;
    fn widen(self) -> f32;
    fn nan() -> Self;
}
impl Out for f32 {
    const U: f32 = 0.0;
    const FLOOR: f32 = f32::MIN_POSITIVE;
    fn from_f32(v: f32) -> Self {
        v
    }
    fn widen(self) -> f32 {
        self
    }
    fn nan() -> Self {
        f32::NAN
    }
}
impl Out for f16 {
    const U: f32 = 1.0 / 2048.0; // 11 significant bits
    const FLOOR: f32 = 1.0 / (1u64 << 25) as f32; // subnormal spacing 2^-24
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    fn widen(self) -> f32 {
        self.to_f32()
    }
    fn nan() -> Self {
        f16::NAN
    }
}
impl Out for bf16 {
    const U: f32 = 1.0 / 256.0; // 8 significant bits
    const FLOOR: f32 = f32::MIN_POSITIVE; // f32's exponent range
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn widen(self) -> f32 {
        self.to_f32()
    }
    fn nan() -> Self {
        bf16::NAN
    }
}

/// The output type picked by a test case's index: 0 f32, 1 f16, 2 bf16.
macro_rules! with_out {
    ($which:expr, $f:ident ( $($arg:expr),* )) => {
        match $which {
            0 => $f::<f32>($($arg),*),
            1 => $f::<f16>($($arg),*),
            _ => $f::<bf16>($($arg),*),
        }
    };
}
use with_out;

/// A GPU output against an f32 twin value `want` known to within `rel` relative error before
/// the GPU's rounding to `O`: `|got − want| ≤ (rel + U·(1 + rel))·|want| + FLOOR`, the first
/// term the f32 computation's error, the second the one rounding to `O` (of a value within
/// `rel` of `want`), the floor exact zeros and the subnormals of `O`.
fn out_bound<O: Out>(rel: f32) -> impl Fn(usize, f32) -> f32 {
    move |_, w| (rel + O::U * (1.0 + rel)) * w.abs() + O::FLOOR
}

/// Poison of u32 outputs (not an index any test produces).
const POISON_ID: u32 = 0xdead_beef;
