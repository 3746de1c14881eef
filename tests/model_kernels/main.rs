//! The model kernels (`ferrinfer::ops::ModelKernels`: RMSNorm, residual-add + RMSNorm, the fused
//! QKV split + RoPE epilogue, SiLU-and-mul, 16-bit → f32, embedding gather, argmax) against
//! their CPU twins (`ferrinfer::cpu::{norm, rope, activation, sampling}`), which define the
//! semantics: random shapes (SmolLM2's 576 and Llama's 4096/8192 among them, head dims 64 and
//! 128 and odd ones, both RoPE styles, f16 and bf16, one token and many), outputs poisoned with
//! NaN and allocated larger than needed (the slack must stay untouched), every element checked
//! against a per-element bound whose reason is written beside it; bad input → typed error for
//! every op.
use ferrinfer::cpu::{activation, norm, rope, sampling};
use ferrinfer::ops::ModelKernels;
use ferrinfer::rope::{RopeConfig, RopeScaling, RopeStyle};
use ferrinfer::{DeviceBuffer, Error, Float16, Gpu};
use ferrinfer_harness::{gpu_or_skip, proptest_cases, rng, ErrorStats};
use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use rand::Rng;

mod elementwise;
mod qkv_rope;
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

/// Poison of u32 outputs (not an index any test produces).
const POISON_ID: u32 = 0xdead_beef;
