//! Typed names of the kernels' entry points (attention, merge, KV copy, model), shared by the host (which resolves a
//! key's function when an op is built) and the PTX check (which verifies that every key the
//! host can ask for exists in every image that should hold it).
//!
//! [`KernelKey::name`] spells exactly the `#[unsafe(no_mangle)]` symbol the entry macros stamp
//! (`decode_f16_d128_g4`, `prefill_paged_bf16_d64_hpt`, `merge_f32_f16_d128`, …); no other
//! code builds a kernel name.
use core::fmt::{self, Write};

use crate::math::fp8::Fp8Kind;

/// Element type of a kernel's 16-bit tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyDtype {
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
}

impl KeyDtype {
    /// Both element types.
    pub const ALL: [KeyDtype; 2] = [KeyDtype::F16, KeyDtype::Bf16];

    /// The name used in kernel symbols.
    pub const fn name(self) -> &'static str {
        match self {
            KeyDtype::F16 => "f16",
            KeyDtype::Bf16 => "bf16",
        }
    }
}

/// Where a prefill kernel reads K/V from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKv {
    /// Packed (ragged) rows.
    Ragged,
    /// The paged cache.
    Paged,
}

impl KeyKv {
    /// Both layouts.
    pub const ALL: [KeyKv; 2] = [KeyKv::Ragged, KeyKv::Paged];
}

/// The CTA tile (and, for the Hopper tile, the form) of a prefill kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PrefillForm {
    /// 64 rows, 4 warps (no suffix).
    Rows64,
    /// 128 rows, 8 warps (`_w8`).
    Rows128,
    /// 128 rows, 4 warps × 2 m-tiles (`_m2`).
    Rows128Wide,
    /// 64 rows, 4 warps, under a custom bit mask (`_mask`, `attn::custom_mask`); head dims 64
    /// and 128.
    Rows64Masked,
    /// 64 rows, 4 warps, with RoPE inside attention (`_rope`, `attn::rope`); every head dim.
    Rows64Rope,
    /// 64 rows, 4 warps, over fp8 K/V of the format (`_fp8_e4m3`, `_fp8_e5m2`); head dims 64
    /// and 128.
    Rows64Fp8(Fp8Kind),
    /// Hopper warpgroups (`_h`); `persistent` CTAs run unit lists (`p`), `tma` loads ragged
    /// K/V with tensor maps (`t`). Built only into the sm_90a image.
    Hopper {
        /// Persistent CTAs.
        persistent: bool,
        /// TMA K/V loads (ragged K/V only).
        tma: bool,
    },
}

impl PrefillForm {
    /// The symbol suffix.
    pub const fn suffix(self) -> &'static str {
        match self {
            PrefillForm::Rows64 => "",
            PrefillForm::Rows128 => "_w8",
            PrefillForm::Rows128Wide => "_m2",
            PrefillForm::Rows64Masked => "_mask",
            PrefillForm::Rows64Rope => "_rope",
            PrefillForm::Rows64Fp8(Fp8Kind::E4m3) => "_fp8_e4m3",
            PrefillForm::Rows64Fp8(Fp8Kind::E5m2) => "_fp8_e5m2",
            PrefillForm::Hopper {
                persistent: false,
                tma: false,
            } => "_h",
            PrefillForm::Hopper {
                persistent: false,
                tma: true,
            } => "_ht",
            PrefillForm::Hopper {
                persistent: true,
                tma: false,
            } => "_hp",
            PrefillForm::Hopper {
                persistent: true,
                tma: true,
            } => "_hpt",
        }
    }
}

/// An append/gather kernel over the paged pool (16-bit elements; `AppendFp8`: 16-bit rows
/// quantised into an fp8 pool).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CopyKernel {
    /// Append, one row per thread per iteration (`append_kv_b16`).
    Append,
    /// Append with streaming stores (`append_kv_b16_cs`).
    AppendStreaming,
    /// Append, 2 rows per thread per iteration (`append_kv_b16_r2`).
    AppendRows2,
    /// Append, 4 rows (`append_kv_b16_r4`).
    AppendRows4,
    /// Append, 8 rows (`append_kv_b16_r8`).
    AppendRows8,
    /// Append through shared memory, `cp.async` double-buffered, 2 rows
    /// (`append_kv_b16_async2`).
    AppendAsync2,
    /// As `AppendAsync2` with 4 rows (`append_kv_b16_async4`).
    AppendAsync4,
    /// Gather pages to contiguous rows (`gather_kv_b16`).
    Gather,
    /// Append 16-bit rows of the element type into an fp8 pool of the format, quantising with
    /// the scales (`append_fp8_e4m3_bf16`, ...).
    AppendFp8(KeyDtype, Fp8Kind),
}

