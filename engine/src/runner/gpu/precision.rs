//! The precision of the GPU runner's matrix products: which element type the weights are
//! uploaded in and the activations are fed to cuBLAS in (accumulation and outputs are f32 in
//! every case), and the weights and activation buffers of that type.
use std::fmt;
use std::str::FromStr;

use ferrinfer::ops::model::ModelOut;
use ferrinfer::ops::ModelKernels;
use ferrinfer::{DeviceBuffer, Gpu};
use half::{bf16, f16};

use super::gemm::GemmElem;
use crate::config::ModelConfig;
use crate::error::Result;
use crate::weights::Weights;

/// Weights of the GPU runner's matrix products (`--gpu-weights`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GpuWeights {
    /// f32 weights and activations: cuBLAS SGEMM on CUDA cores, the accuracy reference (4× the
    /// weight bytes of bf16, no tensor cores).
    F32,
    /// bf16 weights and activations on tensor cores, f32 accumulation and outputs. The output
    /// projection alone is f16 × f16: its input is the attention output, already f16 (the KV
    /// cache's type), which needs no cast that way; f16 has 3 more mantissa bits than bf16 and
    /// the range of a weight and of an attention output (a convex combination of V) fits it.
    #[default]
    Bf16,
}

impl GpuWeights {
    /// The name `--gpu-weights` takes.
    pub fn name(self) -> &'static str {
        match self {
            GpuWeights::F32 => "f32",
            GpuWeights::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for GpuWeights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GpuWeights {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(GpuWeights::F32),
            "bf16" => Ok(GpuWeights::Bf16),
            _ => Err(format!("unknown GPU weight type {s:?} (f32 or bf16)")),
        }
    }
}

/// A precision as types.
pub(super) trait Precision {
    /// Weights and inputs of the QKV, MLP and LM-head products (written by the norm, SiLU and
    /// gather kernels directly).
    type W: GemmElem + ModelOut;
    /// Weights and input of the output projection.
    type O: GemmElem;
    /// Scratch that turns the f16 attention output into the output projection's input.
    type Wide;
    /// The scratch for `elems` attention-output elements.
    fn wide(gpu: &Gpu, elems: usize) -> Result<Self::Wide>;
    /// The output projection's input: the first `elems` elements of the attention output `o16`
    /// as they are, or widened into the scratch.
    fn wo_input<'a>(
        mk: &ModelKernels,
        o16: &'a DeviceBuffer<f16>,
        elems: usize,
        wide: &'a mut Self::Wide,
    ) -> Result<&'a DeviceBuffer<Self::O>>;
}

/// [`GpuWeights::F32`].
pub(super) enum F32 {}

impl Precision for F32 {
    type W = f32;
    type O = f32;
    type Wide = DeviceBuffer<f32>;
    fn wide(gpu: &Gpu, elems: usize) -> Result<DeviceBuffer<f32>> {
        Ok(gpu.alloc(elems)?)
    }
    fn wo_input<'a>(
        mk: &ModelKernels,
        o16: &'a DeviceBuffer<f16>,
        elems: usize,
        wide: &'a mut DeviceBuffer<f32>,
    ) -> Result<&'a DeviceBuffer<f32>> {
        mk.to_f32(o16, elems, wide)?;
        Ok(wide)
    }
}

/// [`GpuWeights::Bf16`].
pub(super) enum Bf16 {}

impl Precision for Bf16 {
    type W = bf16;
    type O = f16;
    type Wide = ();
    fn wide(_: &Gpu, _: usize) -> Result<()> {
        Ok(())
    }
    fn wo_input<'a>(
        _: &ModelKernels,
        o16: &'a DeviceBuffer<f16>,
        _: usize,
        _: &'a mut (),
    ) -> Result<&'a DeviceBuffer<f16>> {
        Ok(o16)
    }
}

/// One block's weights on the device.
pub(super) struct Layer<P: Precision> {
    pub attn_norm: DeviceBuffer<f32>,
    pub wqkv: DeviceBuffer<P::W>,
    pub wo: DeviceBuffer<P::O>,
    pub ffn_norm: DeviceBuffer<f32>,
    pub w_gate_up: DeviceBuffer<P::W>,
    pub w_down: DeviceBuffer<P::W>,
}

/// The weights of the matrix products in `P`'s types and the activation buffers that feed
/// them, at the step capacity (`cap` tokens, `cap_rows` logits rows).
pub(super) struct Dense<P: Precision> {
    pub layers: Vec<Layer<P>>,
    /// The LM head (the embedding when tied; the embedding lookup keeps its own f32 table).
    pub head: DeviceBuffer<P::W>,
    /// Normalised hidden states, `[cap, dim]`.
    pub h: DeviceBuffer<P::W>,
    /// SwiGLU output, `[cap, ffn_dim]`.
    pub act: DeviceBuffer<P::W>,
    /// The logits rows' normalised hidden states, `[cap_rows, dim]`.
    pub hsel: DeviceBuffer<P::W>,
    pub wide: P::Wide,
}

/// Uploads `v` converted to `T`.
fn upload<T: GemmElem>(gpu: &Gpu, v: &[f32]) -> Result<DeviceBuffer<T>> {
    let c: Vec<T> = v.iter().map(|&x| T::from_f32(x)).collect();
    Ok(gpu.upload(&c)?)
}

impl<P: Precision> Dense<P> {
    pub fn new(
        gpu: &Gpu,
        cfg: &ModelConfig,
        w: &Weights,
        cap: usize,
        cap_rows: usize,
    ) -> Result<Self> {
        let layers = w
            .layers
            .iter()
            .map(|l| {
                Ok(Layer {
                    attn_norm: gpu.upload(&l.attn_norm)?,
                    wqkv: upload(gpu, &l.wqkv)?,
                    wo: upload(gpu, &l.wo)?,
                    ffn_norm: gpu.upload(&l.ffn_norm)?,
                    w_gate_up: upload(gpu, &l.w_gate_up)?,
                    w_down: upload(gpu, &l.w_down)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            head: upload(gpu, w.head())?,
            h: gpu.alloc(cap * cfg.dim)?,
            act: gpu.alloc(cap * cfg.ffn_dim)?,
            hsel: gpu.alloc(cap_rows * cfg.dim)?,
            wide: P::wide(gpu, cap * cfg.q_heads * cfg.head_dim)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for w in [GpuWeights::F32, GpuWeights::Bf16] {
            assert_eq!(w.to_string().parse::<GpuWeights>().unwrap(), w);
        }
        assert_eq!(GpuWeights::default(), GpuWeights::Bf16);
        assert!("f16".parse::<GpuWeights>().is_err());
    }
}
