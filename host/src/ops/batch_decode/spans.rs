//! Batch decode over caller memory (issue #18 part 1): the paged cache, q, out and lse as
//! [`DeviceSpan`]s with the caller's strides, the plan in the caller's workspace, launches on
//! whatever stream the op's handle has ([`BatchDecode::set_gpu`]). Same checks and the same
//! launch as the pool path ([`BatchDecode::run`]), which is the convenience layer over this.
use super::{BatchDecode, BatchDecodePlan, Caps, GraphLimits, KvSource, OP};
use crate::dtype::{Float16, KvElem};
use crate::error::{Error, Result};
use crate::fp8::{Fp8, Fp8Format, KvScales};
use crate::kv::{BatchPages, KvLayout, KvPoolConfig};
use crate::ops::workspace::{caller_bytes, PlanWorkspace};
use crate::plan::decode::DecodePlan;
use crate::runtime::{DeviceSpan, Gpu};

/// A caller's paged K/V cache: `num_pages` pages of `page_size` tokens × `num_kv_heads` heads
/// × `head_dim` values, K and V each at element strides `(page, token, head)` with every head
/// row (`head_dim` values) contiguous. FlashInfer's layouts map onto it directly: NHD
/// `[pages, page_size, heads, D]` has strides `(page_size·heads·D, heads·D, D)`, HND
/// `[pages, heads, page_size, D]` `(heads·page_size·D, D, page_size·D)`, and the single
/// `(pages, 2, ...)` tensor is K = `cache[:, 0]`, V = `cache[:, 1]` (page stride doubled).
/// `T` is the cache's element: the queries' 16-bit type, or fp8 ([`BatchDecode::run_spans_fp8`]).
#[derive(Clone, Copy, Debug)]
pub struct PagedKvSpans<T> {
    /// K, from the element at (page 0, token 0, head 0).
    pub k: DeviceSpan<T>,
    /// V, likewise.
    pub v: DeviceSpan<T>,
    /// Pages the cache holds (page ids must be below).
    pub num_pages: usize,
    /// Tokens per page.
    pub page_size: usize,
    /// KV heads.
    pub num_kv_heads: usize,
    /// Values per head.
    pub head_dim: usize,
    /// K's element strides (page, token, head).
    pub k_strides: [usize; 3],
    /// V's element strides (page, token, head).
    pub v_strides: [usize; 3],
}

impl<T: KvElem> PagedKvSpans<T> {
    /// The geometry as a pool configuration (for the page-table and head checks the pool path
    /// runs). The layout names the closer FlashInfer form; offsets always use the strides.
    pub fn geometry(&self) -> KvPoolConfig {
        let [_, sn, sh] = self.k_strides;
        KvPoolConfig {
            num_pages: self.num_pages,
            page_size: self.page_size,
            num_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
            layout: if sn >= sh {
                KvLayout::Nhd
            } else {
                KvLayout::Hnd
            },
        }
    }

    /// Checks both spans against the strides and the kernels' rules and returns the kernel's
    /// view: context, 16-byte aligned rows (the tile loads copy 16 bytes), 32-bit token and
    /// head strides, and every addressed element inside its span.
    pub(crate) fn source(&self, op: &'static str, gpu: &Gpu) -> Result<KvSource> {
        let elem = std::mem::size_of::<T>();
        let last = [self.num_pages, self.page_size, self.num_kv_heads];
        if last.contains(&0) || self.head_dim == 0 {
            return Err(Error::invalid(op, "paged cache", "empty geometry"));
        }
        for (name, span, st) in [("k", self.k, self.k_strides), ("v", self.v, self.v_strides)] {
            gpu.check_span(op, &span)?;
            if !span.addr().is_multiple_of(16)
                || st
                    .iter()
                    .any(|s| s.checked_mul(elem).is_none_or(|b| !b.is_multiple_of(16)))
            {
                return Err(Error::invalid(
                    op,
                    name,
                    format!(
                        "address {:#x} and strides {st:?} must be 16-byte multiples",
                        span.addr()
                    ),
                ));
            }
            if st[1] > u32::MAX as usize || st[2] > u32::MAX as usize {
                return Err(Error::Overflow {
                    op,
                    what: "paged cache token/head stride (32-bit)",
                });
            }
            let extent = last
                .iter()
                .zip(st)
                .try_fold(self.head_dim, |acc, (&n, s)| {
                    (n - 1).checked_mul(s).and_then(|x| x.checked_add(acc))
                })
                .ok_or(Error::Overflow {
                    op,
                    what: "paged cache extent",
                })?;
            if extent > span.len() {
                return Err(Error::shape(
                    op,
                    "paged cache elements",
                    format!(">= {extent}"),
                    span.len(),
                ));
            }
        }
        Ok(KvSource {
            k: self.k.addr(),
            v: self.v.addr(),
            k_stride_page: self.k_strides[0] as u64,
            v_stride_page: self.v_strides[0] as u64,
            k_stride_n: self.k_strides[1] as u32,
            k_stride_h: self.k_strides[2] as u32,
            v_stride_n: self.v_strides[1] as u32,
            v_stride_h: self.v_strides[2] as u32,
            page_size: self.page_size as u32,
            single: false,
        })
    }
}

