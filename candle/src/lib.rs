//! # ferrinfer-candle
//!
//! ferrinfer's attention on candle [`Tensor`](candle_core::Tensor)s: decode, prefill (single,
//! ragged and paged) and paged KV append, as candle custom ops whose forward pass calls
//! ferrinfer.
//!
//! | what                                   | API                                         | file           |
//! |----------------------------------------|---------------------------------------------|----------------|
//! | decode / prefill over K/V tensors      | [`decode`], [`prefill`], [`prefill_ragged`] | `attention.rs` |
//! | paged KV cache (append, decode, prefill) | [`PagedKvCache`], [`CacheConfig`]         | `cache.rs`     |
//! | the paged custom op                    | (internal)                                  | `paged.rs`     |
//! | dtype/device/shape checks              | (internal)                                  | `tensors.rs`   |
//!
//! Tensors are NHD (`[tokens, heads, head_dim]`), f16 or bf16 (ferrinfer computes on 16-bit
//! storage with f32 accumulation; other dtypes are refused with an error naming `to_dtype`).
//! GQA follows from the head counts (query head `h` reads KV head `h / (Hq / Hkv)`). Masks and
//! logit options are ferrinfer's [`AttentionOptions`]: `sm_scale` (default `1/sqrt(D)`),
//! `soft_cap`, `window_left`, `causal`; query row `t` of `qo_len` over `kv_len` keys sits at
//! position `kv_len − qo_len + t`.
//!
//! Every input is checked (ranks, dims, dtypes, devices, lengths, options) before any work, and
//! a bad one returns a `candle_core::Error`, never a panic.
//!
//! **Devices.** The CPU forward runs ferrinfer's CPU backend. With the `cuda` feature, CUDA
//! tensors run ferrinfer's kernels, loaded once into candle's CUDA context and launched on the
//! device's own stream, in place on the tensors' memory (no copies, no synchronisation):
//! decode and prefill over contiguous K/V are one batch-prefill step over ragged K/V, and a
//! [`PagedKvCache`] made on a CUDA device keeps its pages in device pools and runs batch decode
//! / batch prefill over them. CUDA head dims are the kernels' (64, 128, 256; the CPU backend
//! takes any). Without the feature, CUDA tensors are refused with an error naming it. The
//! feature builds candle's CUDA backend, whose `candle-kernels` need `nvcc`:
//! `scripts/candle-cuda-env.sh` sets up a project-local toolkit from PyPI (crate README).
#![deny(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod attention;
mod cache;
// The CUDA forward needs unsafe for device pointers (each use carries its SAFETY reason).
#[cfg(feature = "cuda")]
#[allow(unsafe_code)]
mod cuda;
mod error;
mod paged;
mod tensors;

pub use attention::{decode, prefill, prefill_ragged};
pub use cache::{CacheConfig, PagedKvCache};
pub use ferrinfer::kv::{AppendStep, SeqId};
pub use ferrinfer::AttentionOptions;
