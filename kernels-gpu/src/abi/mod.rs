//! Kernel parameter blocks: the contract between the host launcher and the device entry points.
//!
//! Every kernel takes exactly one of these structs **by value**. rustc lowers a by-value
//! `#[repr(C)]` argument of an `extern "ptx-kernel"` function to one `.param .align 8 .b8
//! name[size]` blob, which `cuLaunchKernel` fills from a pointer to the host copy; the host
//! harness checks each PTX entry's blob size against `size_of` of the struct here.
//!
//! Device pointers are `u64` (the generic address); a zero pointer means "absent" where the field
//! says so. Host side twin: `host/src/ops/*.rs` fills these after validation.

/// Marker for types that may be passed to a kernel by value.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, `Copy`, contain only integers and floats (no references,
/// no padding-dependent invariants), and have the same layout on the host and on nvptx64.
pub unsafe trait Abi: Copy + 'static {}

/// Parameters of the intrinsics self-test kernels (`selftest_*`): generic in/out buffers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SelfTestParams {
    /// Input buffer (meaning depends on the test kernel).
    pub input: u64,
    /// Output buffer (meaning depends on the test kernel).
    pub output: u64,
    /// Number of elements (meaning depends on the test kernel).
    pub n: u32,
    /// Extra scalar argument.
    pub arg: u32,
}

/// Parameters of `util_spin`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SpinParams {
    /// Nanoseconds to spin.
    pub ns: u64,
}

// SAFETY: #[repr(C)] single u64.
unsafe impl Abi for SpinParams {}

// SAFETY: #[repr(C)] struct of u64/u32 fields, laid out identically on x86_64 and nvptx64.
unsafe impl Abi for SelfTestParams {}

const _: () = assert!(core::mem::size_of::<SelfTestParams>() == 2 * 8 + 2 * 4);

mod attention;
mod model;

pub use attention::*;
pub use model::*;
