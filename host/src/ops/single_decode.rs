//! Single-request decode attention on the GPU: one query token per head against a contiguous
//! (or strided) K/V of `kv_len` tokens.
//!
//! Device side: `kernels-gpu/src/decode.rs` (split-KV partials) and `merge.rs`. Long KV is cut
//! into chunks so that about two CTAs per SM are busy ([`split_kv`]); the partial states are
//! merged by the merge kernel. Every input is validated before the first launch.
use ferrinfer_kernels::abi::{MergeParams, SingleDecodeParams};
use ferrinfer_kernels::config::{merge as merge_cfg, single_decode as cfg};
use ferrinfer_kernels::math::softmax::LogitTransform;

use crate::dtype::{DType, Float16};
use crate::error::{Error, Result};
use crate::heads::HeadConfig;
use crate::options::AttentionOptions;
use crate::runtime::{DeviceBuffer, Gpu, LaunchDims};

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
            stride_n: heads.num_kv_heads * heads.head_dim,
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
            .checked_add((heads.num_kv_heads - 1).checked_mul(self.stride_h)?)?
            .checked_add(heads.head_dim)
    }
}

/// How a KV range is cut for split-KV.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    /// First attended token (sliding window start).
    pub kv_begin: usize,
    /// One past the last attended token.
    pub kv_end: usize,
    /// Tokens per chunk.
    pub chunk_len: usize,
    /// Number of chunks (CTAs per KV head).
    pub num_chunks: usize,
}

/// Plans the split of `[kv_begin, kv_end)`: enough chunks that `num_kv_heads × chunks` reaches
/// `target_ctas`, but no chunk shorter than `config::single_decode::MIN_CHUNK`; chunk lengths
/// are multiples of the tokens a CTA consumes per iteration, so no CTA idles mid-chunk.
pub fn split_kv(
    kv_begin: usize,
    kv_end: usize,
    num_kv_heads: usize,
    head_dim: u32,
    target_ctas: usize,
) -> Split {
    let len = kv_end - kv_begin;
    let per_iter = cfg::tokens_per_iter(head_dim) as usize;
    let want = target_ctas.div_ceil(num_kv_heads.max(1)).max(1);
    let most = (len / cfg::MIN_CHUNK as usize).max(1);
    let n = want.min(most);
    let chunk_len = len.div_ceil(n).div_ceil(per_iter).max(1) * per_iter;
    let num_chunks = len.div_ceil(chunk_len).max(1);
    Split {
        kv_begin,
        kv_end,
        chunk_len,
        num_chunks,
    }
}

/// Single-request decode attention on a [`Gpu`], for one head configuration, dtype and option
/// set. Holds a growable workspace for split-KV partial states.
pub struct SingleDecode {
    gpu: Gpu,
    heads: HeadConfig,
    dtype: DType,
    opts: AttentionOptions,
    kernel: String,
    group_cap: u32,
    part_o: Option<DeviceBuffer<f32>>,
    part_lse: Option<DeviceBuffer<f32>>,
    last_split: Option<Split>,
}

impl SingleDecode {
    /// Validates the configuration and resolves the kernel. Head dims 64/128/256, groups 1–8,
    /// f16/bf16.
    pub fn new(gpu: &Gpu, heads: HeadConfig, dtype: DType, opts: AttentionOptions) -> Result<Self> {
        heads.validate(OP)?;
        opts.validate(OP)?;
        if !matches!(heads.head_dim, 64 | 128 | 256) {
            return Err(Error::unsupported(
                OP,
                "head_dim",
                format!("{} (supported: 64, 128, 256)", heads.head_dim),
            ));
        }
        let g = heads.group();
        let group_cap = u32::try_from(g)
            .ok()
            .and_then(cfg::group_capacity)
            .ok_or_else(|| {
                Error::unsupported(OP, "group size", format!("{g} (supported: 1..=8)"))
            })?;
        if u32::try_from(heads.num_qo_heads).is_err() {
            return Err(Error::Overflow {
                op: OP,
                what: "num_qo_heads",
            });
        }
        let kernel = format!(
            "single_decode_{}_d{}_g{}",
            dtype.name(),
            heads.head_dim,
            group_cap
        );
        gpu.function(&kernel, 0)?;
        Ok(Self {
            gpu: gpu.clone(),
            heads,
            dtype,
            opts,
            kernel,
            group_cap,
            part_o: None,
            part_lse: None,
            last_split: None,
        })
    }

    /// The kernel symbol this op launches.
    pub fn kernel_name(&self) -> &str {
        &self.kernel
    }

