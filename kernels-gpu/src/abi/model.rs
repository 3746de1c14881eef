//! Parameter blocks of the model kernels beside attention: norms, RoPE, gathers, SiLU, conversions,
//! argmax.
use super::Abi;

/// Threads per CTA of the row kernels (`rms_norm`, `add_rms_norm`, `qkv_rope_*`, `gather_rows`)
/// and the element-wise ones (`silu_and_mul`, `to_f32_*`).
pub const MODEL_THREADS: u32 = 256;

/// Threads per CTA of `argmax` (one CTA per row: as many loads in flight as one CTA can have).
pub const ARGMAX_THREADS: u32 = 1024;

/// Parameters of the RMSNorm kernels `rms_norm` and `add_rms_norm`: for each of `rows` rows of
/// `dim` f32 values, `out = x / sqrt(mean(x²) + eps) · weight`; `add_rms_norm` first adds `x`
/// into `residual` (`residual += x`, written back) and normalises the sum. Row `r` of every
/// tensor starts at element `r·dim`. Grid `(rows)`, block [`MODEL_THREADS`], dynamic shared
/// memory `4 · MODEL_THREADS / 32` bytes (the per-warp partial sums). The `_f16`/`_bf16`
/// entries write `out` in that 16-bit type (rounded once); everything else stays f32.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NormParams {
    /// f32 `[rows, dim]` input (`add_rms_norm`: the addend).
    pub x: u64,
    /// f32 `[rows, dim]` residual stream, updated in place (`add_rms_norm` only; 0 otherwise).
    pub residual: u64,
    /// f32 `[dim]` weight.
    pub weight: u64,
    /// f32 (or 16-bit, per entry) `[rows, dim]` output.
    pub out: u64,
    /// Rows.
    pub rows: u32,
    /// Elements per row (≥ 1).
    pub dim: u32,
    /// Added to the mean square (finite, > 0).
    pub eps: f32,
    /// Keeps 8-byte alignment explicit; must be 0.
    pub reserved: u32,
}

// SAFETY: #[repr(C)] of u64/u32/f32 fields; same layout on host and nvptx64.
unsafe impl Abi for NormParams {}
const _: () = assert!(core::mem::size_of::<NormParams>() == 4 * 8 + 4 * 4);

/// [`RopeParams::style`]: pairs `(2i, 2i+1)` (GPT-J / GGUF Llama).
pub const ROPE_INTERLEAVED: u32 = 0;
/// [`RopeParams::style`]: pairs `(i, i + rotary_pairs)` (Hugging Face's `rotate_half`).
pub const ROPE_HALF: u32 = 1;

/// Parameters of the fused QKV epilogue `qkv_rope_{f16,bf16}`: token `i`'s f32 row of `qkv`
/// (`[num_q_heads + 2·num_kv_heads, head_dim]`: q heads, k heads, v heads) is split into `q`
/// `[n, num_q_heads, head_dim]`, `k` and `v` `[n, num_kv_heads, head_dim]` of the 16-bit type;
/// q and k pairs `i < rotary_pairs` are rotated by `positions[i] · inv_freq[pair]` (a negative
/// position counts as 0), the other elements and v are copied. Grid `(n)`, block
/// [`MODEL_THREADS`]: one CTA per token, one thread per element pair.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RopeParams {
    /// f32 `[n, num_q_heads + 2·num_kv_heads, head_dim]`.
    pub qkv: u64,
    /// i32 `[n]` positions.
    pub positions: u64,
    /// f32 `[rotary_pairs]` inverse frequencies (radians per position).
    pub inv_freq: u64,
    /// 16-bit `[n, num_q_heads, head_dim]` output.
    pub q: u64,
    /// 16-bit `[n, num_kv_heads, head_dim]` output.
    pub k: u64,
    /// 16-bit `[n, num_kv_heads, head_dim]` output.
    pub v: u64,
    /// Tokens.
    pub n: u32,
    /// Query heads (≥ 1).
    pub num_q_heads: u32,
    /// Key/value heads (≥ 1).
    pub num_kv_heads: u32,
    /// Elements per head (even, ≥ 2).
    pub head_dim: u32,
    /// Rotated pairs per head, `rotary_dim / 2` (in `1..=head_dim/2`).
    pub rotary_pairs: u32,
    /// [`ROPE_INTERLEAVED`] or [`ROPE_HALF`].
    pub style: u32,
}

