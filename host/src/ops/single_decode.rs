//! Single-request decode attention on the GPU: one query token per head against a contiguous
//! (or strided) K/V of `kv_len` tokens.
//!
//! A thin case of the batch path ([`crate::ops::BatchDecode`]): the K/V tensors are one "page"
//! spanning the whole sequence, the planner splits the KV across CTAs so that all SMs are busy,
//! and the split partials are merged by the batch merge kernel. Every input is validated before
//! the first launch.
use crate::dtype::{DType, Float16, KvDtype, KvElem};
use crate::error::{Error, Result};
use crate::fp8::{Fp8, Fp8Format, KvScales};
use crate::heads::HeadConfig;
use crate::kv::BatchPages;
use crate::ops::batch_decode::{BatchDecode, BatchDecodePlan, KvSource};
use crate::options::AttentionOptions;
use crate::plan::DecodePlan;
use crate::runtime::{DeviceBuffer, Gpu};
use crate::validate;

const OP: &str = "single_decode";

/// Element strides of a K or V tensor: element `(t, h, d)` at `t*stride_n + h*stride_h + d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvStrides {
    /// Stride between tokens (elements).
    pub stride_n: usize,
    /// Stride between heads (elements).
    pub stride_h: usize,
}

impl KvStrides {
    /// Contiguous `[kv_len, num_kv_heads, head_dim]` (NHD).
    pub fn contiguous(heads: &HeadConfig) -> Self {
        Self {
            // Saturates (never wraps) for geometry `HeadConfig::validate` refuses: the extent
            // check (`required_len`) then fails instead of reading out of bounds.
            stride_n: heads.num_kv_heads.saturating_mul(heads.head_dim),
            stride_h: heads.head_dim,
        }
    }

    /// Elements a buffer must hold for `kv_len` tokens.
    pub fn required_len(&self, heads: &HeadConfig, kv_len: usize) -> Option<usize> {
        if kv_len == 0 {
            return Some(0);
        }
        (kv_len - 1)
            .checked_mul(self.stride_n)?
            .checked_add(
                heads
                    .num_kv_heads
                    .checked_sub(1)?
                    .checked_mul(self.stride_h)?,
            )?
            .checked_add(heads.head_dim)
    }
}

/// Single-request decode attention on a [`Gpu`], for one head configuration, dtype and option
/// set. Reuses its plan buffers across calls.
pub struct SingleDecode {
    gpu: Gpu,
    heads: HeadConfig,
    inner: BatchDecode,
    plan: Option<BatchDecodePlan>,
}

impl SingleDecode {
    /// Validates the configuration and resolves the kernel. Head dims 64/128/256, groups 1–8 (up to 16 at head dims 64 and 128, on tensor cores),
    /// f16/bf16.
    pub fn new(gpu: &Gpu, heads: HeadConfig, dtype: DType, opts: AttentionOptions) -> Result<Self> {
        let inner = BatchDecode::new(gpu, heads, dtype, opts).map_err(rename)?;
        Ok(Self {
            gpu: gpu.clone(),
            heads,
            inner,
            plan: None,
        })
    }

    /// The kernel symbol this op launches.
    pub fn kernel_name(&self) -> &str {
        self.inner.kernel_name()
    }

    /// Sets the K/V element type the op reads (as [`BatchDecode::set_kv_dtype`]): fp8 K/V run
    /// with [`SingleDecode::run_fp8`].
    pub fn set_kv_dtype(&mut self, kv: KvDtype) -> Result<()> {
        self.inner.set_kv_dtype(kv).map_err(rename)
    }

    /// [`SingleDecode::run`] over contiguous fp8 K and V (codes of format `F`) read with
    /// `scales` (real = code × scale); q and out stay 16-bit. The op must have been set to `F`
    /// ([`SingleDecode::set_kv_dtype`]); another format, or a scale that is not finite and > 0,
    /// is an `InvalidArgument`.
    #[allow(clippy::too_many_arguments)]
    pub fn run_fp8<T: Float16, F: Fp8Format>(
        &mut self,
        q: &DeviceBuffer<T>,
        k: &DeviceBuffer<Fp8<F>>,
        v: &DeviceBuffer<Fp8<F>>,
        kv_len: usize,
        scales: KvScales,
        out: &mut DeviceBuffer<T>,
        lse: Option<&mut DeviceBuffer<f32>>,
    ) -> Result<()> {
        let kv = <Fp8<F> as KvElem>::KV_DTYPE;
        if kv != self.inner.kv_dtype() {
            return Err(Error::invalid(
                OP,
                "kv dtype",
                format!("the op reads {} K/V, got {kv}", self.inner.kv_dtype()),
            ));
        }
        scales.validate(OP)?;
        let s = KvStrides::contiguous(&self.heads);
        self.run_kv(q, k, s, v, s, kv_len, out, lse, Some(scales))
    }

    /// The partition used by the last [`SingleDecode::run`] (work items = CTAs per KV head).
    pub fn last_plan(&self) -> Option<&DecodePlan> {
        self.plan.as_ref().map(|p| p.partition())
    }

