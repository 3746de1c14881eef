//! The decode launch: the pool (or caller memory) as the kernel reads it, the I/O checks
//! against the plan, and the parameter block of the selected kernel.
use ferrinfer_kernels::abi::{DecodeFp8Params, DecodeParams, DecodeRopeParams};
use ferrinfer_kernels::config::decode_rows as cfg;
use ferrinfer_kernels::math::fastdiv::FastDiv;
use ferrinfer_kernels::math::softmax::LogitTransform;

use super::{BatchDecode, BatchDecodePlan, KvSource, OP};
use crate::dtype::{Float16, KvElem};
use crate::error::{Error, Result};
use crate::fp8::{Fp8, Fp8Format, KvScales};
use crate::kv::KvPool;
use crate::ops::io_check::PlannedIo;
use crate::runtime::{DeviceBuffer, DeviceSpan, LaunchDims};

impl BatchDecode {
    /// Runs decode for the planned batch on one layer's pool: q and out `[batch, Hq, D]`, lse
    /// `[batch, Hq]` (base 2) when given. Launch only: no allocation, no synchronisation.
    pub fn run<T: Float16>(
        &self,
        plan: &BatchDecodePlan,
        q: &DeviceBuffer<T>,
        pool: &KvPool<T>,
        out: &mut DeviceBuffer<T>,
        lse: Option<&mut DeviceBuffer<f32>>,
    ) -> Result<()> {
        let src = self.pool_source(plan, pool)?;
        let lse = lse.map(|l| l.span());
        self.launch(plan, src, q.span(), out.span(), lse)
    }

    /// [`BatchDecode::run`] over an fp8 pool read with `scales` (real K/V = code × scale; q
    /// and out stay 16-bit). The op must have been set to the pool's format
    /// ([`BatchDecode::set_kv_dtype`]); another format, or a scale that is not finite and > 0,
    /// is an `InvalidArgument`. Launch only.
    pub fn run_fp8<T: Float16, F: Fp8Format>(
        &self,
        plan: &BatchDecodePlan,
        q: &DeviceBuffer<T>,
        pool: &KvPool<T, Fp8<F>>,
        scales: KvScales,
        out: &mut DeviceBuffer<T>,
        lse: Option<&mut DeviceBuffer<f32>>,
    ) -> Result<()> {
        self.check_fp8::<F>(scales)?;
        let src = self.pool_source(plan, pool)?;
        let lse = lse.map(|l| l.span());
        self.launch_scaled(plan, src, q.span(), out.span(), lse, Some(scales))
    }

    /// The checks of an fp8 run, pool or caller cache (`crate::fp8::check_run`).
    pub(super) fn check_fp8<F: Fp8Format>(&self, scales: KvScales) -> Result<()> {
        crate::fp8::check_run::<F>(OP, self.kv, scales)
    }

    /// What the kernels read of `pool` (16-bit or fp8 pages), checked against the plan's
    /// geometry, the op's heads and its context.
    fn pool_source<T: Float16, S: KvElem>(
        &self,
        plan: &BatchDecodePlan,
        pool: &KvPool<T, S>,
    ) -> Result<KvSource> {
        let planned = (plan.page_size, plan.num_pages_seen);
        let (k, v, st) = pool.attention_view(OP, &self.gpu, &self.heads, planned)?;
        Ok(KvSource {
            k: k.addr(),
            v: v.addr(),
            k_stride_page: st.stride_page as u64,
            v_stride_page: st.stride_page as u64,
            k_stride_n: st.stride_n,
            k_stride_h: st.stride_h,
            v_stride_n: st.stride_n,
            v_stride_h: st.stride_h,
            page_size: plan.page_size as u32,
            single: false,
        })
    }

    /// The launch path of 16-bit K/V: [`BatchDecode::launch_scaled`] without scales.
    pub(crate) fn launch<T: Float16>(
        &self,
        plan: &BatchDecodePlan,
        src: KvSource,
        q: DeviceSpan<T>,
        out: DeviceSpan<T>,
        lse: Option<DeviceSpan<f32>>,
    ) -> Result<()> {
        self.launch_scaled(plan, src, q, out, lse, None)
    }