// SAFETY: #[repr(C)] of u64/u32 fields; same layout on host and nvptx64.
unsafe impl Abi for RopeParams {}
const _: () = assert!(core::mem::size_of::<RopeParams>() == 6 * 8 + 6 * 4);

/// Parameters of `qkv_rope_append_{f16,bf16}`: [`RopeParams`]'s epilogue with RoPE fused into
/// the KV append — q goes to `rope.q` as there, but token `i`'s rotated k heads and its v heads
/// are written straight into their page of a paged KV pool (FlashInfer-style append metadata,
/// as [`super::AppendParams`]: batch entry and cache position per token, CSR page tables), so
/// the separate append launch and the k/v round trip through memory are gone. `rope.k` and
/// `rope.v` are unused (0). Grid `(n)` with `n = nnz` rows of metadata, block
/// [`MODEL_THREADS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RopeAppendParams {
    /// The split + RoPE of each token (`k`, `v` unused).
    pub rope: RopeParams,
    /// K page pool (16-bit, the output type).
    pub k_pool: u64,
    /// V page pool.
    pub v_pool: u64,
    /// i32 `[n]` batch entry of each token.
    pub batch_indices: u64,
    /// i32 `[n]` cache position of each token (where its K/V row goes; RoPE's angle uses
    /// `rope.positions`).
    pub cache_positions: u64,
    /// i32 `[batch + 1]` page-list offsets.
    pub kv_indptr: u64,
    /// i32 page ids.
    pub kv_indices: u64,
    /// Pool layout.
    pub pool: crate::math::layout::PageStrides,
}

// SAFETY: #[repr(C)] of a #[repr(C)] struct of u64/u32 fields (72 bytes, 8-aligned), u64
// fields and a #[repr(C)] struct of u32s; same layout on host and nvptx64.
unsafe impl Abi for RopeAppendParams {}
const _: () = assert!(core::mem::size_of::<RopeAppendParams>() == 72 + 6 * 8 + 16);

/// Parameters of `gather_rows` (f32 rows) and `gather_rows_{f16,bf16}` (16-bit rows):
/// `out[i, :] = table[ids[i], :]` for `i < n`, rows of `dim` elements (a bit copy);
/// an id `≥ table_rows` writes a row of NaN (ids live on the device, so the host cannot check
/// them without a synchronisation). Grid `(n)`, block [`MODEL_THREADS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GatherParams {
    /// `[table_rows, dim]` of the entry's element type.
    pub table: u64,
    /// u32 `[n]` row ids.
    pub ids: u64,
    /// `[n, dim]` output of the entry's element type.
    pub out: u64,
    /// Rows of the table.
    pub table_rows: u32,
    /// Elements per row (≥ 1).
    pub dim: u32,
    /// Rows to gather.
    pub n: u32,
    /// Keeps 8-byte alignment explicit; must be 0.
    pub reserved: u32,
}

// SAFETY: #[repr(C)] of u64/u32 fields; same layout on host and nvptx64.
unsafe impl Abi for GatherParams {}
const _: () = assert!(core::mem::size_of::<GatherParams>() == 3 * 8 + 4 * 4);

/// Parameters of `silu_and_mul`: `out[r, c] = silu(x[r, c]) · x[r, dim + c]` for `r < rows`,
/// `c < dim` (`x` rows are `2·dim`: gate, then up), f32 (`silu_and_mul_{f16,bf16}`: `out` in
/// that 16-bit type, rounded once). One thread per output element:
/// grid `(ceil(rows·dim / MODEL_THREADS))`, block [`MODEL_THREADS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SiluMulParams {
    /// f32 `[rows, 2·dim]`.
    pub x: u64,
    /// f32 (or 16-bit, per entry) `[rows, dim]`.
    pub out: u64,
    /// Rows.
    pub rows: u32,
    /// Output elements per row (≥ 1); `rows · dim` fits in u32.
    pub dim: u32,
}

