//! Parameter blocks of the attention kernels: KV append/gather, decode, prefill, merge.
use super::Abi;

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

/// Parameters of the quantising append into fp8 pools (`append_fp8_*`): the copy's parameters
/// (pool offsets in elements = bytes) and the per-tensor scales; element `x` is stored as the
/// code of `x / scale` (`math::fp8::quantize`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AppendFp8Params {
    /// The copy.
    pub base: AppendParams,
    /// K's scale (stored × scale = real).
    pub k_scale: f32,
    /// V's scale.
    pub v_scale: f32,
}

// SAFETY: #[repr(C)] of an Abi struct and two f32 (no padding: 8-byte multiple).
unsafe impl Abi for AppendFp8Params {}
const _: () =
    assert!(core::mem::size_of::<AppendFp8Params>() == core::mem::size_of::<AppendParams>() + 8);

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

/// Parameters of the prefill over fp8 K/V (`prefill_*_fp8_*`): the prefill's parameters, with
/// K's scale already folded into `logit` by the host, and V's scale, applied to the outputs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PrefillFp8Params {
    /// The prefill.
    pub base: PrefillParams,
    /// V's scale (stored × scale = real).
    pub v_scale: f32,
    /// Keeps 8-byte alignment explicit; must be 0.
    pub reserved: u32,
}

// SAFETY: #[repr(C)] of an Abi struct, an f32 and a u32 (no padding: 8-byte multiple).
unsafe impl Abi for PrefillFp8Params {}
const _: () =
    assert!(core::mem::size_of::<PrefillFp8Params>() == core::mem::size_of::<PrefillParams>() + 8);

/// Parameters of the CUDA-core decode over fp8 K/V (`decode_fp8_*`): the decode's parameters,
/// with K's scale already folded into `logit` by the host, and V's scale, applied with the
/// softmax normaliser.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DecodeFp8Params {
    /// The decode.
    pub base: DecodeParams,
    /// V's scale (stored × scale = real).
    pub v_scale: f32,
    /// Keeps 8-byte alignment explicit; must be 0.
    pub reserved: u32,
}

// SAFETY: #[repr(C)] of an Abi struct, an f32 and a u32 (no padding: 8-byte multiple).
unsafe impl Abi for DecodeFp8Params {}
const _: () =
    assert!(core::mem::size_of::<DecodeFp8Params>() == core::mem::size_of::<DecodeParams>() + 8);

/// RoPE inside attention (FlashInfer's `ROPE_LLAMA`): q and every key are rotated on the fly by
/// `position · inv_freq[pair]`. Key `t` of request `b` sits at position `offsets[b] + t`; a
/// decode query at `offsets[b] + kv_len − 1`, prefill query token `i` at
/// `offsets[b] + kv_len − qo_len + i` (its causal position).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RopeAttn {
    /// f32 `[rotary_dim / 2]` inverse frequencies (radians per position).
    pub inv_freq: u64,
    /// i32 `[batch]` position of each request's key 0 (≥ 0).
    pub offsets: u64,
    /// Rotated elements per head: even, ≤ head_dim; a multiple of 16 with [`super::ROPE_HALF`]
    /// (decode lanes load 4-element halves at `R/2` apart, prefill rotates 16-byte chunks).
    pub rotary_dim: u32,
    /// [`super::ROPE_INTERLEAVED`] or [`super::ROPE_HALF`].
    pub style: u32,
}

// SAFETY: #[repr(C)] of u64/u32 fields; same layout on host and nvptx64.
unsafe impl Abi for RopeAttn {}
const _: () = assert!(core::mem::size_of::<RopeAttn>() == 2 * 8 + 2 * 4);

/// Parameters of `decode_rope_*`: a batch decode with RoPE applied inside attention.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DecodeRopeParams {
    /// The decode.
    pub base: DecodeParams,
    /// The rotation.
    pub rope: RopeAttn,
}

