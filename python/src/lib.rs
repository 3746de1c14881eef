//! `ferrinfer._native`: the native half of the Python package. Each function takes tensor
//! descriptors (see [`tensor`]) and plain values, checks them, and runs ferrinfer's CPU
//! backend on the caller's memory (CUDA tensors: the GPU ops on the caller's stream, [`cuda`]); outputs are written into arrays the caller allocated. The
//! FlashInfer-named wrappers, argument defaults and output allocation live in the pure-Python
//! package `ferrinfer` (python/ferrinfer/), so this module stays a thin, typed layer.
//!
//! | module        | what                                                            |
//! |---------------|-----------------------------------------------------------------|
//! | [`tensor`]    | descriptor intake, dtype/shape/contiguity/aliasing checks       |
//! | [`errors`]    | `ferrinfer::Error` → Python exceptions                          |
//! | [`attention`] | single decode, single prefill, ragged batch prefill             |
//! | [`paged`]     | paged-KV views: batch decode, paged prefill, KV append          |
//! | [`mask`]      | custom masks (packed bits and offsets) as the wrappers pass them |
//! | [`merge`]     | attention-state merges                                          |
//! | [`cuda`]      | CUDA tensors as device spans, the caller's stream               |
//! | [`cuda_decode`] | batch decode on CUDA tensors (plan in the caller's workspace) |
//! | [`cuda_merge`] | merges on CUDA tensors                                         |
//! | [`cuda_append`] | KV append on CUDA tensors                                     |
//! | [`cuda_prefill`] | paged and ragged batch prefill on CUDA tensors               |
#![deny(unsafe_op_in_unsafe_fn)]

mod attention;
mod cuda;
mod cuda_append;
mod cuda_decode;
mod cuda_merge;
mod cuda_prefill;
mod errors;
mod mask;
mod merge;
mod paged;
mod tensor;

use ferrinfer::rope::{RopeConfig, RopeScaling, RopeStyle};
use ferrinfer::{AttentionOptions, HeadConfig};
use pyo3::prelude::*;

/// Builds the op options from the wrapper's keyword arguments (already normalised by the Python
/// layer: `window_left < 0` and `logits_soft_cap = 0` arrive as `None`).
fn options(
    causal: bool,
    sm_scale: Option<f32>,
    soft_cap: Option<f32>,
    window_left: Option<usize>,
) -> AttentionOptions {
    AttentionOptions {
        sm_scale,
        soft_cap,
        window_left,
        causal,
    }
}

/// FlashInfer's `ROPE_LLAMA` as a [`RopeConfig`]: `(rope_scale, rope_theta)` from the Python
/// layer (`_args.rope`), `rotate_half` pairs over the whole head, positions divided by
/// `rope_scale` (linear scaling; 1 is none). Validated by the op that takes it.
fn rope_llama(rope: Option<(f32, f32)>, head_dim: usize) -> Option<RopeConfig> {
    rope.map(|(scale, theta)| RopeConfig {
        theta,
        rotary_dim: head_dim,
        scaling: if scale == 1.0 {
            RopeScaling::None
        } else {
            RopeScaling::Linear { factor: scale }
        },
        style: RopeStyle::Half,
    })
}

/// Validated head geometry (the library's own rules and messages).
fn heads(num_qo_heads: usize, num_kv_heads: usize, head_dim: usize) -> PyResult<HeadConfig> {
    errors::lib(HeadConfig::new(num_qo_heads, num_kv_heads, head_dim))
}

/// Whether a layout string names HND (`"HND"`) or NHD (`"NHD"`).
fn is_hnd(layout: &str) -> PyResult<bool> {
    match layout {
        "NHD" => Ok(false),
        "HND" => Ok(true),
        other => Err(pyo3::exceptions::PyValueError::new_err(format!(
            "kv_layout: {other:?} is not 'NHD' or 'HND'"
        ))),
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    attention::register(m)?;
    paged::register(m)?;
    merge::register(m)?;
    cuda_decode::register(m)?;
    cuda_merge::register(m)?;
    cuda_append::register(m)?;
    cuda_prefill::register(m)?;
    Ok(())
}
