//! `CudaBatchPrefill`: FlashInfer's paged and ragged batch prefill wrappers on CUDA tensors —
//! one [`BatchPrefill`] op and its plan (in the caller's `float_workspace_buffer`), planned from
//! host CSR tables and run on the caller's stream. In CUDA-graph mode (`graph` limits) the
//! plan's tables stay at the addresses a captured `run` baked in, and the first plan fixes the
//! kernel every later plan uses (its tile and persistence; custom mask or none), as FlashInfer
//! fixes its tile from the first plan's size.
use ferrinfer::fp8::{E4m3, E5m2, Fp8, Fp8Format, KvScales};
use ferrinfer::kv::BatchPages;
use ferrinfer::ops::{BatchPrefill, BatchPrefillPlan, PrefillGraphLimits};
use ferrinfer::{AttentionOptions, Float16, Gpu, HeadConfig};
use half::{bf16, f16};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::cuda::{
    cuda_io, gpu_on, plan_dtype, planned_cache, span, workspace_on, SpanElem, Workspace,
};
use crate::cuda_append::{cache_spans, cache_views};
use crate::errors::lib;
use crate::mask::{packed, MaskArg};
use crate::tensor::{disjoint, index_array, Dt, RawTensor, Tensor};

const OP: &str = "BatchPrefillWith*KVCacheWrapper";

#[pyclass(module = "ferrinfer._native", unsendable)]
pub struct CudaBatchPrefill {
    device: usize,
    heads: HeadConfig,
    dtype: Dt,
    /// The K/V element type: `dtype`, or fp8.
    kv: Dt,
    op: BatchPrefill,
    plan: Option<BatchPrefillPlan>,
    /// The workspace tensor the plan lives in (its owner, address and bytes), kept alive with
    /// it.
    workspace: Option<(Py<PyAny>, usize, usize)>,
    /// Built in CUDA-graph mode.
    graph: bool,
    /// Graph mode: whether the first plan had a custom mask (`None` before it); its kernel is
    /// the one a captured run replays, so later plans keep it.
    graph_masked: Option<bool>,
}

impl CudaBatchPrefill {
    /// The handle on `stream` (set on the op) and the caller's workspace as a span.
    fn begin(
        &mut self,
        stream: usize,
        ws: &Workspace,
    ) -> PyResult<(Gpu, ferrinfer::DeviceSpan<u8>)> {
        workspace_on(ws, self.device)?;
        let gpu = gpu_on(self.device, stream)?;
        lib(self.op.set_gpu(&gpu))?;
        // SAFETY: the caller's CUDA workspace on this device, kept alive in `self.workspace`
        // with the plan; the wrapper owns its contents as FlashInfer's does.
        let span = lib(unsafe { gpu.span::<u8>(ws.0 as u64, ws.1) })?;
        Ok((gpu, span))
    }

    /// Whether the current plan lives in `ws`: the next plan is then made in place (same
    /// addresses, the plan's pinned staging reused; a new plan would allocate pinned host
    /// memory and free the old plan's, which can wait for the device).
    fn same_workspace(&self, ws: &Workspace) -> bool {
        self.workspace
            .as_ref()
            .is_some_and(|w| (w.1, w.2) == (ws.0, ws.1))
    }

    /// Plans `step` into the current plan when it lives in `ws`, else into a new plan there
    /// (`new_plan`, given the workspace span), which then becomes the current one.
    fn plan_with(
        &mut self,
        stream: usize,
        ws: Workspace,
        step: impl FnOnce(&BatchPrefill, &mut BatchPrefillPlan) -> ferrinfer::Result<()>,
        new_plan: impl FnOnce(
            &BatchPrefill,
            ferrinfer::DeviceSpan<u8>,
        ) -> ferrinfer::Result<BatchPrefillPlan>,
    ) -> PyResult<()> {
        let same = self.same_workspace(&ws);
        let (_gpu, span) = self.begin(stream, &ws)?;
        match self.plan.as_mut() {
            Some(plan) if same => lib(step(&self.op, plan))?,
            _ => {
                self.plan = Some(lib(new_plan(&self.op, span))?);
                self.workspace = Some((ws.3, ws.0, ws.1));
            }
        }
        self.pin_graph_kernel()
    }

