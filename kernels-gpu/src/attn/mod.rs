//! The attention core: what every attention kernel (decode, tensor-core decode, prefill,
//! Hopper prefill) shares, written once. A kernel file composes these pieces — load the work
//! item, load K/V tiles, S = Q·Kᵀ, logits transform, mask, online softmax, O += P·V, epilogue
//! — and holds only its own schedule (threads, pipeline, which products where).
//!
//! | module       | holds                                                                     |
//! |--------------|---------------------------------------------------------------------------|
//! | [`work`]     | work items from the plan arrays (decode, prefill; CTA → item and KV head)  |
//! | [`mask`]     | visible key range of a query tile, mask predicates ([`mask::Mask`])        |
//! | `custom_mask`| the packed custom bit mask (FlashInfer's layout) as a [`mask::Mask`]     |
//! | [`logits`]   | logits transform: scale, soft-cap ([`logits::Logits`])                    |
//! | [`tile`]     | register tile in the `mma` C layout: row max/sum, scale rows, exp2, mma    |
//! | [`state`]    | online-softmax state of a lane's rows: update, quad reduction, normalise   |
//! | [`epilogue`] | a prefill tile's output: normalised O and lse, final or split partial     |
//! | [`split`]    | the decode kernels' fused split-KV merge                                   |
//! | [`rope`]     | RoPE inside attention: q and key rows rotated on the fly ([`rope::PosEnc`]) |
//! | [`kv`]       | K/V row addresses per layout (ragged, paged), the `cp.async` tile copy    |
//! | [`lane_vec`] | a CUDA-core decode lane's K/V vector: 16-bit or fp8, staged and unpacked  |
//! | [`swizzle`]  | the swizzled `[rows][D]` shared-memory layout and fragment offsets        |
//! | `tc_kv`      | the tensor-core decode's K/V: ring copies and fragments, 16-bit or fp8    |
//! | [`traits`]   | per-head-dim constants derived from `D`                                    |
//! | `hopper`     | sm_90a: the `wgmma` prefill's stage ring, copy paths and consumer step     |
//!
//! Variants are types with hooks: a mask ([`mask::CausalWindow`] today) and a logits transform
//! ([`logits::ScaleSoftCap`]) are type parameters of the kernel bodies, fixed by the entry
//! macros, so a new variant is a new type rather than a copy of a kernel. Everything here is
//! `#[inline(always)]` over zero-cost types: the kernels compile to the same code as when the
//! pieces were written inline.
//!
//! The softmax is kept in base 2: logits are `x = t · log2 e` (the host folds `log2 e` into the
//! scale), a state holds `m = max x` and `d = Σ 2^(x − m)`, and the output is `o / d` with
//! `lse = m + log2 d` (FlashInfer's convention). Empty rows stay `m = −inf, d = 0` and write
//! zeros with `lse = −inf`. The scalar state, its merge and the fragment layouts are in
//! `math` (host-tested).
//!
//! The pure parts (mask, logits, register tile, traits) also build on the host, where their
//! unit tests run (`cargo test -p ferrinfer-kernels`); the rest needs the device intrinsics.
// On the host only the tests use these items.
#![cfg_attr(not(target_arch = "nvptx64"), allow(dead_code))]
#[cfg(target_arch = "nvptx64")]
pub(crate) mod custom_mask;
#[cfg(target_arch = "nvptx64")]
pub(crate) mod epilogue;
#[cfg(all(target_arch = "nvptx64", target_feature = "sm_90a"))]
pub(crate) mod hopper;
#[cfg(target_arch = "nvptx64")]
pub(crate) mod kv;
#[cfg(target_arch = "nvptx64")]
pub(crate) mod lane_vec;
pub(crate) mod logits;
pub(crate) mod mask;
#[cfg(target_arch = "nvptx64")]
pub(crate) mod rope;
#[cfg(target_arch = "nvptx64")]
pub(crate) mod split;
#[cfg(target_arch = "nvptx64")]
pub(crate) mod state;
pub(crate) mod swizzle;
#[cfg(target_arch = "nvptx64")]
pub(crate) mod tc_kv;
pub(crate) mod tile;
pub(crate) mod traits;
#[cfg(target_arch = "nvptx64")]
pub(crate) mod work;
