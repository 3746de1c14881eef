//! [`AppendTarget`]: one layer's destination for a step's new K/V rows, handed to a kernel that
//! writes the rows itself instead of leaving them to the append launch — RoPE fused into the
//! KV append ([`crate::ops::ModelKernels::qkv_rope_append`]). The cache made it
//! ([`super::PagedKvCache::append_target`]) after the checks [`super::PagedKvCache::append_layer`]
//! makes (the step is this cache's current one, its metadata was uploaded for this pool's
//! geometry and device), so a kernel given it writes only the step's reserved slots.
use std::marker::PhantomData;

use ferrinfer_kernels::math::layout::PageStrides;

use super::KvPoolConfig;

/// Where one layer's new K/V rows of an append step go: the pool's device pages and the step's
/// uploaded metadata (batch index and cache position per row, CSR page tables). It borrows the
/// cache mutably, so nothing else writes the pool or replaces the step while it lives.
pub struct AppendTarget<'a, T> {
    pub(crate) k_pool: u64,
    pub(crate) v_pool: u64,
    /// Device addresses of the batch indices, cache positions, `kv_indptr` and `kv_indices`.
    pub(crate) meta: [u64; 4],
    pub(crate) rows: usize,
    pub(crate) cfg: KvPoolConfig,
    pub(crate) ctx_id: usize,
    pub(crate) _cache: PhantomData<&'a mut T>,
}

impl<T> AppendTarget<'_, T> {
    /// Rows the step appends (one per new token).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The pool's geometry (KV heads, head dim, layout).
    pub fn config(&self) -> &KvPoolConfig {
        &self.cfg
    }

    /// The pool's page strides as the kernels take them.
    pub(crate) fn strides(&self) -> PageStrides {
        self.cfg.strides()
    }
}
