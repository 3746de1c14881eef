//! Batch prefill over caller memory (issue #18 part 1), as batch decode's
//! (`ops/batch_decode/spans.rs`): plans in the caller's workspace, q/out/lse and K/V as spans,
//! launches on the handle's stream; the owned-buffer `run_*` calls are layers over the same
//! launch.
use super::batch::{BatchPrefill, KvAddr, OP};
use super::plan::{BatchPrefillPlan, KvKind};
use crate::dtype::{Float16, KvElem};
use crate::error::{Error, Result};
use crate::fp8::{Fp8, Fp8Format, KvScales};
use crate::kv::{BatchPages, KvPoolConfig};
use crate::mask::PackedMask;
use crate::ops::PagedKvSpans;
use crate::runtime::{DeviceSpan, Gpu};

impl BatchPrefill {
    /// Launches and plan uploads go to `gpu`'s stream from now on (same context required);
    /// see [`crate::ops::BatchDecode::set_gpu`].
    pub fn set_gpu(&mut self, gpu: &Gpu) -> Result<()> {
        self.gpu.check_same(OP, gpu)?;
        self.gpu = gpu.clone();
        Ok(())
    }

    /// [`BatchPrefill::plan_ragged`] with the plan in the caller's `workspace` (no device
    /// allocation now or in later `plan_ragged_into` calls), or
    /// [`BatchPrefill::plan_ragged_masked`] when `mask` is given (the mask is uploaded with the
    /// plan's tables into the workspace: nothing is allocated).
    ///
    /// # Safety
    /// As [`crate::ops::BatchDecode::plan_in_workspace`].
    pub unsafe fn plan_ragged_in_workspace(
        &self,
        qo_indptr: &[i32],
        kv_indptr: &[i32],
        mask: Option<&PackedMask>,
        workspace: DeviceSpan<u8>,
    ) -> Result<BatchPrefillPlan> {
        let mut plan = self.empty_plan_in(KvKind::Ragged, Some(workspace))?;
        self.ragged_step(qo_indptr, kv_indptr, mask, None, &mut plan)?;
        Ok(plan)
    }

    /// [`BatchPrefill::plan_paged`] with the plan in the caller's `workspace`; `cache` is the
    /// geometry the page ids are checked against; `mask` as in
    /// [`BatchPrefill::plan_ragged_in_workspace`].
    ///
    /// # Safety
    /// As [`crate::ops::BatchDecode::plan_in_workspace`].
    pub unsafe fn plan_paged_in_workspace(
        &self,
        qo_indptr: &[i32],
        pages: &BatchPages,
        cache: &KvPoolConfig,
        mask: Option<&PackedMask>,
        workspace: DeviceSpan<u8>,
    ) -> Result<BatchPrefillPlan> {
        let mut plan = self.empty_plan_in(KvKind::Paged, Some(workspace))?;
        self.paged_step(qo_indptr, pages, cache, mask, None, &mut plan)?;
        Ok(plan)
    }

    /// Runs a paged plan over a caller's cache: q/out `[Σ qo_len, Hq, D]` contiguous, lse
    /// `[Σ qo_len, Hq]` when given. K and V must share their strides (one set in the kernel's
    /// parameters). Launch only.
    ///
    /// # Safety
    /// As [`crate::ops::BatchDecode::run_spans`].
    pub unsafe fn run_paged_spans<T: Float16>(
        &self,
        plan: &BatchPrefillPlan,
        q: DeviceSpan<T>,
        kv: &PagedKvSpans<T>,
        out: DeviceSpan<T>,
        lse: Option<DeviceSpan<f32>>,
    ) -> Result<()> {
        let addr = self.paged_spans_addr(plan, kv)?;
        self.launch(plan, KvKind::Paged, addr, q, out, lse)
    }

    /// [`BatchPrefill::run_paged_spans`] over a caller's fp8 cache read with `scales` (as
    /// [`BatchPrefill::run_paged_fp8`]). Launch only.
    ///
    /// # Safety
    /// As [`crate::ops::BatchDecode::run_spans`].
    pub unsafe fn run_paged_spans_fp8<T: Float16, F: Fp8Format>(
        &self,
        plan: &BatchPrefillPlan,
        q: DeviceSpan<T>,
        kv: &PagedKvSpans<Fp8<F>>,
        scales: KvScales,
        out: DeviceSpan<T>,
        lse: Option<DeviceSpan<f32>>,
    ) -> Result<()> {
        self.check_fp8::<F>(scales)?;
        let addr = self.paged_spans_addr(plan, kv)?;
        self.launch_scaled(plan, KvKind::Paged, addr, q, out, lse, Some(scales))
    }