    /// The split used by the last [`SingleDecode::run`].
    pub fn last_split(&self) -> Option<Split> {
        self.last_split
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
        let h = self.heads;
        if T::DTYPE != self.dtype {
            return Err(Error::shape(OP, "element type", self.dtype, T::DTYPE));
        }
        for b in [q, k, v] {
            self.gpu.check_buffer(OP, b)?;
        }
        self.gpu.check_buffer(OP, out)?;
        let qo = h.num_qo_heads * h.head_dim;
        if q.len() < qo {
            return Err(Error::shape(OP, "q elements", format!(">= {qo}"), q.len()));
        }
        if out.len() < qo {
            return Err(Error::shape(
                OP,
                "out elements",
                format!(">= {qo}"),
                out.len(),
            ));
        }
        if let Some(l) = lse.as_deref() {
            self.gpu.check_buffer(OP, l)?;
            if l.len() < h.num_qo_heads {
                return Err(Error::shape(
                    OP,
                    "lse elements",
                    format!(">= {}", h.num_qo_heads),
                    l.len(),
                ));
            }
        }
        if kv_len > i32::MAX as usize {
            return Err(Error::invalid(
                OP,
                "kv_len",
                format!("{kv_len} exceeds 2^31-1"),
            ));
        }
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
            let need = st.required_len(&h, kv_len).ok_or(Error::Overflow {
                op: OP,
                what: "kv extent",
            })?;
            if buf.len() < need {
                return Err(Error::shape(
                    OP,
                    if name == "k" {
                        "k elements"
                    } else {
                        "v elements"
                    },
                    format!(">= {need}"),
                    buf.len(),
                ));
            }
        }

        let kv_begin = match self.opts.window_left {
            Some(w) => kv_len.saturating_sub(w.saturating_add(1)),
            None => 0,
        };
        let target = 2 * self.gpu.info().sm_count as usize;
        let split = split_kv(kv_begin, kv_len, h.num_kv_heads, h.head_dim as u32, target);
        self.last_split = Some(split);
        let n = split.num_chunks;
        if n > 1 {
            let need_o = n * qo;
            let need_l = n * h.num_qo_heads;
            if self.part_o.as_ref().is_none_or(|b| b.len() < need_o) {
                self.part_o = Some(self.gpu.alloc::<f32>(need_o)?);
            }
            if self.part_lse.as_ref().is_none_or(|b| b.len() < need_l) {
                self.part_lse = Some(self.gpu.alloc::<f32>(need_l)?);
            }
        }
        let addr_or_zero = |b: &Option<DeviceBuffer<f32>>| b.as_ref().map_or(0, |b| b.addr());
        let lse_addr = lse.as_deref().map_or(0, |l| l.addr());
        let tf = LogitTransform::new(self.opts.scale(&h), self.opts.soft_cap);
        let g = h.group() as u32;
        let d = h.head_dim as u32;
        let p = SingleDecodeParams {
            q: q.addr(),
            k: k.addr(),
            v: v.addr(),
            o: out.addr(),
            lse: lse_addr,
            part_o: addr_or_zero(&self.part_o),
            part_lse: addr_or_zero(&self.part_lse),
            kv_begin: split.kv_begin as u32,
            kv_end: split.kv_end as u32,
            chunk_len: split.chunk_len as u32,
            num_chunks: n as u32,
            num_qo_heads: h.num_qo_heads as u32,
            group: g,
            q_stride_h: d,
            o_stride_h: d,
            k_stride_n: k_strides.stride_n as u32,
            k_stride_h: k_strides.stride_h as u32,
            v_stride_n: v_strides.stride_n as u32,
            v_stride_h: v_strides.stride_h as u32,
            logit: tf,
        };
        let dims = LaunchDims {
            grid: (n as u32, h.num_kv_heads as u32, 1),
            block: (cfg::THREADS, 1, 1),
            smem_bytes: cfg::smem_bytes(d, self.group_cap),
        };
        // SAFETY: every pointer/extent above was validated against the kernel's contract
        // (buffer sizes, 16-byte row alignment, group <= capacity, workspace sized for n chunks).
        unsafe { self.gpu.launch(&self.kernel, dims, p)? };
        if n > 1 {
            let mp = MergeParams {
                part_o: p.part_o,
                part_lse: p.part_lse,
                o: p.o,
                lse: lse_addr,
                num_chunks: n as u32,
                num_heads: h.num_qo_heads as u32,
                head_dim: d,
                o_stride_h: d,
            };
            let dims = LaunchDims {
                grid: (h.num_qo_heads as u32, 1, 1),
                block: (merge_cfg::THREADS, 1, 1),
                smem_bytes: merge_cfg::smem_bytes(n as u32),
            };
            let name = format!("merge_states_{}", self.dtype.name());
            // SAFETY: partials were sized for n chunks × heads; out/lse validated above.
            unsafe { self.gpu.launch(&name, dims, mp)? };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_and_respects_minimum() {
        for &len in &[0usize, 1, 7, 16, 17, 255, 256, 1000, 4096, 131_072] {
            for &hkv in &[1usize, 2, 8, 32] {
                for d in [64u32, 128, 256] {
                    let s = split_kv(0, len, hkv, d, 264);
                    assert!(s.num_chunks >= 1);
                    assert!(s.num_chunks * s.chunk_len >= len);
                    assert!((s.num_chunks - 1) * s.chunk_len < len.max(1));
                    assert_eq!(s.chunk_len % cfg::tokens_per_iter(d) as usize, 0);
                    if s.num_chunks > 1 {
                        assert!(s.chunk_len >= cfg::MIN_CHUNK as usize);
                        assert!(s.num_chunks * hkv <= 264 + hkv);
                    }
                }
            }
        }
    }
}