// SAFETY: #[repr(C)] of two Abi structs whose sizes are multiples of 8 (no padding).
unsafe impl Abi for DecodeRopeParams {}
const _: () = assert!(
    core::mem::size_of::<DecodeRopeParams>()
        == core::mem::size_of::<DecodeParams>() + core::mem::size_of::<RopeAttn>()
);

/// One prefill work item (`u32 × 8` in device memory): query tokens `[t0, t0 + tile_tokens)` of
/// `request` against the KV chunk `[kv_begin, kv_end)` (intersected in the kernel with the keys
/// the tile's rows may see). `part = u32::MAX`: the item owns its rows' whole KV range and
/// writes `o`/`lse` directly; otherwise it writes split-KV partial states to slots
/// `part + (t − t0) · nchunks + chunk` of `part_o`/`part_lse`, merged afterwards by `merge_*`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefillItem {
    /// Request index (row of the request table).
    pub request: u32,
    /// First query token of the tile, relative to the request.
    pub t0: u32,
    /// First key of the chunk.
    pub kv_begin: u32,
    /// One past the last key of the chunk.
    pub kv_end: u32,
    /// First partial slot of the tile, or `u32::MAX` (not split).
    pub part: u32,
    /// Index of this chunk among the tile's chunks.
    pub chunk: u32,
    /// Chunks the tile's KV range is split into.
    pub nchunks: u32,
    /// Padding to 32 bytes (two 16-byte loads).
    pub pad: u32,
}

/// One request of a prefill batch (`u32 × 4` in device memory).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefillRequest {
    /// First query token of the request in q/o (ragged `qo_indptr[b]`).
    pub qo_begin: u32,
    /// Query tokens (the last `qo_len` positions of the context).
    pub qo_len: u32,
    /// Ragged KV: first K/V token in the packed k/v; paged: first entry of the page list.
    pub kv_begin: u32,
    /// Key/value tokens.
    pub kv_len: u32,
}

/// Parameters of the prefill kernels (`prefill_{ragged,paged}_*`): for each work item, the
/// item's query tile (GQA rows packed: packed row `r` is token `t0 + r / group`, head
/// `r % group` of the KV head's group) against a chunk of its request's K/V. Query token `t` of a
/// request sits at position `kv_len − qo_len + t`. Grid `(num_kv_heads, items)` (KV head
/// fastest in launch order; see `cta_work` in kernels-gpu/src/prefill.rs).
///
/// `items == 0` is single-request mode: request `{0, qo_len, 0, kv_len}`, one item per query
/// tile (last tile first), whole KV, not split; no device metadata at all.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PrefillParams {
    /// q: element `(token, head, d)` at `q + token*q_stride_n + head*q_stride_h + d`.
    pub q: u64,
    /// o, like q (strides `o_stride_n`, `o_stride_h`).
    pub o: u64,
    /// f32 lse `[tokens, num_qo_heads]` (base 2); 0 = not requested.
    pub lse: u64,
    /// K: ragged `k + token*k_stride_n + head*k_stride_h + d`; paged, the page pool
    /// `k + page*k_stride_page + entry*k_stride_n + head*k_stride_h + d`.
    pub k: u64,
    /// V, addressed like K with the V strides (paged kernels: with the K strides — the pools of
    /// a cache share one geometry).
    pub v: u64,
    /// Elements per K page (paged kernels).
    pub k_stride_page: u64,
    /// Elements per V page (equal to `k_stride_page`; paged kernels read only the latter).
    pub v_stride_page: u64,
    /// [`PrefillItem`] array; 0 = single-request mode.
    pub items: u64,
    /// u32: number of valid items (grid.x may be larger in CUDA-graph mode).
    pub num_items: u64,
    /// [`PrefillRequest`] array.
    pub requests: u64,
    /// i32 page ids (paged kernels).
    pub kv_indices: u64,
    /// f32 partial outputs `[slots, num_qo_heads, D]` of split items.
    pub part_o: u64,
    /// f32 partial lse `[slots, num_qo_heads]`.
    pub part_lse: u64,
    /// Persistent CTAs (the Hopper kernel's batch mode): u32 `[grid.x + 1]` offsets, then the
    /// work units each CTA runs in order, as u32 pairs `[work item, kv_head]` (pair `k` at
    /// `grid.x + 1 + 2k`): CTA `c` runs units `offsets[c] .. offsets[c + 1]`. 0 = one unit
    /// per CTA, from the grid `(num_kv_heads, items)`.
    pub units: u64,
    /// q token stride.
    pub q_stride_n: u32,
    /// q head stride.
    pub q_stride_h: u32,
    /// o token stride.
    pub o_stride_n: u32,
    /// o head stride.
    pub o_stride_h: u32,
    /// K token (entry) stride.
    pub k_stride_n: u32,
    /// K head stride.
    pub k_stride_h: u32,
    /// V token (entry) stride.
    pub v_stride_n: u32,
    /// V head stride.
    pub v_stride_h: u32,
    /// Tokens per page (paged kernels; 1 otherwise).
    pub page_size: crate::math::fastdiv::FastDiv,
    /// Single-request mode: query tokens.
    pub qo_len: u32,
    /// Single-request mode: key/value tokens.
    pub kv_len: u32,
    /// Query heads in total.
    pub num_qo_heads: u32,
    /// Query heads per KV head, as a fast divider.
    pub group: crate::math::fastdiv::FastDiv,
    /// Query tokens per tile (`ROWS / group`, rounded down: tiles hold whole tokens).
    pub tile_tokens: u32,
    /// Sliding window (keys `j ≥ pos − window_left`); `u32::MAX` = none.
    pub window_left: u32,
    /// 1 = causal mask (`j ≤ pos`).
    pub causal: u32,
    /// Logit transform.
    pub logit: crate::math::softmax::LogitTransform,
    /// Custom mask (the `_mask` kernels, `attn::custom_mask`): FlashInfer's packed bits, little
    /// endian, each request's row-major `[qo_len, kv_len]` matrix from byte
    /// `mask_indptr[request]`; 4-byte aligned and readable up to the next 4-byte boundary.
    pub mask: u64,
    /// i32 `[batch + 1]` byte offsets of each request's bits; 0 in single-request mode (its
    /// bits start at `mask`).
    pub mask_indptr: u64,
}

