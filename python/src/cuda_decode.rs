//! `CudaBatchDecode`: FlashInfer's `BatchDecodeWithPagedKVCacheWrapper` on CUDA tensors — one
//! [`BatchDecode`] op and its plan, kept between `plan` (once per step, from host page tables)
//! and `run` (once per layer). The plan lives in the caller's `float_workspace_buffer`; in
//! CUDA-graph mode its layout is fixed by the limits, so a captured `run` replays correctly
//! after any later `plan` (FlashInfer's contract for the graph wrapper).
use ferrinfer::fp8::{E4m3, E5m2, Fp8, Fp8Format, KvScales};
use ferrinfer::kv::BatchPages;
use ferrinfer::ops::{BatchDecode, BatchDecodePlan, GraphLimits};
use ferrinfer::{AttentionOptions, Float16, Gpu, HeadConfig};
use half::{bf16, f16};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::cuda::{
    cuda_io, gpu_on, plan_dtype, planned_cache, span, workspace_on, SpanElem, Workspace,
};
use crate::cuda_append::{cache_spans, cache_views};
use crate::errors::lib;
use crate::tensor::{disjoint, index_array, Dt, RawTensor, Tensor};

const OP: &str = "BatchDecodeWithPagedKVCacheWrapper";

#[pyclass(module = "ferrinfer._native", unsendable)]
pub struct CudaBatchDecode {
    device: usize,
    heads: HeadConfig,
    dtype: Dt,
    /// The cache's element type: `dtype`, or fp8.
    kv: Dt,
    op: BatchDecode,
    plan: Option<BatchDecodePlan>,
    /// The workspace the plan lives in (kept alive with it), and its (address, bytes).
    workspace: Option<(Py<PyAny>, usize, usize)>,
    /// The page size of the last plan.
    planned_page_size: usize,
    /// Built in CUDA-graph mode.
    graph: bool,
}