    /// Graph mode: refuses a plan whose custom mask (present or not) differs from the first
    /// plan's — a captured run replays the first plan's kernel.
    fn check_graph_mask(&self, masked: bool) -> PyResult<()> {
        match self.graph_masked {
            Some(first) if self.graph && first != masked => Err(PyValueError::new_err(format!(
                "{OP}.plan: in CUDA-graph mode every plan must {} a custom mask, as the first \
                 did (a captured run replays the first plan's kernel)",
                if first { "have" } else { "lack" }
            ))),
            _ => Ok(()),
        }
    }

    /// Graph mode, after the first plan: fixes its tile and persistence on the op, so every
    /// later plan runs the kernel a captured run replays.
    fn pin_graph_kernel(&mut self) -> PyResult<()> {
        if !self.graph || self.graph_masked.is_some() {
            return Ok(());
        }
        let Some(plan) = self.plan.as_ref() else {
            return Ok(());
        };
        let (tile, persistent, masked) = (plan.tile(), plan.is_persistent(), plan.is_masked());
        lib(self.op.set_tile(Some(tile)))?;
        self.op.set_persistent(Some(persistent));
        self.graph_masked = Some(masked);
        Ok(())
    }

    /// q/out `[Σ qo_len, Hq, D]` contiguous of the planned rows; lse `[Σ qo_len, Hq]`.
    fn check_io(&self, q: &Tensor, out: &Tensor, lse: Option<&Tensor>) -> PyResult<usize> {
        let Some(plan) = self.plan.as_ref() else {
            return Err(PyRuntimeError::new_err(format!(
                "{OP}.run: plan() must be called before run()"
            )));
        };
        let n = plan.qo_tokens();
        // Graph mode: q/out/lse keep the captured (padded) rows while plans change the row
        // count, so they need at least the planned rows; otherwise exactly those.
        let rows = match self.graph {
            true => q.shape.first().copied().unwrap_or(0),
            false => n,
        };
        if rows < n {
            return Err(PyValueError::new_err(format!(
                "{OP}.run: q has {rows} rows, the plan {n}"
            )));
        }
        let (hq, d) = (self.heads.num_qo_heads, self.heads.head_dim);
        q.expect_dtype(&[self.dtype])?;
        for t in [q, out] {
            t.expect_shape(&[rows, hq, d])?;
            t.expect_contiguous()?;
        }
        out.expect_same_dtype(q)?;
        out.expect_writable()?;
        if let Some(l) = lse {
            l.expect_dtype(&[Dt::F32])?;
            l.expect_shape(&[rows, hq])?;
            l.expect_contiguous()?;
        }
        Ok(n)
    }
}