// SAFETY: #[repr(C)] struct of u64/u32/f32 fields (FastDiv and LogitTransform are #[repr(C)]
// u32/f32 fields), laid out identically on x86_64 and nvptx64.
unsafe impl Abi for PrefillParams {}
const _: () = assert!(core::mem::size_of::<PrefillParams>() == 16 * 8 + 8 * 4 + 4 * 12 + 16);

/// Parameters of the `_rope` prefill kernels: a prefill with RoPE applied inside attention
/// ([`RopeAttn`]; query token `t` of a request at `offsets[request] + kv_len − qo_len + t`, its
/// keys from `offsets[request]`; single-request mode reads `offsets[0]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PrefillRopeParams {
    /// The prefill.
    pub base: PrefillParams,
    /// The rotation.
    pub rope: RopeAttn,
}

// SAFETY: #[repr(C)] of two Abi structs whose sizes are multiples of 8 (no padding).
unsafe impl Abi for PrefillRopeParams {}
const _: () = assert!(
    core::mem::size_of::<PrefillRopeParams>()
        == core::mem::size_of::<PrefillParams>() + core::mem::size_of::<RopeAttn>()
);
const _: () = assert!(core::mem::size_of::<PrefillItem>() == 32);

/// A TMA tensor map (CUDA's `CUtensorMap`): 128 opaque bytes the driver's
/// `cuTensorMapEncodeTiled` writes on the host. Its layout is the driver's; the kernels only
/// hand its address to `cp.async.bulk.tensor` (`arch::tma`). TMA wants it 64-byte aligned;
/// the type says 16 because rustc's nvptx kernel ABI rejects more (an internal compiler error),
/// and the PTX parameter holding it is declared `.align 64` by `host/build.rs`.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TensorMap {
    /// The encoded descriptor.
    pub opaque: [u64; 16],
}