impl BatchDecode {
    /// The handle launches and plan uploads go to: set it to a handle of the same context on
    /// the caller's current stream ([`Gpu::on_borrowed_stream`]) before `plan`/`run`. Kernels
    /// and plans stay valid (they belong to the context, not the stream), but ordering does
    /// not carry over: a plan's tables are copied on the stream it was made on and rewritten
    /// in place by the next plan, so a `run` on another stream must be ordered after the
    /// `plan` (an event), and a re-plan after every run still reading the old tables — as with
    /// FlashInfer's wrappers, whose `plan` copies on the current stream too.
    pub fn set_gpu(&mut self, gpu: &Gpu) -> Result<()> {
        self.gpu.check_same(OP, gpu)?;
        self.gpu = gpu.clone();
        Ok(())
    }

    /// Bytes of caller workspace a plan needs at most for `limits` (graph mode: exactly what
    /// [`BatchDecode::plan_in_workspace`] lays out). Outside graph mode the need depends on the
    /// batch; a plan that does not fit is refused with the size it needs.
    pub fn workspace_bytes(&self, limits: GraphLimits) -> usize {
        let (caps, slots) = self.graph_caps(limits);
        caller_bytes(caps.offsets().len, slots, &self.heads).unwrap_or(usize::MAX)
    }

    pub(super) fn graph_caps(&self, l: GraphLimits) -> (Caps, usize) {
        let budget_items = (self.max_ctas / self.heads.num_kv_heads).max(1);
        let work_stride = budget_items.max(l.max_batch);
        let caps = Caps {
            work_stride,
            max_batch: l.max_batch,
            max_pages: l.max_pages,
            num_kv_heads: self.heads.num_kv_heads,
        };
        (caps, work_stride)
    }

    /// Plans a step whose tables and split-KV partials live in the caller's `workspace`
    /// (FlashInfer's `float_workspace_buffer`; 256-byte aligned): no device allocation, now or
    /// in later [`BatchDecode::plan_into`] calls, and one async upload on the handle's stream.
    /// `cache` is the geometry the plan is checked against (page ids below `num_pages`);
    /// [`BatchDecode::run_spans`] accepts any cache of that page size with at least as many
    /// pages.
    ///
    /// # Safety
    /// `workspace` must stay allocated, and be written by nothing else, while the plan lives
    /// and while any run of it may still execute.
    pub unsafe fn plan_in_workspace(
        &self,
        pages: &BatchPages,
        cache: &KvPoolConfig,
        workspace: DeviceSpan<u8>,
    ) -> Result<BatchDecodePlan> {
        let (caps, fixed) = match self.graph {
            Some(l) => {
                let (caps, ws) = self.graph_caps(l);
                (caps, Some((caps.offsets().len, ws)))
            }
            None => (
                Caps {
                    work_stride: 0,
                    max_batch: pages.batch_size(),
                    max_pages: pages.kv_indices.len(),
                    num_kv_heads: self.heads.num_kv_heads,
                },
                None,
            ),
        };
        let mut plan = BatchDecodePlan {
            host: DecodePlan::default(),
            batch: 0,
            page_size: cache.page_size,
            num_pages_seen: 0,
            caps,
            off: caps.offsets(),
            ws: PlanWorkspace::in_caller(OP, &self.gpu, self.owner(), fixed, workspace)?,
        };
        self.plan_into_inner(pages, cache.page_size, Some(cache), None, &mut plan)?;
        Ok(plan)
    }

    /// Runs decode for the planned batch over a caller's cache: q and out `[batch, Hq, D]`
    /// contiguous, lse `[batch, Hq]` (base 2) when given. Launch only, on the handle's stream:
    /// no allocation, no synchronisation (safe inside CUDA-graph capture).
    ///
    /// # Safety
    /// Every span must name live device memory of the op's context for as long as the launch
    /// may run, and `out`/`lse` must not overlap any input.
    pub unsafe fn run_spans<T: Float16>(
        &self,
        plan: &BatchDecodePlan,
        q: DeviceSpan<T>,
        kv: &PagedKvSpans<T>,
        out: DeviceSpan<T>,
        lse: Option<DeviceSpan<f32>>,
    ) -> Result<()> {
        let src = self.spans_source(plan, kv)?;
        self.launch(plan, src, q, out, lse)
    }

    /// [`BatchDecode::run_spans`] over a caller's fp8 cache read with `scales` (real K/V =
    /// code × scale; q and out stay 16-bit). The op must have been set to the cache's format
    /// ([`BatchDecode::set_kv_dtype`]); another format, or a scale that is not finite and > 0,
    /// is an `InvalidArgument`. Launch only, as `run_spans`.
    ///
    /// # Safety
    /// As [`BatchDecode::run_spans`].
    pub unsafe fn run_spans_fp8<T: Float16, F: Fp8Format>(
        &self,
        plan: &BatchDecodePlan,
        q: DeviceSpan<T>,
        kv: &PagedKvSpans<Fp8<F>>,
        scales: KvScales,
        out: DeviceSpan<T>,
        lse: Option<DeviceSpan<f32>>,
    ) -> Result<()> {
        self.check_fp8::<F>(scales)?;
        let src = self.spans_source(plan, kv)?;
        self.launch_scaled(plan, src, q, out, lse, Some(scales))
    }

    /// The kernel's view of a caller's cache, checked against the plan (page size, the page
    /// ids it validated) and the op's heads.
    fn spans_source<S: KvElem>(
        &self,
        plan: &BatchDecodePlan,
        kv: &PagedKvSpans<S>,
    ) -> Result<KvSource> {
        let g = kv.geometry();
        crate::validate::planned_pages(
            OP,
            (plan.page_size, plan.num_pages_seen),
            (g.page_size, g.num_pages),
        )?;
        crate::validate::pool_heads(OP, &g, &self.heads)?;
        kv.source(OP, &self.gpu)
    }
}
