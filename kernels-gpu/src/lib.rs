//! ferrinfer's device crate: attention kernels written in Rust and compiled to PTX by rustc's
//! `nvptx64-nvidia-cuda` backend, plus the pure math the kernels share with the host.
//!
//! | module      | built for      | holds                                                         |
//! |-------------|----------------|---------------------------------------------------------------|
//! | [`abi`]     | host + device  | `#[repr(C)]` kernel parameter blocks (the launch contract)     |
//! | [`dtype`]   | host + device  | element types (f16/bf16) as zero-sized markers                 |
//! | [`kernel_key`] | host + device | typed entry-point names ([`kernel_key::KernelKey`])       |
//! | [`math`]    | host + device  | online softmax, state merge, chunking arithmetic                |
//! | `arch`      | device only    | thin intrinsics layer over inline PTX                           |
//! | `attn`      | device (its pure parts also host-tested) | the attention core every attention kernel composes (work items, |
//! |             |                | mask, logits, register tile, softmax state, epilogue, loaders)  |
//! | `batch_decode`, `decode_tc`, `prefill`, `prefill_hopper`... | device only | kernel bodies and their `extern "ptx-kernel"` entry points (they import `attn`, never each other) |
//! | `model`     | device only    | RMSNorm, QKV split + RoPE, SiLU-and-mul, gather, argmax, cast   |
//!
//! The host crate (`ferrinfer`) links this crate with feature `std` for the ABI structs and the
//! math; `host/build.rs` builds it a second time for nvptx64 (once for sm_80, once for sm_90) and
//! embeds the PTX. Anything under `cfg(target_arch = "nvptx64")` never exists on the host, so a
//! device-only function called from host code is a compile error, not a runtime panic.
#![cfg_attr(target_arch = "nvptx64", no_std)]
#![cfg_attr(
    target_arch = "nvptx64",
    feature(abi_ptx, asm_experimental_arch, stdarch_nvptx)
)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod abi;
pub mod config;
pub mod dtype;
pub mod kernel_key;
pub mod math;

#[cfg(target_arch = "nvptx64")]
mod append;
#[cfg(target_arch = "nvptx64")]
pub mod arch;
mod attn;
#[cfg(target_arch = "nvptx64")]
mod batch_decode;
#[cfg(target_arch = "nvptx64")]
mod decode_tc;
#[cfg(target_arch = "nvptx64")]
mod merge;
#[cfg(target_arch = "nvptx64")]
mod model;
#[cfg(target_arch = "nvptx64")]
mod prefill;
#[cfg(all(target_arch = "nvptx64", target_feature = "sm_90a"))]
mod prefill_hopper;
#[cfg(all(target_arch = "nvptx64", target_feature = "sm_90a"))]
mod prefill_hopper_persistent;
#[cfg(target_arch = "nvptx64")]
mod selftest;
#[cfg(target_arch = "nvptx64")]
mod util;

/// Device panics cannot unwind: any panic path that survives optimisation becomes `trap`,
/// which the PTX check (scripts/ptx-check.sh) rejects in release PTX.
#[cfg(target_arch = "nvptx64")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: `trap` aborts the kernel; nothing after it runs.
    unsafe { core::arch::nvptx::trap() }
}