impl CopyKernel {
    /// Every copy kernel the host launches.
    pub const ALL: [CopyKernel; 12] = [
        CopyKernel::Append,
        CopyKernel::AppendStreaming,
        CopyKernel::AppendRows2,
        CopyKernel::AppendRows4,
        CopyKernel::AppendRows8,
        CopyKernel::AppendAsync2,
        CopyKernel::AppendAsync4,
        CopyKernel::Gather,
        CopyKernel::AppendFp8(KeyDtype::F16, Fp8Kind::E4m3),
        CopyKernel::AppendFp8(KeyDtype::Bf16, Fp8Kind::E4m3),
        CopyKernel::AppendFp8(KeyDtype::F16, Fp8Kind::E5m2),
        CopyKernel::AppendFp8(KeyDtype::Bf16, Fp8Kind::E5m2),
    ];

    /// The symbol.
    pub const fn name(self) -> &'static str {
        match self {
            CopyKernel::Append => "append_kv_b16",
            CopyKernel::AppendStreaming => "append_kv_b16_cs",
            CopyKernel::AppendRows2 => "append_kv_b16_r2",
            CopyKernel::AppendRows4 => "append_kv_b16_r4",
            CopyKernel::AppendRows8 => "append_kv_b16_r8",
            CopyKernel::AppendAsync2 => "append_kv_b16_async2",
            CopyKernel::AppendAsync4 => "append_kv_b16_async4",
            CopyKernel::Gather => "gather_kv_b16",
            CopyKernel::AppendFp8(KeyDtype::F16, Fp8Kind::E4m3) => "append_fp8_e4m3_f16",
            CopyKernel::AppendFp8(KeyDtype::Bf16, Fp8Kind::E4m3) => "append_fp8_e4m3_bf16",
            CopyKernel::AppendFp8(KeyDtype::F16, Fp8Kind::E5m2) => "append_fp8_e5m2_f16",
            CopyKernel::AppendFp8(KeyDtype::Bf16, Fp8Kind::E5m2) => "append_fp8_e5m2_bf16",
        }
    }
}

/// A model kernel (RMSNorm, RoPE, elementwise, argmax: `kernels-gpu/src/model/`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModelKernel {
    /// `rms_norm`.
    RmsNorm,
    /// `add_rms_norm`.
    AddRmsNorm,
    /// `qkv_rope_{dtype}`: QKV split + RoPE with `dtype` outputs.
    QkvRope(KeyDtype),
    /// `gather_rows`.
    GatherRows,
    /// `silu_and_mul`.
    SiluAndMul,
    /// `to_f32_{dtype}`.
    ToF32(KeyDtype),
    /// `argmax`.
    Argmax,
    // 16-bit outputs: the inputs of bf16/f16 matrix products, written by the op itself.
    /// `rms_norm_{dtype}`: [`ModelKernel::RmsNorm`] writing `dtype`.
    RmsNorm16(KeyDtype),
    /// `add_rms_norm_{dtype}`: [`ModelKernel::AddRmsNorm`] writing `dtype`.
    AddRmsNorm16(KeyDtype),
    /// `gather_rows_{dtype}`: [`ModelKernel::GatherRows`] over `dtype` rows.
    GatherRows16(KeyDtype),
    /// `silu_and_mul_{dtype}`: [`ModelKernel::SiluAndMul`] writing `dtype`.
    SiluAndMul16(KeyDtype),
    /// `gemv_{dtype}`: few-row product of `dtype` inputs, f32 out.
    Gemv(KeyDtype),
    /// `gemv_silu_{dtype}`: [`ModelKernel::Gemv`] of SiLU-and-mul of an f32 gate|up input.
    GemvSilu(KeyDtype),
    /// `qkv_rope_append_{dtype}`: [`ModelKernel::QkvRope`] writing k and v into a paged pool.
    QkvRopeAppend(KeyDtype),
}

