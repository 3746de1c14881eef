//! RoPE inside attention (FlashInfer's `pos_encoding_mode = "ROPE_LLAMA"`): the attention
//! kernels rotate q and every key on the fly (`kernels-gpu/src/attn/rope.rs`), so the KV cache
//! holds unrotated keys. Key `t` of request `b` sits at position `offsets[b] + t` and the query
//! at its causal position (decode: `offsets[b] + kv_len − 1`); the offsets default to 0.
//!
//! [`RopeAttention`] is what an op keeps once RoPE is switched on: the configuration and its
//! inverse-frequency table on the device.
use ferrinfer_kernels::abi::{RopeAttn, ROPE_HALF, ROPE_INTERLEAVED};

use crate::error::{Error, Result};
use crate::rope::{RopeConfig, RopeStyle};
use crate::runtime::{DeviceBuffer, Gpu};

/// Elements of a head row one kernel lane holds: with `rotate_half` pairing the rotary dim must
/// be a multiple of twice this, so a lane's elements are all first halves, all second halves
/// or all unrotated (`kernels-gpu/src/attn/rope.rs`).
const LANE_ELEMS: usize = 8;

/// Checks that the kernels can apply `rope` to heads of `head_dim` inside attention.
pub fn check(op: &'static str, rope: &RopeConfig, head_dim: usize) -> Result<()> {
    rope.validate(head_dim)?;
    if rope.style == RopeStyle::Half && !rope.rotary_dim.is_multiple_of(2 * LANE_ELEMS) {
        return Err(Error::unsupported(
            op,
            "rotary_dim",
            format!(
                "{} with rotate_half pairing inside attention (a multiple of {} is supported)",
                rope.rotary_dim,
                2 * LANE_ELEMS
            ),
        ));
    }
    Ok(())
}

/// Checks per-request position offsets: one per request, each ≥ 0, and every key position
/// (`offset + kv_len − 1`) within i32.
pub fn check_offsets(op: &'static str, offsets: &[i32], kv_lens: &[usize]) -> Result<()> {
    if offsets.len() != kv_lens.len() {
        return Err(Error::shape(
            op,
            "rope offsets",
            kv_lens.len(),
            offsets.len(),
        ));
    }
    for (i, (&o, &n)) in offsets.iter().zip(kv_lens).enumerate() {
        if o < 0 || o as u64 + n as u64 > i32::MAX as u64 {
            return Err(Error::invalid(
                op,
                "rope offsets",
                format!("entry {i}: {o} (must be ≥ 0 with offset + kv_len ≤ 2^31 − 1)"),
            ));
        }
    }
    Ok(())
}

/// An op's RoPE: the configuration and its frequency table on the device.
pub struct RopeAttention {
    config: RopeConfig,
    inv_freq: DeviceBuffer<f32>,
}

impl RopeAttention {
    /// Validates `config` for `head_dim` ([`check`]) and uploads its frequency table.
    pub fn new(op: &'static str, gpu: &Gpu, config: RopeConfig, head_dim: usize) -> Result<Self> {
        check(op, &config, head_dim)?;
        let inv_freq = gpu.upload(&config.inv_freq(head_dim, None)?)?;
        Ok(Self { config, inv_freq })
    }

    /// The configuration.
    pub fn config(&self) -> &RopeConfig {
        &self.config
    }

    /// The kernel parameters, with the plan's offsets table at `offsets`.
    pub fn abi(&self, offsets: u64) -> RopeAttn {
        RopeAttn {
            inv_freq: self.inv_freq.addr(),
            offsets,
            rotary_dim: self.config.rotary_dim as u32,
            style: match self.config.style {
                RopeStyle::Interleaved => ROPE_INTERLEAVED,
                RopeStyle::Half => ROPE_HALF,
            },
        }
    }
}
