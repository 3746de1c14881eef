//! Kernel parameter blocks: the contract between the host launcher and the device entry points.
//!
//! Every kernel takes exactly one of these structs **by value**. rustc lowers a by-value
//! `#[repr(C)]` argument of an `extern "ptx-kernel"` function to one `.param .align 8 .b8
//! name[size]` blob, which `cuLaunchKernel` fills from a pointer to the host copy; the host
//! harness checks each PTX entry's blob size against `size_of` of the struct here.
//!
//! Device pointers are `u64` (the generic address); a zero pointer means "absent" where the field
//! says so. Host side twin: `host/src/ops/*.rs` fills these after validation.

/// Marker for types that may be passed to a kernel by value.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, `Copy`, contain only integers and floats (no references,
/// no padding-dependent invariants), and have the same layout on the host and on nvptx64.
pub unsafe trait Abi: Copy + 'static {}

/// Parameters of the intrinsics self-test kernels (`selftest_*`): generic in/out buffers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SelfTestParams {
    /// Input buffer (meaning depends on the test kernel).
    pub input: u64,
    /// Output buffer (meaning depends on the test kernel).
    pub output: u64,
    /// Number of elements (meaning depends on the test kernel).
    pub n: u32,
    /// Extra scalar argument.
    pub arg: u32,
}

/// Parameters of the paged-KV copy kernels: `append_kv_*` (ragged rows → pages) and
/// `gather_kv_*` (pages → contiguous rows). Grid-stride over tokens; block `(head_dim/8, hy)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AppendParams {
    /// Contiguous-side K rows: element `(n, h, d)` at `k_rows + n*rows_stride_n + h*rows_stride_h + d`.
    pub k_rows: u64,
    /// Contiguous-side V rows (same strides as K for gather; `v_rows_stride_*` for append).
    pub v_rows: u64,
    /// K page pool.
    pub k_pool: u64,
    /// V page pool.
    pub v_pool: u64,
    /// i32 `[nnz]` batch entry of each row (append only; 0 for gather).
    pub batch_indices: u64,
    /// i32 `[nnz]` absolute position of each row (append only; 0 for gather).
    pub positions: u64,
    /// i32 `[batch + 1]` page-list offsets.
    pub kv_indptr: u64,
    /// i32 page ids.
    pub kv_indices: u64,
    /// Rows to copy.
    pub nnz: u32,
    /// KV heads.
    pub num_heads: u32,
    /// Row strides of the contiguous side, K (elements).
    pub k_rows_stride_n: u32,
    /// Head stride of the contiguous side, K.
    pub k_rows_stride_h: u32,
    /// Row strides of the contiguous side, V.
    pub v_rows_stride_n: u32,
    /// Head stride of the contiguous side, V.
    pub v_rows_stride_h: u32,
    /// Pool layout.
    pub pool: crate::math::layout::PageStrides,
    /// Batch entry used by gather (its page list is `kv_indptr[seq]..`).
    pub seq: u32,
    /// Keeps 8-byte alignment explicit; must be 0.
    pub reserved: u32,
}

// SAFETY: #[repr(C)] of u64/u32 fields and a #[repr(C)] struct of u32s; same layout on host and
// nvptx64.
unsafe impl Abi for AppendParams {}
const _: () = assert!(core::mem::size_of::<AppendParams>() == 8 * 8 + 6 * 4 + 16 + 8);

