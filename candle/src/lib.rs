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
//! **Devices.** The CPU forward runs ferrinfer's CPU backend. The CUDA forward is not written:
//! candle-core's `cuda` feature compiles candle-kernels with `nvcc`, which this project's CI
//! machine lacks, nothing CUDA links or runs there, and the forward needs ferrinfer ops over
//! caller-owned device memory on candle's stream (the crate README and `docs/decisions.md`
//! say exactly what blocks it). CUDA tensors are refused with an error rather than served by
//! untested code.
#![deny(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod attention;
mod cache;
mod error;
mod paged;
mod tensors;

pub use attention::{decode, prefill, prefill_ragged};
pub use cache::{CacheConfig, PagedKvCache};
pub use ferrinfer::kv::{AppendStep, SeqId};
pub use ferrinfer::AttentionOptions;