    /// The kernel's view of a caller's paged cache (16-bit or fp8), checked against a paged
    /// plan (page size, the page ids it validated) and the op's heads.
    fn paged_spans_addr<S: KvElem>(
        &self,
        plan: &BatchPrefillPlan,
        kv: &PagedKvSpans<S>,
    ) -> Result<KvAddr> {
        if plan.kind != KvKind::Paged {
            return Err(Error::invalid(
                OP,
                "plan",
                "a ragged plan run on a paged cache",
            ));
        }
        let g = kv.geometry();
        crate::validate::planned_pages(
            OP,
            (plan.page_size, plan.num_pages_seen),
            (g.page_size, g.num_pages),
        )?;
        crate::validate::pool_heads(OP, &g, &self.heads)?;
        let src = kv.source(OP, &self.gpu)?;
        if kv.k_strides != kv.v_strides {
            return Err(Error::unsupported(
                OP,
                "cache strides",
                format!("K {:?} and V {:?} differ", kv.k_strides, kv.v_strides),
            ));
        }
        Ok(KvAddr {
            k: src.k,
            v: src.v,
            stride_page: src.k_stride_page,
            stride_n: src.k_stride_n,
            stride_h: src.k_stride_h,
            page_size: src.page_size,
        })
    }

    /// Runs a ragged plan: q/out `[Σ qo_len, Hq, D]`, k/v `[Σ kv_len, Hkv, D]`, all
    /// contiguous; lse `[Σ qo_len, Hq]` when given. Launch only.
    ///
    /// # Safety
    /// As [`crate::ops::BatchDecode::run_spans`].
    pub unsafe fn run_ragged_spans<T: Float16>(
        &self,
        plan: &BatchPrefillPlan,
        q: DeviceSpan<T>,
        k: DeviceSpan<T>,
        v: DeviceSpan<T>,
        out: DeviceSpan<T>,
        lse: Option<DeviceSpan<f32>>,
    ) -> Result<()> {
        let addr = self.ragged_spans_addr(plan, &k, &v)?;
        self.launch(plan, KvKind::Ragged, addr, q, out, lse)
    }

    /// [`BatchPrefill::run_ragged_spans`] over fp8 K/V codes read with `scales` (as
    /// [`BatchPrefill::run_ragged_fp8`]). Launch only.
    ///
    /// # Safety
    /// As [`crate::ops::BatchDecode::run_spans`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run_ragged_spans_fp8<T: Float16, F: Fp8Format>(
        &self,
        plan: &BatchPrefillPlan,
        q: DeviceSpan<T>,
        k: DeviceSpan<Fp8<F>>,
        v: DeviceSpan<Fp8<F>>,
        scales: KvScales,
        out: DeviceSpan<T>,
        lse: Option<DeviceSpan<f32>>,
    ) -> Result<()> {
        self.check_fp8::<F>(scales)?;
        let addr = self.ragged_spans_addr(plan, &k, &v)?;
        self.launch_scaled(plan, KvKind::Ragged, addr, q, out, lse, Some(scales))
    }

    /// The kernel's view of caller ragged K/V (16-bit or fp8), checked against a ragged plan.
    pub(super) fn ragged_spans_addr<S: KvElem>(
        &self,
        plan: &BatchPrefillPlan,
        k: &DeviceSpan<S>,
        v: &DeviceSpan<S>,
    ) -> Result<KvAddr> {
        if plan.kind != KvKind::Ragged {
            return Err(Error::invalid(OP, "plan", "a paged plan run on ragged K/V"));
        }
        let h = self.heads;
        self.gpu.check_span(OP, k)?;
        self.gpu.check_span(OP, v)?;
        let need = plan.kv_tokens * h.num_kv_heads * h.head_dim;
        if k.len() < need || v.len() < need {
            return Err(Error::shape(
                OP,
                "k/v elements (Σ kv_len × heads × head_dim)",
                format!(">= {need}"),
                k.len().min(v.len()),
            ));
        }
        if !k.addr().is_multiple_of(16) || !v.addr().is_multiple_of(16) {
            return Err(Error::invalid(
                OP,
                "k/v",
                "addresses must be 16-byte aligned",
            ));
        }
        Ok(KvAddr::ragged(k.addr(), v.addr(), h))
    }
}