#[pymethods]
impl CudaBatchPrefill {
    #[new]
    #[pyo3(signature = (device, num_qo_heads, num_kv_heads, head_dim, dtype, causal, sm_scale, soft_cap, window_left, rope=None, kv_dtype=None, graph=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        device: usize,
        num_qo_heads: usize,
        num_kv_heads: usize,
        head_dim: usize,
        dtype: &str,
        causal: bool,
        sm_scale: Option<f32>,
        soft_cap: Option<f32>,
        window_left: Option<usize>,
        rope: Option<(f32, f32)>,
        kv_dtype: Option<&str>,
        graph: Option<(usize, usize, usize, usize)>,
    ) -> PyResult<Self> {
        let heads = crate::heads(num_qo_heads, num_kv_heads, head_dim)?;
        let (dt, lib_dt) = plan_dtype(OP, dtype)?;
        let opts = AttentionOptions {
            sm_scale,
            soft_cap,
            window_left,
            causal,
        };
        let gpu = lib(Gpu::primary(device))?;
        // `graph`: (max_batch, max_qo_tokens, max_pages, max_mask_bytes).
        let mut op = match graph {
            Some((max_batch, max_qo_tokens, max_pages, max_mask_bytes)) => {
                lib(BatchPrefill::new_graph(
                    &gpu,
                    heads,
                    lib_dt,
                    opts,
                    PrefillGraphLimits {
                        max_batch,
                        max_qo_tokens,
                        max_pages,
                        max_mask_bytes,
                    },
                ))?
            }
            None => lib(BatchPrefill::new(&gpu, heads, lib_dt, opts))?,
        };
        lib(op.set_rope(crate::rope_llama(rope, head_dim)))?;
        let kv = crate::cuda::kv_dtype(OP, dt, kv_dtype)?;
        if let Some(k) = crate::cuda::lib_kv_dtype(kv) {
            lib(op.set_kv_dtype(k))?;
        }
        Ok(Self {
            device,
            heads,
            dtype: dt,
            kv,
            op,
            plan: None,
            workspace: None,
            graph: graph.is_some(),
            graph_masked: None,
        })
    }

    /// Plans a paged step from host tables; page ids are checked against the largest one named
    /// (the cache is checked to hold at least as many pages at run). `mask`: a custom mask
    /// ([`crate::mask`]), uploaded with the plan's tables into the workspace.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (stream, workspace, qo_indptr, indptr, indices, last_page_len, page_size, mask=None))]
    fn plan_paged(
        &mut self,
        stream: usize,
        workspace: Workspace,
        qo_indptr: RawTensor,
        indptr: RawTensor,
        indices: RawTensor,
        last_page_len: RawTensor,
        page_size: usize,
        mask: MaskArg,
    ) -> PyResult<()> {
        let qo = index_array(qo_indptr)?;
        let pages = BatchPages {
            kv_indptr: index_array(indptr)?,
            kv_indices: index_array(indices)?,
            kv_last_page_len: index_array(last_page_len)?,
        };
        let cache = planned_cache(&pages, page_size, &self.heads);
        let mask = mask.map(packed);
        self.check_graph_mask(mask.is_some())?;
        self.plan_with(
            stream,
            workspace,
            |op, plan| match &mask {
                Some(m) => op.plan_paged_masked_into(&qo, &pages, &cache, m, plan),
                None => op.plan_paged_into(&qo, &pages, &cache, plan),
            },
            // SAFETY: see `begin`; the workspace tensor is stored with the plan.
            |op, ws| unsafe { op.plan_paged_in_workspace(&qo, &pages, &cache, mask.as_ref(), ws) },
        )
    }

    /// Plans a ragged step from host offsets (`mask` as in `plan_paged`).
    #[pyo3(signature = (stream, workspace, qo_indptr, kv_indptr, mask=None))]
    fn plan_ragged(
        &mut self,
        stream: usize,
        workspace: Workspace,
        qo_indptr: RawTensor,
        kv_indptr: RawTensor,
        mask: MaskArg,
    ) -> PyResult<()> {
        let (qo, kv) = (index_array(qo_indptr)?, index_array(kv_indptr)?);
        let mask = mask.map(packed);
        self.check_graph_mask(mask.is_some())?;
        self.plan_with(
            stream,
            workspace,
            |op, plan| match &mask {
                Some(m) => op.plan_ragged_masked_into(&qo, &kv, m, plan),
                None => op.plan_ragged_into(&qo, &kv, plan),
            },
            // SAFETY: see `begin`; the workspace tensor is stored with the plan.
            |op, ws| unsafe { op.plan_ragged_in_workspace(&qo, &kv, mask.as_ref(), ws) },
        )
    }

    /// Runs the paged plan over rank-4 K/V views in `kv_layout`; an fp8 cache (planned with
    /// `kv_dtype`) is read as code × `k_scale` / `v_scale` (default 1).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (stream, q, k, v, kv_layout, out, lse=None, k_scale=None, v_scale=None))]
    fn run_paged(
        &mut self,
        stream: usize,
        q: RawTensor,
        k: RawTensor,
        v: RawTensor,
        kv_layout: &str,
        out: RawTensor,
        lse: Option<RawTensor>,
        k_scale: Option<f32>,
        v_scale: Option<f32>,
    ) -> PyResult<()> {
        let dev = self.device;
        let (q, k, v, out, lse) = cuda_io(dev, [q, k, v, out], lse)?;
        let hnd = crate::is_hnd(kv_layout)?;
        self.check_io(&q, &out, lse.as_ref())?;
        cache_views(&k, &v, hnd, &[self.kv])?;
        let scales = crate::attention::kv_scales(&k, k_scale, v_scale)?;
        outputs_disjoint(&q, &k, &v, &out, lse.as_ref())?;
        let gpu = gpu_on(dev, stream)?;
        lib(self.op.set_gpu(&gpu))?;
        let io = (&q, &k, &v, &out, lse.as_ref());
        match (self.dtype, self.kv) {
            (Dt::F16, Dt::F8E4m3) => self.paged_fp8::<f16, E4m3>(&gpu, io, hnd, scales),
            (Dt::F16, Dt::F8E5m2) => self.paged_fp8::<f16, E5m2>(&gpu, io, hnd, scales),
            (Dt::Bf16, Dt::F8E4m3) => self.paged_fp8::<bf16, E4m3>(&gpu, io, hnd, scales),
            (Dt::Bf16, Dt::F8E5m2) => self.paged_fp8::<bf16, E5m2>(&gpu, io, hnd, scales),
            (Dt::F16, _) => self.paged_typed::<f16>(&gpu, io, hnd),
            (Dt::Bf16, _) => self.paged_typed::<bf16>(&gpu, io, hnd),
            _ => Err(PyTypeError::new_err(format!("{OP}.run: q dtype"))),
        }
    }

    /// Runs the ragged plan over contiguous `k`/`v` `[Σ kv_len, Hkv, D]` (fp8 as `run_paged`).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (stream, q, k, v, out, lse=None, k_scale=None, v_scale=None))]
    fn run_ragged(
        &mut self,
        stream: usize,
        q: RawTensor,
        k: RawTensor,
        v: RawTensor,
        out: RawTensor,
        lse: Option<RawTensor>,
        k_scale: Option<f32>,
        v_scale: Option<f32>,
    ) -> PyResult<()> {
        let dev = self.device;
        let (q, k, v, out, lse) = cuda_io(dev, [q, k, v, out], lse)?;
        self.check_io(&q, &out, lse.as_ref())?;
        for t in [&k, &v] {
            t.expect_rank(3, "[nnz_kv, num_kv_heads, head_dim]")?;
            t.expect_contiguous()?;
            t.expect_dtype(&[self.kv])?;
        }
        v.expect_shape(&k.shape)?;
        let (hkv, d) = (self.heads.num_kv_heads, self.heads.head_dim);
        k.expect_shape(&[k.shape[0], hkv, d])?;
        let scales = crate::attention::kv_scales(&k, k_scale, v_scale)?;
        outputs_disjoint(&q, &k, &v, &out, lse.as_ref())?;
        let gpu = gpu_on(dev, stream)?;
        lib(self.op.set_gpu(&gpu))?;
        let io = (&q, &k, &v, &out, lse.as_ref());
        match (self.dtype, self.kv) {
            (Dt::F16, Dt::F8E4m3) => self.ragged_fp8::<f16, E4m3>(&gpu, io, scales),
            (Dt::F16, Dt::F8E5m2) => self.ragged_fp8::<f16, E5m2>(&gpu, io, scales),
            (Dt::Bf16, Dt::F8E4m3) => self.ragged_fp8::<bf16, E4m3>(&gpu, io, scales),
            (Dt::Bf16, Dt::F8E5m2) => self.ragged_fp8::<bf16, E5m2>(&gpu, io, scales),
            (Dt::F16, _) => self.ragged_typed::<f16>(&gpu, io),
            (Dt::Bf16, _) => self.ragged_typed::<bf16>(&gpu, io),
            _ => Err(PyTypeError::new_err(format!("{OP}.run: q dtype"))),
        }
    }
}