    /// The one launch path: owned buffers ([`BatchDecode::run`], [`BatchDecode::run_fp8`]),
    /// single decode and caller memory ([`BatchDecode::run_spans`]) all arrive here as spans.
    /// `scales`: the fp8 K/V's (`None`: 16-bit K/V); the op's K/V type must agree.
    pub(crate) fn launch_scaled<T: Float16>(
        &self,
        plan: &BatchDecodePlan,
        src: KvSource,
        q: DeviceSpan<T>,
        out: DeviceSpan<T>,
        lse: Option<DeviceSpan<f32>>,
        scales: Option<KvScales>,
    ) -> Result<()> {
        let h = self.heads;
        if self.kv.is_fp8() != scales.is_some() {
            return Err(Error::invalid(
                OP,
                "kv dtype",
                format!(
                    "the op reads {} K/V: {}",
                    self.kv,
                    if self.kv.is_fp8() {
                        "use run_fp8 with k_scale/v_scale"
                    } else {
                        "fp8 K/V need set_kv_dtype first"
                    }
                ),
            ));
        }
        plan.ws.owner().check(OP, &self.owner())?;
        PlannedIo {
            op: OP,
            what: "q/out elements (plan batch × heads × head_dim)",
            elems: plan.batch * h.num_qo_heads * h.head_dim,
            lse_elems: plan.batch * h.num_qo_heads,
            exact: self.graph.is_none() && !src.single,
            gpu: &self.gpu,
            dtype: self.dtype,
        }
        .check(&q, &out, lse.as_ref())?;
        let off = plan.off;
        let at = |o: usize| plan.ws.at(o);
        let d = h.head_dim as u32;
        let p = DecodeParams {
            q: q.addr(),
            o: out.addr(),
            lse: lse.map_or(0, |l| l.addr()),
            k_pool: src.k,
            v_pool: src.v,
            k_stride_page: src.k_stride_page,
            v_stride_page: src.v_stride_page,
            kv_indptr: at(off.indptr),
            kv_indices: at(off.indices),
            work: at(off.work),
            merge_indptr: at(off.merge),
            counters: at(off.counters),
            counts: at(off.counts),
            part_o: plan.ws.part_o(),
            part_lse: plan.ws.part_lse(),
            q_stride_b: h.num_qo_heads as u32 * d,
            q_stride_h: d,
            o_stride_b: h.num_qo_heads as u32 * d,
            o_stride_h: d,
            k_stride_n: src.k_stride_n,
            k_stride_h: src.k_stride_h,
            v_stride_n: src.v_stride_n,
            v_stride_h: src.v_stride_h,
            page_size: FastDiv::new(src.page_size),
            num_qo_heads: h.num_qo_heads as u32,
            group: h.group() as u32,
            work_stride: plan.caps.work_stride as u32,
            // K's scale multiplies q·k: part of the logit scale (exact for 16-bit K/V: × 1).
            logit: LogitTransform::new(
                self.opts.scale(&h) * scales.map_or(1.0, |s| s.k),
                self.opts.soft_cap,
            ),
        };
        let dims = LaunchDims {
            grid: (
                plan.caps.work_stride.max(1) as u32,
                h.num_kv_heads as u32,
                1,
            ),
            block: (cfg::THREADS, 1, 1),
            smem_bytes: self.smem_bytes,
        };
        // SAFETY: the plan's metadata was validated (page tables vs the pool, lengths) and
        // uploaded by plan_into; q/out/lse extents checked above; partial buffers sized for the
        // plan's work items.
        unsafe {
            match scales {
                None => match &self.rope {
                    None => self.gpu.launch_kernel(&self.kernel, dims, p)?,
                    Some(r) => {
                        let p = DecodeRopeParams {
                            base: p,
                            rope: r.abi(at(off.rope)),
                        };
                        self.gpu.launch_kernel(&self.kernel, dims, p)?
                    }
                },
                Some(s) => {
                    let p = DecodeFp8Params {
                        base: p,
                        v_scale: s.v,
                        reserved: 0,
                    };
                    self.gpu.launch_kernel(&self.kernel, dims, p)?
                }
            }
        };
        Ok(())
    }
}
