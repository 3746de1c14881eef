//! Which decode kernel runs: the family (CUDA cores or tensor cores), the K/V element type
//! (16-bit or fp8) and RoPE inside attention, resolved to one kernel with its shared memory,
//! chunk alignment and occupancy.
use ferrinfer_kernels::config::{batch_decode as bcfg, decode_rows as cfg, decode_tc as tccfg};
use ferrinfer_kernels::kernel_key::KernelKey;

use super::{BatchDecode, OP};
use crate::dtype::{DType, KvDtype};
use crate::error::{Error, Result};
use crate::heads::HeadConfig;
use crate::ops::rope_attn::RopeAttention;
use crate::rope::RopeConfig;
use crate::runtime::{Gpu, Kernel};

/// Which decode kernel family runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeKernel {
    /// CUDA cores: `D/8` lanes per K/V row, shuffles for the dot products
    /// (`kernels-gpu/src/batch_decode.rs`); every head dim, group sizes 1–8.
    CudaCore,
    /// Tensor cores: the group's query heads are the rows of one `mma.m16n8k16` tile
    /// (`kernels-gpu/src/decode_tc.rs`); head dims 64 and 128, group sizes 1–16.
    TensorCore,
}

/// Query groups from which [`DecodeKernel::TensorCore`] is the default (where supported).
/// Measured on the H100 at 64 × 4096, 8 KV heads, D = 128: CUDA cores are faster for groups 1
/// and 2 (370.6 / 376.1 µs vs 380.9 / 381.2), tensor cores from 3 (383.2 vs 388.6 µs).
pub const TENSOR_CORE_MIN_GROUP: usize = 3;

impl BatchDecode {
    pub(super) fn tensor_cores_support(heads: &HeadConfig) -> bool {
        matches!(heads.head_dim, 64 | 128) && heads.group() <= tccfg::MAX_GROUP as usize
    }

    /// The kernel family fp8 K/V run on unless chosen: tensor cores wherever supported (head
    /// dims 64 and 128), at every group. Measured on the H100 at 64 × 4096, 8 KV heads, D 128,
    /// e4m3 (`benches/fp8_decode.rs`): tensor cores 218–224 µs at groups 1–8 against the CUDA-core
    /// kernel's 349–799 µs; CUDA cores elsewhere (head dim 256).
    fn fp8_default_kind(heads: &HeadConfig) -> DecodeKernel {
        if Self::tensor_cores_support(heads) {
            DecodeKernel::TensorCore
        } else {
            DecodeKernel::CudaCore
        }
    }

    /// Chooses the kernel family (the default is [`DecodeKernel::TensorCore`] for groups of at
    /// least [`TENSOR_CORE_MIN_GROUP`] where supported). Plans made before the switch must be
    /// remade.
    pub fn set_kernel(&mut self, kind: DecodeKernel) -> Result<()> {
        self.select(kind)
    }

    /// The kernel family in use.
    pub fn kernel_kind(&self) -> DecodeKernel {
        self.kind
    }

    /// Sets the K/V element type the op reads: the op's own 16-bit dtype ([`BatchDecode::run`])
    /// or fp8 `E4m3`/`E5m2` ([`BatchDecode::run_fp8`], with `k_scale`/`v_scale` per run). For
    /// fp8 this selects tensor cores where they support the heads, CUDA cores otherwise;
    /// `set_kernel` afterwards picks the other (tensor cores: head dims 64 and 128, groups
    /// 1–16; CUDA cores: every head dim, groups 1–8). As with [`BatchDecode::set_kernel`], plans made before a change of
    /// kernel family must be remade.
    pub fn set_kv_dtype(&mut self, kv: KvDtype) -> Result<()> {
        if !kv.is_fp8() && kv != KvDtype::from(self.dtype) {
            return Err(Error::unsupported(
                OP,
                "kv dtype",
                format!("{kv} K/V with {} queries", self.dtype),
            ));
        }
        if kv.is_fp8() && self.rope.is_some() {
            return Err(Error::unsupported(
                OP,
                "kv dtype",
                format!("{kv} K/V with RoPE inside attention"),
            ));
        }
        let kind = if kv.is_fp8() {
            Self::fp8_default_kind(&self.heads)
        } else {
            self.kind
        };
        let (kernel, smem, align, max_ctas) =
            Self::resolve(&self.gpu, &self.heads, self.dtype, kv, kind, false)?;
        self.kv = kv;
        self.apply(kind, kernel, smem, align, max_ctas)
    }

    /// The K/V element type the op reads.
    pub fn kv_dtype(&self) -> KvDtype {
        self.kv
    }