    /// Runs decode for contiguous `[kv_len, num_kv_heads, head_dim]` K and V.
    ///
    /// `q` and `out` are `[num_qo_heads, head_dim]`; `lse`, when given, `[num_qo_heads]` (base 2).
    pub fn run<T: Float16>(
        &mut self,
        q: &DeviceBuffer<T>,
        k: &DeviceBuffer<T>,
        v: &DeviceBuffer<T>,
        kv_len: usize,
        out: &mut DeviceBuffer<T>,
        lse: Option<&mut DeviceBuffer<f32>>,
    ) -> Result<()> {
        let s = KvStrides::contiguous(&self.heads);
        self.run_strided(q, k, s, v, s, kv_len, out, lse)
    }

    /// Runs decode with explicit K and V strides (e.g. views into a fused QKV buffer).
    #[allow(clippy::too_many_arguments)]
    pub fn run_strided<T: Float16>(
        &mut self,
        q: &DeviceBuffer<T>,
        k: &DeviceBuffer<T>,
        k_strides: KvStrides,
        v: &DeviceBuffer<T>,
        v_strides: KvStrides,
        kv_len: usize,
        out: &mut DeviceBuffer<T>,
        lse: Option<&mut DeviceBuffer<f32>>,
    ) -> Result<()> {
        self.run_kv(q, k, k_strides, v, v_strides, kv_len, out, lse, None)
    }

    /// The one body of the runs: K/V elements `S` (16-bit: `scales` `None`; fp8: `Some`).
    #[allow(clippy::too_many_arguments)]
    fn run_kv<T: Float16, S: KvElem>(
        &mut self,
        q: &DeviceBuffer<T>,
        k: &DeviceBuffer<S>,
        k_strides: KvStrides,
        v: &DeviceBuffer<S>,
        v_strides: KvStrides,
        kv_len: usize,
        out: &mut DeviceBuffer<T>,
        lse: Option<&mut DeviceBuffer<f32>>,
        scales: Option<KvScales>,
    ) -> Result<()> {
        let h = self.heads;
        self.gpu.check_buffer(OP, q)?;
        for b in [k, v] {
            self.gpu.check_buffer(OP, b)?;
        }
        let qo = h.num_qo_heads * h.head_dim;
        validate::at_least(OP, "q elements", qo, q.len())?;
        validate::at_least(OP, "out elements", qo, out.len())?;
        validate::kv_len(OP, kv_len)?;
        for (name, st, buf) in [("k", k_strides, k), ("v", v_strides, v)] {
            if st.stride_n % 8 != 0 || st.stride_h % 8 != 0 {
                return Err(Error::invalid(
                    OP,
                    "strides",
                    format!(
                        "{name} strides ({}, {}) must be multiples of 8 elements (16-byte rows)",
                        st.stride_n, st.stride_h
                    ),
                ));
            }
            if u32::try_from(st.stride_n).is_err() || u32::try_from(st.stride_h).is_err() {
                return Err(Error::Overflow {
                    op: OP,
                    what: "kv strides",
                });
            }
            if st.stride_h < h.head_dim && h.num_kv_heads > 1 {
                return Err(Error::invalid(
                    OP,
                    "strides",
                    format!("{name} head stride {} < head_dim", st.stride_h),
                ));
            }
            let what = if name == "k" {
                "k elements"
            } else {
                "v elements"
            };
            let need = validate::kv_extent(OP, what, &h, st, kv_len, buf.len())?;
            // In-page offsets are 32-bit: the whole sequence is one page here.
            if u32::try_from(need).is_err() {
                return Err(Error::Overflow {
                    op: OP,
                    what: "kv extent (2^32 elements per tensor)",
                });
            }
        }
        // One page spanning the sequence.
        let page_size = kv_len.max(1);
        let pages = if kv_len == 0 {
            BatchPages {
                kv_indptr: vec![0, 0],
                kv_indices: vec![],
                kv_last_page_len: vec![0],
            }
        } else {
            BatchPages {
                kv_indptr: vec![0, 1],
                kv_indices: vec![0],
                kv_last_page_len: vec![kv_len as i32],
            }
        };
        match self.plan.as_mut() {
            Some(p) => self.inner.replan(&pages, page_size, p).map_err(rename)?,
            None => {
                self.plan = Some(
                    self.inner
                        .plan_for_page_size(&pages, page_size, None)
                        .map_err(rename)?,
                )
            }
        }
        let Some(plan) = self.plan.as_ref() else {
            return Err(Error::invalid(OP, "plan", "missing"));
        };
        let src = KvSource {
            k: k.addr(),
            v: v.addr(),
            k_stride_page: 0,
            v_stride_page: 0,
            k_stride_n: k_strides.stride_n as u32,
            k_stride_h: k_strides.stride_h as u32,
            v_stride_n: v_strides.stride_n as u32,
            v_stride_h: v_strides.stride_h as u32,
            page_size: page_size as u32,
            single: true,
        };
        let lse = lse.map(|l| l.span());
        self.inner
            .launch_scaled(plan, src, q.span(), out.span(), lse, scales)
            .map_err(rename)
    }
}

/// Errors from the shared batch path keep naming this op.
fn rename(e: Error) -> Error {
    match e {
        Error::Shape {
            what,
            expected,
            got,
            ..
        } => Error::Shape {
            op: OP,
            what,
            expected,
            got,
        },
        Error::Unsupported { what, detail, .. } => Error::Unsupported {
            op: OP,
            what,
            detail,
        },
        Error::InvalidArgument { what, detail, .. } => Error::InvalidArgument {
            op: OP,
            what,
            detail,
        },
        other => other,
    }
}