impl ModelKernel {
    /// Every model kernel, in [`ModelKernel::index`] order.
    pub const ALL: [ModelKernel; 23] = [
        ModelKernel::RmsNorm,
        ModelKernel::AddRmsNorm,
        ModelKernel::QkvRope(KeyDtype::F16),
        ModelKernel::QkvRope(KeyDtype::Bf16),
        ModelKernel::GatherRows,
        ModelKernel::SiluAndMul,
        ModelKernel::ToF32(KeyDtype::F16),
        ModelKernel::ToF32(KeyDtype::Bf16),
        ModelKernel::Argmax,
        ModelKernel::RmsNorm16(KeyDtype::F16),
        ModelKernel::RmsNorm16(KeyDtype::Bf16),
        ModelKernel::AddRmsNorm16(KeyDtype::F16),
        ModelKernel::AddRmsNorm16(KeyDtype::Bf16),
        ModelKernel::GatherRows16(KeyDtype::F16),
        ModelKernel::GatherRows16(KeyDtype::Bf16),
        ModelKernel::SiluAndMul16(KeyDtype::F16),
        ModelKernel::SiluAndMul16(KeyDtype::Bf16),
        ModelKernel::Gemv(KeyDtype::F16),
        ModelKernel::Gemv(KeyDtype::Bf16),
        ModelKernel::GemvSilu(KeyDtype::F16),
        ModelKernel::GemvSilu(KeyDtype::Bf16),
        ModelKernel::QkvRopeAppend(KeyDtype::F16),
        ModelKernel::QkvRopeAppend(KeyDtype::Bf16),
    ];

    /// Position in [`ModelKernel::ALL`].
    pub const fn index(self) -> usize {
        match self {
            ModelKernel::RmsNorm => 0,
            ModelKernel::AddRmsNorm => 1,
            ModelKernel::QkvRope(KeyDtype::F16) => 2,
            ModelKernel::QkvRope(KeyDtype::Bf16) => 3,
            ModelKernel::GatherRows => 4,
            ModelKernel::SiluAndMul => 5,
            ModelKernel::ToF32(KeyDtype::F16) => 6,
            ModelKernel::ToF32(KeyDtype::Bf16) => 7,
            ModelKernel::Argmax => 8,
            ModelKernel::RmsNorm16(KeyDtype::F16) => 9,
            ModelKernel::RmsNorm16(KeyDtype::Bf16) => 10,
            ModelKernel::AddRmsNorm16(KeyDtype::F16) => 11,
            ModelKernel::AddRmsNorm16(KeyDtype::Bf16) => 12,
            ModelKernel::GatherRows16(KeyDtype::F16) => 13,
            ModelKernel::GatherRows16(KeyDtype::Bf16) => 14,
            ModelKernel::SiluAndMul16(KeyDtype::F16) => 15,
            ModelKernel::SiluAndMul16(KeyDtype::Bf16) => 16,
            ModelKernel::Gemv(KeyDtype::F16) => 17,
            ModelKernel::Gemv(KeyDtype::Bf16) => 18,
            ModelKernel::GemvSilu(KeyDtype::F16) => 19,
            ModelKernel::GemvSilu(KeyDtype::Bf16) => 20,
            ModelKernel::QkvRopeAppend(KeyDtype::F16) => 21,
            ModelKernel::QkvRopeAppend(KeyDtype::Bf16) => 22,
        }
    }

    /// The symbol.
    pub const fn name(self) -> &'static str {
        match self {
            ModelKernel::RmsNorm => "rms_norm",
            ModelKernel::AddRmsNorm => "add_rms_norm",
            ModelKernel::QkvRope(KeyDtype::F16) => "qkv_rope_f16",
            ModelKernel::QkvRope(KeyDtype::Bf16) => "qkv_rope_bf16",
            ModelKernel::GatherRows => "gather_rows",
            ModelKernel::SiluAndMul => "silu_and_mul",
            ModelKernel::ToF32(KeyDtype::F16) => "to_f32_f16",
            ModelKernel::ToF32(KeyDtype::Bf16) => "to_f32_bf16",
            ModelKernel::Argmax => "argmax",
            ModelKernel::RmsNorm16(KeyDtype::F16) => "rms_norm_f16",
            ModelKernel::RmsNorm16(KeyDtype::Bf16) => "rms_norm_bf16",
            ModelKernel::AddRmsNorm16(KeyDtype::F16) => "add_rms_norm_f16",
            ModelKernel::AddRmsNorm16(KeyDtype::Bf16) => "add_rms_norm_bf16",
            ModelKernel::GatherRows16(KeyDtype::F16) => "gather_rows_f16",
            ModelKernel::GatherRows16(KeyDtype::Bf16) => "gather_rows_bf16",
            ModelKernel::SiluAndMul16(KeyDtype::F16) => "silu_and_mul_f16",
            ModelKernel::SiluAndMul16(KeyDtype::Bf16) => "silu_and_mul_bf16",
            ModelKernel::Gemv(KeyDtype::F16) => "gemv_f16",
            ModelKernel::Gemv(KeyDtype::Bf16) => "gemv_bf16",
            ModelKernel::GemvSilu(KeyDtype::F16) => "gemv_silu_f16",
            ModelKernel::GemvSilu(KeyDtype::Bf16) => "gemv_silu_bf16",
            ModelKernel::QkvRopeAppend(KeyDtype::F16) => "qkv_rope_append_f16",
            ModelKernel::QkvRopeAppend(KeyDtype::Bf16) => "qkv_rope_append_bf16",
        }
    }
}

