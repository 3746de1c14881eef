//! Element types the attention ops accept: f16 and bf16 storage with f32 accumulation, and the
//! element types of KV page pools (those two, and fp8 codes: [`crate::fp8`]).
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

/// A 16-bit float storage type (`half::f16` or `half::bf16`); also a KV pool element.
pub trait Float16:
    KvElem
    + Copy
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

/// Runtime tag of a KV page pool's element type: a 16-bit float, or an fp8 code read with a
/// per-tensor scale ([`crate::fp8`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvDtype {
    /// IEEE binary16.
    F16,
    /// bfloat16.
    Bf16,
    /// fp8 e4m3fn.
    E4m3,
    /// fp8 e5m2.
    E5m2,
}

impl KvDtype {
    /// Name used in kernel symbols and reports.
    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F16 => "f16",
            KvDtype::Bf16 => "bf16",
            KvDtype::E4m3 => "e4m3",
            KvDtype::E5m2 => "e5m2",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            KvDtype::F16 | KvDtype::Bf16 => 2,
            KvDtype::E4m3 | KvDtype::E5m2 => 1,
        }
    }

    /// Whether values are stored as fp8 codes (read with [`crate::fp8::KvScales`]).
    pub fn is_fp8(self) -> bool {
        self.size() == 1
    }

    /// The fp8 format, for the fp8 types.
    pub fn fp8(self) -> Option<crate::fp8::Fp8Kind> {
        match self {
            KvDtype::E4m3 => Some(crate::fp8::Fp8Kind::E4m3),
            KvDtype::E5m2 => Some(crate::fp8::Fp8Kind::E5m2),
            KvDtype::F16 | KvDtype::Bf16 => None,
        }
    }
}

impl std::fmt::Display for KvDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl From<DType> for KvDtype {
    fn from(d: DType) -> Self {
        match d {
            DType::F16 => KvDtype::F16,
            DType::Bf16 => KvDtype::Bf16,
        }
    }
}

/// An element of a KV page pool: the 16-bit float types themselves, or an fp8 code
/// ([`crate::fp8::Fp8`]). Attention reads every stored K/V element through [`KvElem::load`], so
/// one attention path serves both; for fp8 the per-tensor scales are applied outside the
/// element read (k_scale folded into the logit scale, v_scale into the output normaliser).
pub trait KvElem:
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
    const KV_DTYPE: KvDtype;
    /// The stored value (fp8: the code's value, before its scale), exact.
    fn load(self) -> f32;

    /// [`Self::load`] of a whole row (`dst.len() == src.len()`): the CPU attention converts a
    /// key or value row at once, which the 16-bit types do with the `half` crate's SIMD slice
    /// conversion instead of one call per element.
    #[inline]
    fn load_row(src: &[Self], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.load();
        }
    }
}

impl KvElem for f16 {
    const KV_DTYPE: KvDtype = KvDtype::F16;
    #[inline(always)]
    fn load(self) -> f32 {
        self.to_f32()
    }
    #[inline]
    fn load_row(src: &[Self], dst: &mut [f32]) {
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, dst);
    }
}

impl KvElem for bf16 {
    const KV_DTYPE: KvDtype = KvDtype::Bf16;
    #[inline(always)]
    fn load(self) -> f32 {
        self.to_f32()
    }
    #[inline]
    fn load_row(src: &[Self], dst: &mut [f32]) {
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, dst);
    }
}
