//! The element types the model kernels write: f32, or a 16-bit float — the input of a bf16/f16
//! matrix product, written by the op itself so that no cast kernel runs in between.
use ferrinfer_kernels::kernel_key::KeyDtype;
use half::{bf16, f16};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// An output element type of [`super::ModelKernels::rms_norm`],
/// [`super::ModelKernels::add_rms_norm`], [`super::ModelKernels::silu_and_mul`] and the
/// element type of [`super::ModelKernels::gather_rows`]: `f32`, `half::f16` or `half::bf16`.
/// A 16-bit output is the f32 result (the CPU twin's) rounded once, to nearest even.
pub trait ModelOut: sealed::Sealed + cudarc::driver::DeviceRepr + Copy + 'static {
    /// `None` for f32, else the 16-bit type's kernel-key tag.
    #[doc(hidden)]
    const HALF: Option<KeyDtype>;
}

impl ModelOut for f32 {
    const HALF: Option<KeyDtype> = None;
}

impl ModelOut for f16 {
    const HALF: Option<KeyDtype> = Some(KeyDtype::F16);
}

impl ModelOut for bf16 {
    const HALF: Option<KeyDtype> = Some(KeyDtype::Bf16);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::Float16;

    #[test]
    fn half_tags_match_the_dtypes() {
        assert_eq!(<f32 as ModelOut>::HALF, None);
        assert_eq!(<f16 as ModelOut>::HALF, Some(f16::DTYPE.key()));
        assert_eq!(<bf16 as ModelOut>::HALF, Some(bf16::DTYPE.key()));
    }
}
