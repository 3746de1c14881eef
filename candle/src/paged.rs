//! Attention over one layer of a [`crate::PagedKvCache`]: batch decode and batch prefill as a
//! [`CustomOp1`] on `q`. The op borrows the layer's page pool and carries the batch's page
//! tables; its CPU forward calls ferrinfer's paged CPU ops.
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape};
use ferrinfer::kv::{BatchPages, KvPool};
use ferrinfer::{AttentionOptions, HeadConfig};

use crate::error::wrap;
use crate::tensors::{elems, Half};

/// Decode (one query row per request) or prefill (`qo_indptr` rows per request).
pub(crate) struct PagedAttention<'a, T> {
    pub name: &'static str,
    pub heads: HeadConfig,
    pub opts: AttentionOptions,
    pub pool: &'a KvPool<T>,
    pub pages: BatchPages,
    /// `None`: decode. `Some`: prefill, request `b` owning q rows `qo_indptr[b]..[b+1]`.
    pub qo_indptr: Option<Vec<i32>>,
}

impl<T: Half> CustomOp1 for PagedAttention<'_, T> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        // `as_slice::<T>` inside `elems` refuses a q of another dtype than the pool's.
        let q = elems::<T>(self.name, storage, layout)?;
        let mut out = vec![T::default(); q.len()];
        let (h, o) = (&self.heads, &self.opts);
        match &self.qo_indptr {
            None => ferrinfer::cpu::batch_decode(h, o, q, self.pool, &self.pages, &mut out, None),
            Some(qo) => ferrinfer::cpu::batch_prefill_paged(
                h,
                o,
                q,
                qo,
                self.pool,
                &self.pages,
                &mut out,
                None,
            ),
        }
        .map_err(wrap)?;
        Ok((T::to_cpu_storage_owned(out), layout.shape().clone()))
    }

    /// ferrinfer's batch decode / prefill kernels on candle's stream over the GPU pool.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let out = crate::cuda::paged::<T>(
            self.name,
            &self.heads,
            &self.opts,
            self.pool,
            &self.pages,
            self.qo_indptr.as_deref(),
            (storage, layout),
        )?;
        Ok((out, layout.shape().clone()))
    }
}