/// Parameters of the batch decode kernels (`decode_*`).
///
/// K/V are read through page tables with generic strides, so one kernel serves the paged cache
/// (NHD/HND) and contiguous single-request K/V (one "page" holding the whole sequence).
/// Element `(token t, head h, d)` of request b lives at
/// `pool + page*stride_page + entry*stride_n + h*stride_h + d` with
/// `(slot, entry) = page_size.divmod(t)` and `page = kv_indices[kv_indptr[b] + slot]`.
/// Work item i (grid.x) is `(request, kv_begin, kv_end) = work[{0,1,2}*work_stride + i]`;
/// `counts = [num_items, batch]` live on the device so a captured graph replays with new plans.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DecodeParams {
    /// q `[batch, num_qo_heads, D]` (strides `q_stride_b`, `q_stride_h`).
    pub q: u64,
    /// o, laid out like q (strides `o_stride_b`, `o_stride_h`).
    pub o: u64,
    /// f32 lse `[batch, num_qo_heads]`; 0 = not requested.
    pub lse: u64,
    /// K pool.
    pub k_pool: u64,
    /// V pool.
    pub v_pool: u64,
    /// K elements per page.
    pub k_stride_page: u64,
    /// V elements per page.
    pub v_stride_page: u64,
    /// i32 `[batch + 1]`.
    pub kv_indptr: u64,
    /// i32 page ids.
    pub kv_indices: u64,
    /// i32 `[3, work_stride]`: request, kv_begin, kv_end per work item.
    pub work: u64,
    /// i32 `[batch + 1]`: work items of each request.
    pub merge_indptr: u64,
    /// i32 `[2]`: number of work items, batch size.
    pub counts: u64,
    /// f32 partial outputs `[work_stride, num_qo_heads, D]`.
    pub part_o: u64,
    /// f32 partial lse `[work_stride, num_qo_heads]`.
    pub part_lse: u64,
    /// u32 `[batch, num_kv_heads]` arrival counters of split requests (zero between launches:
    /// the CTA that merges a request resets its counter).
    pub counters: u64,
    /// q request stride.
    pub q_stride_b: u32,
    /// q head stride.
    pub q_stride_h: u32,
    /// o request stride.
    pub o_stride_b: u32,
    /// o head stride.
    pub o_stride_h: u32,
    /// K token stride inside a page.
    pub k_stride_n: u32,
    /// K head stride inside a page.
    pub k_stride_h: u32,
    /// V token stride inside a page.
    pub v_stride_n: u32,
    /// V head stride inside a page.
    pub v_stride_h: u32,
    /// Tokens per page, as a fast divider.
    pub page_size: crate::math::fastdiv::FastDiv,
    /// Query heads.
    pub num_qo_heads: u32,
    /// Query heads per KV head (≤ the kernel's group capacity).
    pub group: u32,
    /// Stride of the `work` arrays (= grid items).
    pub work_stride: u32,
    /// Logit transform.
    pub logit: crate::math::softmax::LogitTransform,
}

// SAFETY: #[repr(C)] of u64/u32 fields and #[repr(C)] structs of u32/f32; same layout on the
// host and nvptx64.
unsafe impl Abi for DecodeParams {}
const _: () = assert!(core::mem::size_of::<DecodeParams>() == 15 * 8 + 14 * 4 + 16);

/// Parameters of the single-request prefill kernels (`prefill_*`): `qo_len` query tokens against
/// `kv_len` contiguous (strided) K/V tokens; query token `t` sits at position
/// `kv_len − qo_len + t`. CTA = (tile of 64 packed rows, KV head); packed row `r` is query
/// token `r / group`, head `r % group` of the KV head's group.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PrefillParams {
    /// q `[qo_len, num_qo_heads, D]` (strides `q_stride_n`, `q_stride_h`).
    pub q: u64,
    /// o, like q (strides `o_stride_n`, `o_stride_h`).
    pub o: u64,
    /// f32 lse `[qo_len, num_qo_heads]`; 0 = not requested.
    pub lse: u64,
    /// K: element `(t, h, d)` at `k + t*k_stride_n + h*k_stride_h + d`.
    pub k: u64,
    /// V, addressed like K with the V strides.
    pub v: u64,
    /// q token stride.
    pub q_stride_n: u32,
    /// q head stride.
    pub q_stride_h: u32,
    /// o token stride.
    pub o_stride_n: u32,
    /// o head stride.
    pub o_stride_h: u32,
    /// K token stride.
    pub k_stride_n: u32,
    /// K head stride.
    pub k_stride_h: u32,
    /// V token stride.
    pub v_stride_n: u32,
    /// V head stride.
    pub v_stride_h: u32,
    /// Query tokens.
    pub qo_len: u32,
    /// Key/value tokens.
    pub kv_len: u32,
    /// Query heads in total.
    pub num_qo_heads: u32,
    /// Query heads per KV head, as a fast divider.
    pub group: crate::math::fastdiv::FastDiv,
    /// Sliding window (keys `j ≥ pos − window_left`); `u32::MAX` = none.
    pub window_left: u32,
    /// 1 = causal mask (`j ≤ pos`).
    pub causal: u32,
    /// Logit transform.
    pub logit: crate::math::softmax::LogitTransform,
}

// SAFETY: #[repr(C)] of u64/u32 fields and #[repr(C)] structs of u32/f32; same layout on the
// host and nvptx64.
unsafe impl Abi for PrefillParams {}
const _: () = assert!(core::mem::size_of::<PrefillParams>() == 5 * 8 + 16 * 4 + 16);

/// Parameters of `util_spin`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SpinParams {
    /// Nanoseconds to spin.
    pub ns: u64,
}

// SAFETY: #[repr(C)] single u64.
unsafe impl Abi for SpinParams {}

// SAFETY: #[repr(C)] struct of u64/u32 fields, laid out identically on x86_64 and nvptx64.
unsafe impl Abi for SelfTestParams {}

const _: () = assert!(core::mem::size_of::<SelfTestParams>() == 2 * 8 + 2 * 4);
