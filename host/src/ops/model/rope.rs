//! The fused QKV epilogue: split + RoPE + cast (CPU twin: [`crate::cpu::rope::apply_rope`] on
//! the q and k parts, then rounding to the 16-bit type).
use ferrinfer_kernels::abi::{
    RopeAppendParams, RopeParams, MODEL_THREADS, ROPE_HALF, ROPE_INTERLEAVED,
};
use ferrinfer_kernels::kernel_key::ModelKernel;

use super::{mul, positive, small, ModelKernels, MAX_GRID_X};
use crate::dtype::Float16;
use crate::error::{Error, Result};
use crate::kv::AppendTarget;
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
        let mut p = self.rope_params(OP, qkv, n, (hq, hk, d), positions, inv_freq, style, q)?;
        let kv = mul(OP, "k/v elements", n, hk * d)?;
        self.buffer(OP, "k elements", k, kv)?;
        self.buffer(OP, "v elements", v, kv)?;
        (p.k, p.v) = (k.addr(), v.addr());
        // SAFETY: every buffer was checked to hold its [n, ...] extent (head counts and head_dim
        // fit in u32 since heads × head_dim / 2 does); 1 ≤ pairs ≤ d/2 with d even; the inputs
        // are shared borrows and the outputs distinct exclusive ones.
        unsafe { self.launch(ModelKernel::QkvRope(T::DTYPE.key()), Self::rope_dims(&p), p) }
    }

    /// [`ModelKernels::qkv_rope`] with RoPE fused into the KV append: q as there, but each
    /// token's rotated k and its v are written straight into its slot of layer `target`'s pool
    /// (the step's uploaded metadata: [`crate::kv::PagedKvCache::append_target`]), the same
    /// bits [`crate::kv::PagedKvCache::append_layer`] would copy there from `qkv_rope`'s k and
    /// v — one launch instead of two, and no k/v round trip through memory. `n` must be the
    /// step's row count; the KV heads and head dim are the pool's.
    #[allow(clippy::too_many_arguments)]
    pub fn qkv_rope_append<T: Float16>(
        &self,
        qkv: &DeviceBuffer<f32>,
        n: usize,
        hq: usize,
        positions: &DeviceBuffer<i32>,
        inv_freq: &DeviceBuffer<f32>,
        style: RopeStyle,
        q: &mut DeviceBuffer<T>,
        target: AppendTarget<'_, T>,
    ) -> Result<()> {
        const OP: &str = "qkv_rope_append";
        if target.ctx_id != self.gpu.ctx_id() {
            return Err(Error::invalid(
                OP,
                "append target",
                "a pool of another device context",
            ));
        }
        if n != target.rows() {
            return Err(Error::shape(
                OP,
                "tokens (the step's rows)",
                target.rows(),
                n,
            ));
        }
        let c = *target.config();
        let rope = self.rope_params(
            OP,
            qkv,
            n,
            (hq, c.num_kv_heads, c.head_dim),
            positions,
            inv_freq,
            style,
            q,
        )?;
        let [batch_indices, cache_positions, kv_indptr, kv_indices] = target.meta;
        let p = RopeAppendParams {
            rope,
            k_pool: target.k_pool,
            v_pool: target.v_pool,
            batch_indices,
            cache_positions,
            kv_indptr,
            kv_indices,
            pool: target.strides(),
        };
        // SAFETY: qkv, positions, inv_freq and q checked as for `qkv_rope`; the target's
        // metadata was validated against the pool and its page tables for exactly `n` rows
        // when the step was made (the target borrows the cache, so neither changes), and the
        // pool's pages are 16-bit `T` of the pool's geometry (even head_dim).
        unsafe {
            self.launch(
                ModelKernel::QkvRopeAppend(T::DTYPE.key()),
                Self::rope_dims(&p.rope),
                p,
            )
        }
    }

    /// Validates the shared inputs of the RoPE epilogues and returns their parameters (k and
    /// v left 0 for the caller).
    #[allow(clippy::too_many_arguments)]
    fn rope_params<T: Float16>(
        &self,
        op: &'static str,
        qkv: &DeviceBuffer<f32>,
        n: usize,
        (hq, hk, d): (usize, usize, usize),
        positions: &DeviceBuffer<i32>,
        inv_freq: &DeviceBuffer<f32>,
        style: RopeStyle,
        q: &DeviceBuffer<T>,
    ) -> Result<RopeParams> {
        positive(op, "query heads", hq)?;
        positive(op, "key/value heads", hk)?;
        if d < 2 || !d.is_multiple_of(2) {
            return Err(Error::invalid(op, "head_dim", format!("{d} (even, ≥ 2)")));
        }
        self.gpu.check_buffer(op, inv_freq)?;
        let pairs = inv_freq.len();
        if pairs == 0 || pairs > d / 2 {
            return Err(Error::shape(
                op,
                "inv_freq elements (rotary_dim / 2)",
                format!("in 1..={}", d / 2),
                pairs,
            ));
        }
        // The kernel indexes a row's element pairs in u32.
        let heads = hk
            .checked_mul(2)
            .and_then(|x| x.checked_add(hq))
            .ok_or(Error::Overflow { op, what: "heads" })?;
        let row_pairs = mul(op, "heads × head_dim", heads, d)? / 2;
        small(op, "heads × head_dim / 2", row_pairs, usize::MAX)?;
        let row = heads * d;
        self.buffer(op, "qkv elements", qkv, mul(op, "n × row", n, row)?)?;
        self.buffer(op, "positions", positions, n)?;
        self.buffer(op, "q elements", q, mul(op, "q elements", n, hq * d)?)?;
        Ok(RopeParams {
            qkv: qkv.addr(),
            positions: positions.addr(),
            inv_freq: inv_freq.addr(),
            q: q.addr(),
            k: 0,
            v: 0,
            n: small(op, "tokens", n, MAX_GRID_X)?,
            num_q_heads: hq as u32,
            num_kv_heads: hk as u32,
            head_dim: d as u32,
            rotary_pairs: pairs as u32,
            style: match style {
                RopeStyle::Interleaved => ROPE_INTERLEAVED,
                RopeStyle::Half => ROPE_HALF,
            },
        })
    }

    /// One CTA per token.
    fn rope_dims(p: &RopeParams) -> LaunchDims {
        LaunchDims {
            grid: (p.n, 1, 1),
            block: (MODEL_THREADS, 1, 1),
            smem_bytes: 0,
        }
    }
}
