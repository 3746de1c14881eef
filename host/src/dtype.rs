//! Element types the attention ops accept: f16 and bf16 storage with f32 accumulation.
use half::{bf16, f16};

/// Runtime tag of a 16-bit element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary16.
    F16,
    /// bfloat16.
    Bf16,
}

impl DType {
    /// Name used in kernel symbols and reports.
    pub fn name(self) -> &'static str {
        match self {
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        2
    }

    /// The element type of kernel keys.
    pub(crate) fn key(self) -> ferrinfer_kernels::kernel_key::KeyDtype {
        use ferrinfer_kernels::kernel_key::KeyDtype;
        match self {
            DType::F16 => KeyDtype::F16,
            DType::Bf16 => KeyDtype::Bf16,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A 16-bit float storage type (`half::f16` or `half::bf16`).
pub trait Float16:
    Copy
    + Send
    + Sync
    + Default
    + PartialEq
    + std::fmt::Debug
    + cudarc::driver::DeviceRepr
    + cudarc::driver::ValidAsZeroBits
    + 'static
{
    /// The runtime tag.
    const DTYPE: DType;
    /// Converts to f32 (exact).
    fn to_f32(self) -> f32;
    /// Converts from f32 (round to nearest even).
    fn from_f32(x: f32) -> Self;
    /// A quiet NaN, used to poison outputs in tests.
    fn nan() -> Self;
}

impl Float16 for f16 {
    const DTYPE: DType = DType::F16;
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn nan() -> Self {
        f16::NAN
    }
}

impl Float16 for bf16 {
    const DTYPE: DType = DType::Bf16;
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn nan() -> Self {
        bf16::NAN
    }
}