// SAFETY: #[repr(C)] of u64/u32 fields; same layout on host and nvptx64.
unsafe impl Abi for SiluMulParams {}
const _: () = assert!(core::mem::size_of::<SiluMulParams>() == 2 * 8 + 2 * 4);

/// Rows (tokens) one CTA of `gemv_*` multiplies with each weight vector it loads: a launch of
/// `m` rows has `ceil(m / GEMV_GROUP_ROWS)` row groups (grid y), each its own CTAs, all running
/// the same arithmetic per row, so a row's result does not depend on `m`.
pub const GEMV_GROUP_ROWS: usize = 8;

/// Threads per CTA of `gemv_*` (one warp per output column).
pub const GEMV_THREADS: u32 = 128;

/// Parameters of `gemv_{f16,bf16}`: `out[r, c] = Σ_j x[r, j] · w[c, j]` (f32 products and sums)
/// for `r < m`, `c < n`; `x` `[m, k]` and `w` `[n, k]` row-major 16-bit, both 16-byte aligned,
/// `k` a multiple of 8; `out` `[m, n]` f32. `gemv_silu_{f16,bf16}`: `x` is f32 `[m, 2k]` (gate |
/// up) and the input element is `silu(gate) · up` rounded to the 16-bit type. Grid
/// `(ceil(n / (GEMV_THREADS / 32)), ceil(m / GEMV_GROUP_ROWS))`, block [`GEMV_THREADS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GemvParams {
    /// 16-bit `[m, k]` (`gemv_silu_*`: f32 `[m, 2k]`).
    pub x: u64,
    /// 16-bit `[n, k]`.
    pub w: u64,
    /// f32 `[m, n]`.
    pub out: u64,
    /// Rows of x and out (≥ 1).
    pub m: u32,
    /// Columns of out (rows of w).
    pub n: u32,
    /// The shared dimension, a multiple of 8.
    pub k: u32,
    /// Keeps 8-byte alignment explicit; must be 0.
    pub reserved: u32,
}

// SAFETY: #[repr(C)] of u64/u32 fields; same layout on host and nvptx64.
unsafe impl Abi for GemvParams {}
const _: () = assert!(core::mem::size_of::<GemvParams>() == 3 * 8 + 4 * 4);

/// Parameters of `to_f32_{f16,bf16}`: `out[i] = x[i]` widened to f32 for `i < n`. One thread per
/// element pair: grid `(ceil(ceil(n/2) / MODEL_THREADS))`, block [`MODEL_THREADS`]; `x` must be
/// 4-byte aligned.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ConvertParams {
    /// 16-bit `[n]`.
    pub x: u64,
    /// f32 `[n]`.
    pub out: u64,
    /// Elements.
    pub n: u32,
    /// Keeps 8-byte alignment explicit; must be 0.
    pub reserved: u32,
}

// SAFETY: #[repr(C)] of u64/u32 fields; same layout on host and nvptx64.
unsafe impl Abi for ConvertParams {}
const _: () = assert!(core::mem::size_of::<ConvertParams>() == 2 * 8 + 2 * 4);

/// Parameters of `argmax`: `out[r]` = the index of the largest of the `vocab` f32 logits of row
/// `r` (the first on ties), or `u32::MAX` when the row holds a NaN. Grid `(rows)`, block
/// [`ARGMAX_THREADS`], dynamic shared memory `12 · ARGMAX_THREADS / 32` bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ArgmaxParams {
    /// f32 `[rows, vocab]`.
    pub logits: u64,
    /// u32 `[rows]`.
    pub out: u64,
    /// Rows.
    pub rows: u32,
    /// Logits per row, in `1..u32::MAX`.
    pub vocab: u32,
}

// SAFETY: #[repr(C)] of u64/u32 fields; same layout on host and nvptx64.
unsafe impl Abi for ArgmaxParams {}
const _: () = assert!(core::mem::size_of::<ArgmaxParams>() == 2 * 8 + 2 * 4);