/// One attention, merge, KV-copy or model kernel entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelKey {
    /// Batch decode on CUDA cores, group capacity `group` (1, 2, 4, 8).
    Decode {
        /// Element type.
        dtype: KeyDtype,
        /// Head dim (64, 128, 256).
        head_dim: u32,
        /// Query-group capacity.
        group: u32,
    },
    /// Batch decode on CUDA cores with RoPE inside attention (group capacity 1, 2, 4, 8).
    DecodeRope {
        /// Element type.
        dtype: KeyDtype,
        /// Head dim (64, 128, 256).
        head_dim: u32,
        /// Query-group capacity.
        group: u32,
    },
    /// Batch decode on CUDA cores over fp8 K/V of format `fp8` (`dtype`: q and out).
    DecodeFp8 {
        /// Element type of q and out.
        dtype: KeyDtype,
        /// K/V format.
        fp8: Fp8Kind,
        /// Head dim (64, 128, 256).
        head_dim: u32,
        /// Query-group capacity.
        group: u32,
    },
    /// Batch decode on tensor cores (head dims 64, 128).
    DecodeTc {
        /// Element type.
        dtype: KeyDtype,
        /// Head dim.
        head_dim: u32,
    },
    /// Batch decode on tensor cores over fp8 K/V of format `fp8` (head dims 64, 128).
    DecodeTcFp8 {
        /// Element type of q and out.
        dtype: KeyDtype,
        /// K/V format.
        fp8: Fp8Kind,
        /// Head dim.
        head_dim: u32,
    },
    /// Prefill over ragged or paged K/V.
    Prefill {
        /// K/V layout.
        kv: KeyKv,
        /// Element type.
        dtype: KeyDtype,
        /// Head dim (64, 128, 256).
        head_dim: u32,
        /// Tile and form.
        form: PrefillForm,
    },
    /// Attention-state merge into `dtype` outputs; states in `dtype` (`f32_states` false) or
    /// in f32 (the split-KV prefill partials).
    Merge {
        /// Output element type.
        dtype: KeyDtype,
        /// Head dim (64, 128, 256).
        head_dim: u32,
        /// f32 input states.
        f32_states: bool,
    },
    /// KV append/gather.
    Copy(CopyKernel),
    /// A model kernel.
    Model(ModelKernel),
}

/// A kernel symbol, held inline (no allocation; the longest is 27 bytes).
#[derive(Clone, Copy)]
pub struct KernelName {
    buf: [u8; 40],
    len: u8,
}

impl KernelName {
    /// The symbol.
    pub fn as_str(&self) -> &str {
        // Only `&str` pieces are ever written (see `write_str`), and a write that would not
        // fit is refused whole, so the bytes are valid UTF-8.
        core::str::from_utf8(&self.buf[..self.len as usize]).unwrap_or("")
    }
}

impl Write for KernelName {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let at = self.len as usize;
        let end = at + s.len();
        if end > self.buf.len() {
            return Err(fmt::Error);
        }
        self.buf[at..end].copy_from_slice(s.as_bytes());
        self.len = end as u8;
        Ok(())
    }
}

impl core::ops::Deref for KernelName {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for KernelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for KernelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for KernelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            KernelKey::Decode {
                dtype,
                head_dim,
                group,
            } => write!(f, "decode_{}_d{head_dim}_g{group}", dtype.name()),
            KernelKey::DecodeRope {
                dtype,
                head_dim,
                group,
            } => write!(f, "decode_rope_{}_d{head_dim}_g{group}", dtype.name()),
            KernelKey::DecodeFp8 {
                dtype,
                fp8,
                head_dim,
                group,
            } => {
                let (d, k) = (dtype.name(), fp8.name());
                write!(f, "decode_fp8_{k}_{d}_d{head_dim}_g{group}")
            }
            KernelKey::DecodeTc { dtype, head_dim } => {
                write!(f, "decode_tc_{}_d{head_dim}", dtype.name())
            }
            KernelKey::DecodeTcFp8 {
                dtype,
                fp8,
                head_dim,
            } => {
                let (d, k) = (dtype.name(), fp8.name());
                write!(f, "decode_tc_fp8_{k}_{d}_d{head_dim}")
            }
            KernelKey::Prefill {
                kv,
                dtype,
                head_dim,
                form,
            } => {
                let kv = match kv {
                    KeyKv::Ragged => "ragged",
                    KeyKv::Paged => "paged",
                };
                let (d, s) = (dtype.name(), form.suffix());
                write!(f, "prefill_{kv}_{d}_d{head_dim}{s}")
            }
            KernelKey::Merge {
                dtype,
                head_dim,
                f32_states,
            } => {
                let states = if f32_states { "f32_" } else { "" };
                write!(f, "merge_{states}{}_d{head_dim}", dtype.name())
            }
            KernelKey::Copy(c) => f.write_str(c.name()),
            KernelKey::Model(m) => f.write_str(m.name()),
        }
    }
}