/// The second parameter of the Hopper prefill kernels (`prefill_*_h`, `prefill_*_hp`): tensor
/// maps of the ragged K and V (3-D: head dim, KV heads, rows; boxes of 64 elements × 1 head ×
/// `config::prefill_hopper::TILE` rows, 128-byte swizzle), from which their producer loads K/V
/// tiles with TMA when `enabled`. The PTX declares the parameter 64-byte aligned (CUDA's rule
/// for tensor maps; `host/build.rs`), beyond the 16 rustc's kernel ABI accepts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KvTensorMaps {
    /// K rows.
    pub k: TensorMap,
    /// V rows.
    pub v: TensorMap,
    /// 1: load ragged K/V tiles with these maps; 0: the maps are unset, copy with `cp.async`
    /// (paged launches, CUDA-graph plans, strides TMA cannot describe).
    pub enabled: u32,
    /// Keeps the size a multiple of 16; must be 0.
    pub reserved: [u32; 3],
}

// SAFETY: #[repr(C)] arrays of u64, 64-byte aligned on both sides (explicit align), no padding.
unsafe impl Abi for TensorMap {}
// SAFETY: as TensorMap (two of them and four u32s, 272 bytes, no padding).
unsafe impl Abi for KvTensorMaps {}
const _: () = assert!(core::mem::size_of::<KvTensorMaps>() == 272);
const _: () = assert!(core::mem::align_of::<KvTensorMaps>() == 16);

const _: () = assert!(core::mem::size_of::<PrefillRequest>() == 16);

/// Parameters of the state-merge kernels (`merge_*`): for each output row and head, merges the
/// row's attention states `(v_j, s_j)` (values and base-2 lse) into `o`, `lse`:
/// `o = Σ 2^(s_j − m) v_j / Σ 2^(s_j − m)`, `lse = m + log2 Σ 2^(s_j − m)`, `m = max s_j`.
///
/// Row `i`'s state `j` lives at `v + i*v_stride_row + j*v_stride_state` (fixed mode, `rows == 0`)
/// or, from the row list `rows[i] = (out_row, first, count)`, at `v + (first + j)*v_stride_state`
/// with output row `out_row` (variable mode: split-KV prefill). Strides are signed element
/// counts, so two unrelated buffers `a`, `b` are states 0 and 1 with `v_stride_state = b − a`.
/// Grid `(ceil(rows / 4), num_heads)`, block 128: one warp per (row, head).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MergeParams {
    /// State values (f32 or the 16-bit type, per kernel).
    pub v: u64,
    /// f32 state lse (base 2).
    pub s: u64,
    /// Merged values (16-bit).
    pub o: u64,
    /// f32 merged lse; 0 = not requested.
    pub lse: u64,
    /// u32 `[rows][3]` row list; 0 = fixed mode.
    pub rows: u64,
    /// u32: number of rows, read on the device (CUDA-graph mode); 0 = `num_rows`.
    pub num_rows_dev: u64,
    /// Value stride between rows (fixed mode), elements.
    pub v_stride_row: i64,
    /// Value stride between states, elements.
    pub v_stride_state: i64,
    /// lse stride between rows (fixed mode).
    pub s_stride_row: i64,
    /// lse stride between states.
    pub s_stride_state: i64,
    /// Value head stride.
    pub v_stride_h: u32,
    /// lse head stride.
    pub s_stride_h: u32,
    /// Output row stride.
    pub o_stride_row: u32,
    /// Output head stride.
    pub o_stride_h: u32,
    /// Merged lse row stride (its head stride is 1).
    pub lse_stride_row: u32,
    /// Rows (host count; an upper bound in CUDA-graph mode).
    pub num_rows: u32,
    /// States per row (fixed mode).
    pub num_states: u32,
    /// Heads.
    pub num_heads: u32,
}

// SAFETY: #[repr(C)] struct of u64/i64/u32 fields, same layout on x86_64 and nvptx64.
unsafe impl Abi for MergeParams {}
const _: () = assert!(core::mem::size_of::<MergeParams>() == 10 * 8 + 8 * 4);