type Io<'a> = (
    &'a Tensor,
    &'a Tensor,
    &'a Tensor,
    &'a Tensor,
    Option<&'a Tensor>,
);

fn outputs_disjoint(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: Option<&Tensor>,
) -> PyResult<()> {
    let mut all = vec![q, k, v, out];
    all.extend(lse);
    let mut outs = vec![out];
    outs.extend(lse);
    disjoint(&outs, &all)
}

impl CudaBatchPrefill {
    fn planned(&self) -> PyResult<&BatchPrefillPlan> {
        self.plan
            .as_ref()
            .ok_or_else(|| PyRuntimeError::new_err(format!("{OP}.run: no plan")))
    }

    fn paged_typed<T: Float16 + SpanElem>(&self, gpu: &Gpu, io: Io<'_>, hnd: bool) -> PyResult<()> {
        let (q, _, _, out, lse) = io;
        let kv = cache_spans::<T>(gpu, io.1, io.2, hnd)?;
        let lse = lse.map(|l| span::<f32>(gpu, l)).transpose()?;
        // SAFETY: checked CUDA tensors of this device held by the Python layer for the call;
        // outputs overlap no input; queued on the caller's stream.
        lib(unsafe {
            self.op.run_paged_spans(
                self.planned()?,
                span::<T>(gpu, q)?,
                &kv,
                span::<T>(gpu, out)?,
                lse,
            )
        })
    }