impl KernelKey {
    /// The entry point's symbol.
    pub fn name(&self) -> KernelName {
        let mut n = KernelName {
            buf: [0; 40],
            len: 0,
        };
        // Every key's name fits the buffer (checked for all keys by the tests below).
        let _ = write!(n, "{self}");
        n
    }

    /// Whether the kernel runs `griddepcontrol.wait` in every thread before it touches memory
    /// an earlier kernel may write (`arch::grid_dep`), so the host may launch it as a
    /// programmatic dependent: the decode kernels, the merge, the KV copies and the model
    /// kernels. The prefill kernels do not (they start with their own load pipelines).
    pub fn waits_for_prior_grids(&self) -> bool {
        // Exhaustive: a new kind of kernel must decide.
        match self {
            KernelKey::Decode { .. }
            | KernelKey::DecodeRope { .. }
            | KernelKey::DecodeFp8 { .. }
            | KernelKey::DecodeTc { .. }
            | KernelKey::DecodeTcFp8 { .. }
            | KernelKey::Merge { .. }
            | KernelKey::Copy(_)
            | KernelKey::Model(_) => true,
            KernelKey::Prefill { .. } => false,
        }
    }

    /// Whether the kernel exists only in the sm_90a image (the Hopper prefill forms).
    pub const fn sm90a_only(&self) -> bool {
        matches!(
            self,
            KernelKey::Prefill {
                form: PrefillForm::Hopper { .. },
                ..
            }
        )
    }

    /// Calls `f` with every key the host can launch: the kernels built into the images (the
    /// Hopper forms only where [`KernelKey::sm90a_only`] allows; TMA forms for ragged K/V
    /// only).
    pub fn for_each(mut f: impl FnMut(KernelKey)) {
        for dtype in KeyDtype::ALL {
            for head_dim in [64, 128, 256] {
                for group in [1, 2, 4, 8] {
                    f(KernelKey::Decode {
                        dtype,
                        head_dim,
                        group,
                    });
                    f(KernelKey::DecodeRope {
                        dtype,
                        head_dim,
                        group,
                    });
                    for fp8 in Fp8Kind::ALL {
                        f(KernelKey::DecodeFp8 {
                            dtype,
                            fp8,
                            head_dim,
                            group,
                        });
                    }
                }
                if head_dim <= 128 {
                    f(KernelKey::DecodeTc { dtype, head_dim });
                    for fp8 in Fp8Kind::ALL {
                        f(KernelKey::DecodeTcFp8 {
                            dtype,
                            fp8,
                            head_dim,
                        });
                    }
                }
                for f32_states in [false, true] {
                    f(KernelKey::Merge {
                        dtype,
                        head_dim,
                        f32_states,
                    });
                }
                for kv in KeyKv::ALL {
                    let mut forms = [PrefillForm::Rows64; 11];
                    forms[1] = PrefillForm::Rows64Rope;
                    let n = if head_dim == 256 {
                        2
                    } else {
                        forms[2] = PrefillForm::Rows64Masked;
                        forms[3] = PrefillForm::Rows128;
                        forms[4] = PrefillForm::Rows128Wide;
                        forms[5] = PrefillForm::Rows64Fp8(Fp8Kind::E4m3);
                        forms[6] = PrefillForm::Rows64Fp8(Fp8Kind::E5m2);
                        let mut n = 7;
                        for persistent in [false, true] {
                            for tma in [false, true] {
                                if !tma || kv == KeyKv::Ragged {
                                    forms[n] = PrefillForm::Hopper { persistent, tma };
                                    n += 1;
                                }
                            }
                        }
                        n
                    };
                    for &form in &forms[..n] {
                        f(KernelKey::Prefill {
                            kv,
                            dtype,
                            head_dim,
                            form,
                        });
                    }
                }
            }
        }
        for c in CopyKernel::ALL {
            f(KernelKey::Copy(c));
        }
        for m in ModelKernel::ALL {
            f(KernelKey::Model(m));
        }
    }
}

#[cfg(test)]
mod tests;