#[pymethods]
impl CudaBatchDecode {
    /// An op for one head geometry, dtype and option set on CUDA device `device`; `graph`
    /// = `(max_batch, max_pages)` builds the CUDA-graph form; `kv_dtype` = `float8_e4m3fn` /
    /// `float8_e5m2` reads an fp8 cache (`None`: the queries' type).
    #[new]
    #[pyo3(signature = (device, num_qo_heads, num_kv_heads, head_dim, dtype, sm_scale, soft_cap, window_left, graph=None, rope=None, kv_dtype=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        device: usize,
        num_qo_heads: usize,
        num_kv_heads: usize,
        head_dim: usize,
        dtype: &str,
        sm_scale: Option<f32>,
        soft_cap: Option<f32>,
        window_left: Option<usize>,
        graph: Option<(usize, usize)>,
        rope: Option<(f32, f32)>,
        kv_dtype: Option<&str>,
    ) -> PyResult<Self> {
        let heads = crate::heads(num_qo_heads, num_kv_heads, head_dim)?;
        let (dt, lib_dt) = plan_dtype(OP, dtype)?;
        let opts = AttentionOptions {
            sm_scale,
            soft_cap,
            window_left,
            causal: false,
        };
        let gpu = lib(Gpu::primary(device))?;
        let op = match graph {
            Some((max_batch, max_pages)) => lib(BatchDecode::new_graph(
                &gpu,
                heads,
                lib_dt,
                opts,
                GraphLimits {
                    max_batch,
                    max_pages,
                },
            ))?,
            None => lib(BatchDecode::new(&gpu, heads, lib_dt, opts))?,
        };
        let mut op = op;
        if let Some(r) = crate::rope_llama(rope, head_dim) {
            lib(op.set_rope(Some(r)))?;
        }
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
            planned_page_size: 0,
            graph: graph.is_some(),
        })
    }

    /// Plans a step from host page tables (int32 arrays, read here, never on the device) into
    /// the caller's workspace, uploading the tables asynchronously on `stream`.
    #[allow(clippy::too_many_arguments)]
    fn plan(
        &mut self,
        stream: usize,
        workspace: Workspace,
        indptr: RawTensor,
        indices: RawTensor,
        last_page_len: RawTensor,
        page_size: usize,
    ) -> PyResult<()> {
        workspace_on(&workspace, self.device)?;
        let (ws_addr, ws_bytes, _, ws_owner) = workspace;
        let pages = BatchPages {
            kv_indptr: index_array(indptr)?,
            kv_indices: index_array(indices)?,
            kv_last_page_len: index_array(last_page_len)?,
        };
        let cache = planned_cache(&pages, page_size, &self.heads);
        let gpu = gpu_on(self.device, stream)?;
        lib(self.op.set_gpu(&gpu))?;
        let same_ws = self
            .workspace
            .as_ref()
            .is_some_and(|w| (w.1, w.2) == (ws_addr, ws_bytes));
        match self.plan.as_mut() {
            // Same workspace: re-plan in place (graph mode: same addresses, no allocation).
            Some(plan) if same_ws && self.planned_page_size == page_size => {
                lib(self.op.plan_into(&pages, &cache, plan))?
            }
            _ => {
                // SAFETY: the workspace is the caller's CUDA tensor on this device, kept alive
                // in `self.workspace` for as long as the plan; the wrapper owns it for the
                // plan's use as FlashInfer's does (the caller does not write it meanwhile).
                let ws = unsafe { lib(gpu.span::<u8>(ws_addr as u64, ws_bytes))? };
                // SAFETY: as above.
                let plan = unsafe { lib(self.op.plan_in_workspace(&pages, &cache, ws))? };
                self.plan = Some(plan);
                self.workspace = Some((ws_owner, ws_addr, ws_bytes));
                self.planned_page_size = page_size;
            }
        }
        Ok(())
    }

    /// Workspace bytes a CUDA-graph plan needs for `(max_batch, max_pages)`.
    fn workspace_bytes(&self, max_batch: usize, max_pages: usize) -> usize {
        self.op.workspace_bytes(GraphLimits {
            max_batch,
            max_pages,
        })
    }

    /// Runs the planned step on `stream`: q/out `[batch, Hq, D]` contiguous, K/V rank-4 views
    /// in `kv_layout` with contiguous head rows, lse `[batch, Hq]` float32 when given; an fp8
    /// cache is read as code × `k_scale` / `v_scale` (default 1).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (stream, q, k, v, kv_layout, out, lse=None, k_scale=None, v_scale=None))]
    fn run(
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
        let Some(plan) = self.plan.as_ref() else {
            return Err(PyRuntimeError::new_err(format!(
                "{OP}.run: plan() must be called before run()"
            )));
        };
        // Graph mode: q/out/lse keep the captured (padded) batch while plans change the batch,
        // so they need at least the planned rows; otherwise exactly those.
        let b = match self.graph {
            true => q.shape.first().copied().unwrap_or(0),
            false => plan.batch_size(),
        };
        if b < plan.batch_size() {
            return Err(PyValueError::new_err(format!(
                "{OP}.run: q has {b} rows, the plan {}",
                plan.batch_size()
            )));
        }
        let (hq, d) = (self.heads.num_qo_heads, self.heads.head_dim);
        q.expect_dtype(&[self.dtype])?;
        for t in [&q, &out] {
            t.expect_shape(&[b, hq, d])?;
            t.expect_contiguous()?;
        }
        out.expect_same_dtype(&q)?;
        out.expect_writable()?;
        if let Some(l) = &lse {
            l.expect_dtype(&[Dt::F32])?;
            l.expect_shape(&[b, hq])?;
            l.expect_contiguous()?;
        }
        cache_views(&k, &v, hnd, &[self.kv])?;
        let scales = crate::attention::kv_scales(&k, k_scale, v_scale)?;
        let mut all = vec![&q, &k, &v, &out];
        all.extend(lse.as_ref());
        let mut outs = vec![&out];
        outs.extend(lse.as_ref());
        disjoint(&outs, &all)?;
        let gpu = gpu_on(dev, stream)?;
        lib(self.op.set_gpu(&gpu))?;
        let io = Io {
            q: &q,
            k: &k,
            v: &v,
            out: &out,
            lse: lse.as_ref(),
            hnd,
        };
        let op = &self.op;
        match (self.dtype, self.kv) {
            (Dt::F16, Dt::F8E4m3) => run_fp8_typed::<f16, E4m3>(op, plan, &gpu, &io, scales),
            (Dt::F16, Dt::F8E5m2) => run_fp8_typed::<f16, E5m2>(op, plan, &gpu, &io, scales),
            (Dt::Bf16, Dt::F8E4m3) => run_fp8_typed::<bf16, E4m3>(op, plan, &gpu, &io, scales),
            (Dt::Bf16, Dt::F8E5m2) => run_fp8_typed::<bf16, E5m2>(op, plan, &gpu, &io, scales),
            (Dt::F16, _) => run_typed::<f16>(op, plan, &gpu, &io),
            (Dt::Bf16, _) => run_typed::<bf16>(op, plan, &gpu, &io),
            _ => Err(PyTypeError::new_err(format!("{OP}.run: q dtype"))),
        }
    }
}

struct Io<'a> {
    q: &'a Tensor,
    k: &'a Tensor,
    v: &'a Tensor,
    out: &'a Tensor,
    lse: Option<&'a Tensor>,
    hnd: bool,
}

/// [`run_typed`] over an fp8 cache of format `F`, read with `scales`.
fn run_fp8_typed<T: Float16 + SpanElem, F: Fp8Format>(
    op: &BatchDecode,
    plan: &BatchDecodePlan,
    gpu: &Gpu,
    io: &Io<'_>,
    scales: KvScales,
) -> PyResult<()> {
    let kv = cache_spans::<Fp8<F>>(gpu, io.k, io.v, io.hnd)?;
    let lse = io.lse.map(|l| span::<f32>(gpu, l)).transpose()?;
    // SAFETY: as in `run_typed`.
    lib(unsafe {
        op.run_spans_fp8(
            plan,
            span::<T>(gpu, io.q)?,
            &kv,
            scales,
            span::<T>(gpu, io.out)?,
            lse,
        )
    })
}

fn run_typed<T: Float16 + SpanElem>(
    op: &BatchDecode,
    plan: &BatchDecodePlan,
    gpu: &Gpu,
    io: &Io<'_>,
) -> PyResult<()> {
    let kv = cache_spans::<T>(gpu, io.k, io.v, io.hnd)?;
    let lse = io.lse.map(|l| span::<f32>(gpu, l)).transpose()?;
    // SAFETY: every span is a checked torch tensor on this device that the Python layer holds
    // for the call, outputs overlap no input (checked), and the launch is queued on the stream
    // torch orders its own reuse of that memory on.
    lib(unsafe {
        op.run_spans(
            plan,
            span::<T>(gpu, io.q)?,
            &kv,
            span::<T>(gpu, io.out)?,
            lse,
        )
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<CudaBatchDecode>()
}
