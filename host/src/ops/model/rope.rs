//! The fused QKV epilogue: split + RoPE + cast (CPU twin: [`crate::cpu::rope::apply_rope`] on
//! the q and k parts, then rounding to the 16-bit type).
use ferrinfer_kernels::abi::{RopeParams, MODEL_THREADS, ROPE_HALF, ROPE_INTERLEAVED};
use ferrinfer_kernels::kernel_key::ModelKernel;

use super::{mul, positive, small, ModelKernels, MAX_GRID_X};
use crate::dtype::Float16;
use crate::error::{Error, Result};
use crate::rope::RopeStyle;
use crate::runtime::{DeviceBuffer, LaunchDims};

const OP: &str = "qkv_rope";

impl ModelKernels {
    /// The fused QKV epilogue. `qkv` is `[n, hq + 2·hk, d]` f32 (each row: `hq` query heads,
    /// then `hk` key heads, then `hk` value heads, the QKV projection's output); writes `q`
    /// `[n, hq, d]`, `k` and `v` `[n, hk, d]` in `T`. q and k are rotated by RoPE: pair `i <
    /// inv_freq.len()` (`rotary_dim / 2`, at most `d / 2`) of token `t` by the angle
    /// `positions[t] as f32 · inv_freq[i]` (computed in f32, then an accurate range-reduced
    /// sine/cosine), pairs `(2i, 2i+1)` for [`RopeStyle::Interleaved`] and `(i, i +
    /// rotary_dim/2)` for [`RopeStyle::Half`]; elements past `rotary_dim` and all of v are
    /// copied. Every value is rounded once to `T`.
    ///
    /// Positions live on the device and are not checked: **a negative position is treated as
    /// 0**. Angles are accurate (about 2·10⁻⁷ absolute in sine/cosine) up to ~10⁶ radians,
    /// i.e. positions far beyond any context length at `inv_freq ≤ 1`.
    #[allow(clippy::too_many_arguments)]
    pub fn qkv_rope<T: Float16>(
        &self,
        qkv: &DeviceBuffer<f32>,
        n: usize,
        hq: usize,
        hk: usize,
        d: usize,
        positions: &DeviceBuffer<i32>,
        inv_freq: &DeviceBuffer<f32>,
        style: RopeStyle,
        q: &mut DeviceBuffer<T>,
        k: &mut DeviceBuffer<T>,
        v: &mut DeviceBuffer<T>,
    ) -> Result<()> {
        positive(OP, "query heads", hq)?;
        positive(OP, "key/value heads", hk)?;
        if d < 2 || !d.is_multiple_of(2) {
            return Err(Error::invalid(OP, "head_dim", format!("{d} (even, ≥ 2)")));
        }
        self.gpu.check_buffer(OP, inv_freq)?;
        let pairs = inv_freq.len();
        if pairs == 0 || pairs > d / 2 {
            return Err(Error::shape(
                OP,
                "inv_freq elements (rotary_dim / 2)",
                format!("in 1..={}", d / 2),
                pairs,
            ));
        }
        // The kernel indexes a row's element pairs in u32.
        let heads = hk
            .checked_mul(2)
            .and_then(|x| x.checked_add(hq))
            .ok_or(Error::Overflow {
                op: OP,
                what: "heads",
            })?;
        let row_pairs = mul(OP, "heads × head_dim", heads, d)? / 2;
        small(OP, "heads × head_dim / 2", row_pairs, usize::MAX)?;
        let row = heads * d;
        self.buffer(OP, "qkv elements", qkv, mul(OP, "n × row", n, row)?)?;
        self.buffer(OP, "positions", positions, n)?;
        self.buffer(OP, "q elements", q, mul(OP, "q elements", n, hq * d)?)?;
        let kv = mul(OP, "k/v elements", n, hk * d)?;
        self.buffer(OP, "k elements", k, kv)?;
        self.buffer(OP, "v elements", v, kv)?;
        let p = RopeParams {
            qkv: qkv.addr(),
            positions: positions.addr(),
            inv_freq: inv_freq.addr(),
            q: q.addr(),
            k: k.addr(),
            v: v.addr(),
            n: small(OP, "tokens", n, MAX_GRID_X)?,
            num_q_heads: hq as u32,
            num_kv_heads: hk as u32,
            head_dim: d as u32,
            rotary_pairs: pairs as u32,
            style: match style {
                RopeStyle::Interleaved => ROPE_INTERLEAVED,
                RopeStyle::Half => ROPE_HALF,
            },
        };
        let kernel = ModelKernel::QkvRope(T::DTYPE.key());
        let dims = LaunchDims {
            grid: (p.n, 1, 1),
            block: (MODEL_THREADS, 1, 1),
            smem_bytes: 0,
        };
        // SAFETY: every buffer was checked to hold its [n, ...] extent (head counts and head_dim
        // fit in u32 since heads × head_dim / 2 does); 1 ≤ pairs ≤ d/2 with d even; the inputs
        // are shared borrows and the outputs distinct exclusive ones.
        unsafe { self.launch(kernel, dims, p) }
    }
}
