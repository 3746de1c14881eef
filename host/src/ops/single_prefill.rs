//! Single-request prefill attention on the GPU (tensor cores): `qo_len` query tokens against
//! `kv_len` contiguous K/V tokens (the query tokens are the last `qo_len` of the context),
//! causal or not, with sliding window, soft-cap and lse.
//!
//! Device side: `kernels-gpu/src/prefill.rs`. This is the first step of the prefill issue: one
//! request, contiguous K/V, head dims 64 and 128, no split-KV (a CTA streams its whole KV range).
use ferrinfer_kernels::abi::PrefillParams;
use ferrinfer_kernels::config::prefill as cfg;
use ferrinfer_kernels::math::fastdiv::FastDiv;
use ferrinfer_kernels::math::softmax::LogitTransform;

use crate::dtype::{DType, Float16};
use crate::error::{Error, Result};
use crate::heads::HeadConfig;
use crate::options::AttentionOptions;
use crate::runtime::{DeviceBuffer, Gpu, LaunchDims};

const OP: &str = "single_prefill";

/// Single-request prefill for one head configuration, dtype and option set.
pub struct SinglePrefill {
    gpu: Gpu,
    heads: HeadConfig,
    dtype: DType,
    opts: AttentionOptions,
    kernel: String,
}

impl SinglePrefill {
    /// Validates the configuration: head dims 64 and 128, groups 1–8, f16/bf16.
    pub fn new(gpu: &Gpu, heads: HeadConfig, dtype: DType, opts: AttentionOptions) -> Result<Self> {
        heads.validate(OP)?;
        opts.validate(OP)?;
        if !matches!(heads.head_dim, 64 | 128) {
            return Err(Error::unsupported(
                OP,
                "head_dim",
                format!("{} (supported: 64, 128)", heads.head_dim),
            ));
        }
        if !(1..=8).contains(&heads.group()) {
            return Err(Error::unsupported(
                OP,
                "group size",
                format!("{} (supported: 1..=8)", heads.group()),
            ));
        }
        if heads.num_kv_heads > 65_535 {
            return Err(Error::Overflow {
                op: OP,
                what: "heads (grid.y holds at most 65535 KV heads)",
            });
        }
        if let Some(w) = opts.window_left {
            if w >= u32::MAX as usize {
                return Err(Error::invalid(OP, "window_left", format!("{w} too large")));
            }
        }
        let kernel = format!("prefill_{}_d{}", dtype.name(), heads.head_dim);
        gpu.function(&kernel, cfg::smem_bytes(heads.head_dim as u32))?;
        Ok(Self {
            gpu: gpu.clone(),
            heads,
            dtype,
            opts,
            kernel,
        })
    }

    /// Runs prefill: q and out `[qo_len, num_qo_heads, D]`, K and V `[kv_len, num_kv_heads, D]`
    /// (contiguous), lse `[qo_len, num_qo_heads]` (base 2) when given. With the causal mask,
    /// `qo_len ≤ kv_len` is required.
    #[allow(clippy::too_many_arguments)]
    pub fn run<T: Float16>(
        &self,
        q: &DeviceBuffer<T>,
        k: &DeviceBuffer<T>,
        v: &DeviceBuffer<T>,
        qo_len: usize,
        kv_len: usize,
        out: &mut DeviceBuffer<T>,
        lse: Option<&mut DeviceBuffer<f32>>,
    ) -> Result<()> {
        let h = self.heads;
        if T::DTYPE != self.dtype {
            return Err(Error::shape(OP, "element type", self.dtype, T::DTYPE));
        }
        for b in [q, k, v] {
            self.gpu.check_buffer(OP, b)?;
        }
        self.gpu.check_buffer(OP, out)?;
        if qo_len > kv_len {
            return Err(Error::invalid(
                OP,
                "qo_len",
                format!("{qo_len} > kv_len {kv_len} (query tokens are the last of the context)"),
            ));
        }
        let rows = qo_len.checked_mul(h.num_qo_heads).ok_or(Error::Overflow {
            op: OP,
            what: "q rows",
        })?;
        if kv_len > i32::MAX as usize
            || rows
                .checked_mul(h.head_dim)
                .is_none_or(|n| n > u32::MAX as usize)
        {
            return Err(Error::Overflow {
                op: OP,
                what: "lengths",
            });
        }
        let nq = rows * h.head_dim;
        let nkv = kv_len * h.num_kv_heads * h.head_dim;
        if q.len() < nq {
            return Err(Error::shape(OP, "q elements", format!(">= {nq}"), q.len()));
        }
        if out.len() < nq {
            return Err(Error::shape(
                OP,
                "out elements",
                format!(">= {nq}"),
                out.len(),
            ));
        }
        if k.len() < nkv || v.len() < nkv {
            return Err(Error::shape(
                OP,
                "k/v elements",
                format!(">= {nkv}"),
                k.len().min(v.len()),
            ));
        }
        if let Some(l) = lse.as_deref() {
            self.gpu.check_buffer(OP, l)?;
            if l.len() < rows {
                return Err(Error::shape(
                    OP,
                    "lse elements",
                    format!(">= {rows}"),
                    l.len(),
                ));
            }
        }
        if qo_len == 0 {
            return Ok(());
        }
        let d = h.head_dim as u32;
        let g = h.group() as u32;
        let p = PrefillParams {
            q: q.addr(),
            o: out.addr(),
            lse: lse.as_deref().map_or(0, |l| l.addr()),
            k: k.addr(),
            v: v.addr(),
            q_stride_n: h.num_qo_heads as u32 * d,
            q_stride_h: d,
            o_stride_n: h.num_qo_heads as u32 * d,
            o_stride_h: d,
            k_stride_n: h.num_kv_heads as u32 * d,
            k_stride_h: d,
            v_stride_n: h.num_kv_heads as u32 * d,
            v_stride_h: d,
            qo_len: qo_len as u32,
            kv_len: kv_len as u32,
            num_qo_heads: h.num_qo_heads as u32,
            group: FastDiv::new(g),
            window_left: self.opts.window_left.map_or(u32::MAX, |w| w as u32),
            causal: self.opts.causal as u32,
            logit: LogitTransform::new(self.opts.scale(&h), self.opts.soft_cap),
        };
        let dims = LaunchDims {
            grid: (
                (qo_len as u32 * g).div_ceil(cfg::ROWS),
                h.num_kv_heads as u32,
                1,
            ),
            block: (cfg::THREADS, 1, 1),
            smem_bytes: cfg::smem_bytes(d),
        };
        // SAFETY: every extent above was checked against the kernel's contract (q/out/k/v/lse
        // lengths, qo_len ≤ kv_len, contiguous 16-byte rows from whole allocations).
        unsafe { self.gpu.launch(&self.kernel, dims, p) }
    }
}