    fn paged_fp8<T: Float16 + SpanElem, F: Fp8Format>(
        &self,
        gpu: &Gpu,
        io: Io<'_>,
        hnd: bool,
        scales: KvScales,
    ) -> PyResult<()> {
        let (q, _, _, out, lse) = io;
        let kv = cache_spans::<Fp8<F>>(gpu, io.1, io.2, hnd)?;
        let lse = lse.map(|l| span::<f32>(gpu, l)).transpose()?;
        // SAFETY: as `paged_typed`.
        lib(unsafe {
            self.op.run_paged_spans_fp8(
                self.planned()?,
                span::<T>(gpu, q)?,
                &kv,
                scales,
                span::<T>(gpu, out)?,
                lse,
            )
        })
    }

    fn ragged_typed<T: Float16 + SpanElem>(&self, gpu: &Gpu, io: Io<'_>) -> PyResult<()> {
        let (q, k, v, out, lse) = io;
        let lse = lse.map(|l| span::<f32>(gpu, l)).transpose()?;
        // SAFETY: as `paged_typed`.
        lib(unsafe {
            self.op.run_ragged_spans(
                self.planned()?,
                span::<T>(gpu, q)?,
                span::<T>(gpu, k)?,
                span::<T>(gpu, v)?,
                span::<T>(gpu, out)?,
                lse,
            )
        })
    }

    fn ragged_fp8<T: Float16 + SpanElem, F: Fp8Format>(
        &self,
        gpu: &Gpu,
        io: Io<'_>,
        scales: KvScales,
    ) -> PyResult<()> {
        let (q, k, v, out, lse) = io;
        let lse = lse.map(|l| span::<f32>(gpu, l)).transpose()?;
        // SAFETY: as `paged_typed`.
        lib(unsafe {
            self.op.run_ragged_spans_fp8(
                self.planned()?,
                span::<T>(gpu, q)?,
                span::<Fp8<F>>(gpu, k)?,
                span::<Fp8<F>>(gpu, v)?,
                scales,
                span::<T>(gpu, out)?,
                lse,
            )
        })
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<CudaBatchPrefill>()
}