    /// Switches RoPE inside attention on (`Some`) or off (FlashInfer's `pos_encoding_mode`
    /// `"ROPE_LLAMA"` / `"NONE"`): q and every key are rotated in the kernel by
    /// `position · inv_freq` of `rope` (any pairing, base, scaling and rotary dim the kernels
    /// support: with `rotate_half` pairing the rotary dim must be a multiple of 16). Key `t` of
    /// request `b` sits at position `offsets[b] + t` and the query at `offsets[b] + kv_len − 1`
    /// (offsets from [`BatchDecode::plan_into_with_offsets`], else 0). Runs the CUDA-core kernel
    /// (this selects it) over 16-bit K/V; fp8 K/V with RoPE is `Unsupported`. Plans made before
    /// a change must be remade.
    pub fn set_rope(&mut self, rope: Option<RopeConfig>) -> Result<()> {
        let Some(cfg) = rope else {
            let (kernel, smem, align, max_ctas) = Self::resolve(
                &self.gpu,
                &self.heads,
                self.dtype,
                self.kv,
                self.kind,
                false,
            )?;
            self.rope = None;
            return self.apply(self.kind, kernel, smem, align, max_ctas);
        };
        if self.kv.is_fp8() {
            return Err(Error::unsupported(
                OP,
                "rope",
                format!("RoPE inside attention over {} K/V", self.kv),
            ));
        }
        let r = RopeAttention::new(OP, &self.gpu, cfg, self.heads.head_dim)?;
        let kind = DecodeKernel::CudaCore;
        let (kernel, smem, align, max_ctas) =
            Self::resolve(&self.gpu, &self.heads, self.dtype, self.kv, kind, true)?;
        self.rope = Some(r);
        self.apply(kind, kernel, smem, align, max_ctas)
    }

    /// The RoPE configuration in use, if any.
    pub fn rope(&self) -> Option<&RopeConfig> {
        self.rope.as_ref().map(RopeAttention::config)
    }

    fn apply(
        &mut self,
        kind: DecodeKernel,
        kernel: Kernel,
        smem: u32,
        align: usize,
        max_ctas: usize,
    ) -> Result<()> {
        self.max_ctas = max_ctas;
        self.kind = kind;
        self.kernel = kernel;
        self.smem_bytes = smem;
        self.chunk_align = align;
        Ok(())
    }

    fn select(&mut self, kind: DecodeKernel) -> Result<()> {
        let rope = self.rope.is_some();
        let (kernel, smem, align, max_ctas) =
            Self::resolve(&self.gpu, &self.heads, self.dtype, self.kv, kind, rope)?;
        self.apply(kind, kernel, smem, align, max_ctas)
    }

    /// The kernel of family `kind` for `heads` and `dtype` (with RoPE inside attention when
    /// `rope`), its dynamic shared memory, the planner's chunk alignment and the CTAs the
    /// device runs at once.
    pub(super) fn resolve(
        gpu: &Gpu,
        h: &HeadConfig,
        dtype: DType,
        kv: KvDtype,
        kind: DecodeKernel,
        rope: bool,
    ) -> Result<(Kernel, u32, usize, usize)> {
        let d = h.head_dim as u32;
        let fp8 = kv.fp8();
        let (key, smem, threads, align) = match kind {
            DecodeKernel::CudaCore => {
                let Some(cap) = u32::try_from(h.group()).ok().and_then(cfg::group_capacity) else {
                    return Err(Error::unsupported(
                        OP,
                        "group size",
                        format!(
                            "{} on the CUDA-core decode (supported: 1..=8; groups up to {} run on \
                             the tensor-core decode: head dims 64 and 128, no RoPE inside \
                             attention)",
                            h.group(),
                            tccfg::MAX_GROUP
                        ),
                    ));
                };
                let key = match fp8 {
                    None if rope => KernelKey::DecodeRope {
                        dtype: dtype.key(),
                        head_dim: d,
                        group: cap,
                    },
                    None => KernelKey::Decode {
                        dtype: dtype.key(),
                        head_dim: d,
                        group: cap,
                    },
                    // set_rope and set_kv_dtype keep fp8 and RoPE apart.
                    Some(fp8) => KernelKey::DecodeFp8 {
                        dtype: dtype.key(),
                        fp8,
                        head_dim: d,
                        group: cap,
                    },
                };
                (
                    key,
                    bcfg::smem_bytes(d, cap),
                    cfg::THREADS,
                    cfg::tokens_per_iter(d) as usize,
                )
            }
            DecodeKernel::TensorCore => {
                if rope {
                    return Err(Error::unsupported(
                        OP,
                        "tensor-core decode",
                        "RoPE inside attention (the CUDA-core kernel supports it)",
                    ));
                }
                if !Self::tensor_cores_support(h) {
                    return Err(Error::unsupported(
                        OP,
                        "tensor-core decode",
                        format!("head_dim {} (supported: 64, 128)", h.head_dim),
                    ));
                }
                let key = match fp8 {
                    None => KernelKey::DecodeTc {
                        dtype: dtype.key(),
                        head_dim: d,
                    },
                    Some(fp8) => KernelKey::DecodeTcFp8 {
                        dtype: dtype.key(),
                        fp8,
                        head_dim: d,
                    },
                };
                (
                    key,
                    tccfg::smem_bytes(d, h.group() as u32, if fp8.is_some() { 1 } else { 2 }),
                    tccfg::THREADS,
                    tccfg::TILE as usize,
                )
            }
        };
        let k = gpu.kernel(key, smem)?;
        let per_sm = k
            .function()
            .occupancy_max_active_blocks_per_multiprocessor(threads, smem as usize, None)?
            .max(1) as usize;
        Ok((k, smem, align, per_sm * gpu.info().sm_count as usize))
    }

    /// CTAs the device runs concurrently for this kernel (occupancy × SMs).
    pub fn max_ctas(&self) -> usize {
        self.max_ctas
    }

    /// The decode kernel symbol.
    pub fn kernel_name(&self) -> &str {
        self.kernel.name()
    }
}
