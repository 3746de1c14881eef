//! # ferrinfer
//!
//! FlashInfer-class attention kernels for LLM inference, written entirely in Rust: the GPU
//! kernels are Rust compiled to PTX by rustc (`ferrinfer-kernels`), this crate launches them
//! through `cudarc`, and a CPU backend implements the same ops for machines without a GPU.
//!
//! | concept                     | type / function                         | file                          |
//! |-----------------------------|-----------------------------------------|-------------------------------|
//! | a GPU (context + stream)    | [`Gpu`]                                 | `runtime/context.rs`          |
//! | device memory               | [`DeviceBuffer<T>`]                     | `runtime/buffer.rs`           |
//! | embedded kernels            | [`kernels`]                             | `kernels.rs`                  |
//! | element types               | [`DType`], [`Float16`]                  | `dtype.rs`                    |
//! | fp8 KV elements and scales  | [`fp8::Fp8`], [`fp8::KvScales`]         | `fp8.rs`                      |
//! | head geometry               | [`HeadConfig`]                          | `heads.rs`                    |
//! | attention options           | [`AttentionOptions`]                    | `options.rs`                  |
//! | paged KV cache              | [`kv::PagedKvCache`], [`kv::PageTable`] | `kv/*.rs`                     |
//! | batch decode (GPU, plan/run)| [`ops::BatchDecode`]                    | `ops/batch_decode.rs`         |
//! | decode planner (pure)       | [`plan::plan_decode`]                   | `plan/decode.rs`              |
//! | single-request decode (GPU) | [`ops::SingleDecode`]                   | `ops/single_decode.rs`        |
//! | prefill (GPU, batch/single) | [`ops::BatchPrefill`], [`ops::SinglePrefill`] | `ops/prefill/*.rs`     |
//! | cascade attention (GPU)     | [`ops::CascadeAttention`], [`plan::CascadeLevel`] | `ops/cascade.rs`, `plan/cascade.rs` |
//! | custom prefill masks        | [`mask::PackedMask`], [`mask::segment_packbits`] | `mask.rs`           |
//! | input checks (GPU and CPU)  | `validate`                              | `validate.rs`                 |
//! | CPU backend                 | [`cpu`]                                 | `cpu/*.rs`                    |
//! | rotary embedding parameters | [`rope::RopeConfig`]                    | `rope.rs`                     |
//! | f64 oracle                  | [`reference`](mod@reference)            | `reference.rs`                |
//! | errors                      | [`Error`], [`Result`]                   | `error.rs`                    |
//!
//! Without a CUDA driver everything except the GPU ops works: [`Gpu::discover`] returns
//! `Ok(None)` ("no GPU"), never an error or a panic, and the CPU backend takes over.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub(crate) mod checked;
#[cfg(feature = "cli")]
pub mod cli;
pub mod cpu;
pub mod dtype;
pub mod error;
pub mod fp8;
pub mod heads;
pub mod kernels;
pub mod kv;
pub mod mask;
pub mod ops;
pub mod options;
pub mod plan;
pub mod reference;
pub mod rope;
pub mod runtime;
pub mod selftest;
pub(crate) mod validate;

/// The device crate's shared definitions (ABI parameter blocks, launch geometry, math).
pub use ferrinfer_kernels as kernels_abi;

pub use dtype::{DType, Float16};
pub use error::{Error, Result};
pub use heads::HeadConfig;
pub use options::AttentionOptions;
pub use runtime::{DeviceBuffer, DeviceSpan, Gpu};
