//! The pieces of the Hopper prefill (`wgmma`, sm_90a only) that its two kernels share
//! (`prefill_hopper`: one CTA per work item; `prefill_hopper_persistent`: persistent CTAs).
//!
//! CTA = 128 packed query rows of one KV head, 384 threads in three warpgroups. Warpgroups 0
//! and 1 consume, 64 rows each (warp `w` owns rows `16w .. 16w + 16`); warpgroup 2 produces:
//! it copies Q and the K/V tiles of [`TILE`] keys into a 3-stage ring whose stages are tracked
//! by `mbarrier`s ([`ring`]; copies by `cp.async` or TMA: [`load`]). `setmaxnreg` moves
//! registers from the producer to the consumers; the register cap at entry that it needs is
//! the `.maxntid` `host/build.rs` writes into the PTX. Per tile the consumers run one
//! [`step::step`]: S = Q·Kᵀ as `D/16` `wgmma.m64n128k16` with Q and K read from shared memory
//! through descriptors ([`issue_scores`]), masks and the online softmax on the accumulator
//! registers, P packed to 16 bits in registers as the A operand of O += P·V ([`issue_pv`], V
//! read N-major from shared memory). Q, K and V sit in the 128-byte-swizzled layout
//! `math::wgmma_layout` (K and V tiles alike: the K-major B operand of the score product and
//! the N-major B operand of P·V read the same bytes differently).
pub(crate) mod load;
pub(crate) mod ring;
pub(crate) mod step;

use crate::arch::wgmma;
use crate::attn::tile::RegTile;
use crate::config::prefill_hopper as cfg;
use crate::dtype::{Bf16, Elem, F16};
use crate::math::wgmma_layout::{GROUP_BYTES, ROW_BYTES};

/// KV tokens per stage (the N of the score product).
pub(crate) const TILE: u32 = cfg::TILE;
/// Packed query rows per CTA.
pub(crate) const ROWS: u32 = cfg::ROWS;
/// Warps 0–7 consume (two warpgroups); warps 8–11 produce.
pub(crate) const CONSUMER_WARPS: u32 = cfg::CONSUMER_WARPS;
pub(crate) const PRODUCER_THREADS: u32 = cfg::THREADS - 32 * CONSUMER_WARPS;
/// Named barriers 1 and 2: warpgroup w waits at `PINGPONG_BAR + w` for its turn to issue.
pub(crate) const PINGPONG_BAR: u32 = 1;

/// The element types' `wgmma` instructions.
pub(crate) trait WgmmaElem: Elem {
    /// S(64×128) (+)= A·B, A and B K-major in shared memory.
    ///
    /// # Safety
    /// As [`wgmma::mma_ss_n128_bf16`].
    unsafe fn scores(d: &mut [f32; 64], a: u64, b: u64, acc: bool);
    /// O(64×`2·ON`) += P·V, P from registers, V N-major in shared memory (`ON` = 32 or 64).
    ///
    /// # Safety
    /// As [`wgmma::mma_rs_n128_bf16`].
    unsafe fn pv<const ON: usize>(o: &mut [f32; ON], a: [u32; 4], b: u64);
}

macro_rules! wgmma_elem {
    ($e:ty, $ss:ident, $rs128:ident, $rs64:ident) => {
        impl WgmmaElem for $e {
            #[inline(always)]
            unsafe fn scores(d: &mut [f32; 64], a: u64, b: u64, acc: bool) {
                // SAFETY: forwarded contract.
                unsafe { wgmma::$ss(d, a, b, acc) }
            }

            #[inline(always)]
            unsafe fn pv<const ON: usize>(o: &mut [f32; ON], a: [u32; 4], b: u64) {
                // The accumulator count is fixed by the head dim; the casts below are between
                // identical array types (ON is 64 or 32, checked at compile time by the branch).
                if ON == 64 {
                    // SAFETY: same type ([f32; 64]); forwarded contract.
                    unsafe { wgmma::$rs128(&mut *(o as *mut [f32; ON] as *mut [f32; 64]), a, b, true) }
                } else if ON == 32 {
                    // SAFETY: same type ([f32; 32]); forwarded contract.
                    unsafe { wgmma::$rs64(&mut *(o as *mut [f32; ON] as *mut [f32; 32]), a, b, true) }
                }
            }
        }
    };
}

wgmma_elem!(F16, mma_ss_n128_f16, mma_rs_n128_f16, mma_rs_n64_f16);
wgmma_elem!(Bf16, mma_ss_n128_bf16, mma_rs_n128_bf16, mma_rs_n64_bf16);

/// Issues S = Q·Kᵀ (k-step kk reads values 16kk .. of column block kk/4: 32 bytes per step
/// inside a row).
///
/// # Safety
/// Warpgroup-convergent, between `wgmma::fence` and `commit_group`; Q and K in place.
#[inline(always)]
pub(crate) unsafe fn issue_scores<E: WgmmaElem, const KS: usize>(
    s: &mut RegTile<f32, 16>,
    q_wg: u32,
    k: u32,
) {
    // One descriptor each, advanced by compile-time offsets (an add per product instead of
    // rebuilding the descriptor from the address).
    let (a0, b0) = (wgmma::desc_k_major(q_wg), wgmma::desc_k_major(k));
    for kk in 0..KS as u32 {
        let step = (kk % 4) * 32;
        let a = wgmma::desc_advance(a0, (kk / 4) * ROWS * ROW_BYTES + step);
        let b = wgmma::desc_advance(b0, (kk / 4) * TILE * ROW_BYTES + step);
        // SAFETY: per the caller's contract.
        unsafe { E::scores(as_flat(s), a, b, kk > 0) };
    }
}

/// Issues O += P·V (k-step ks: keys 16ks .. 16ks + 16, two 8-row groups of the V tile).
///
/// # Safety
/// Warpgroup-convergent, between `wgmma::fence` and `commit_group`; V in place.
#[inline(always)]
pub(crate) unsafe fn issue_pv<E: WgmmaElem, const ON: usize>(
    o: &mut [f32; ON],
    pa: &[[u32; 4]; 8],
    v: u32,
) {
    let b0 = wgmma::desc_mn_major(v, TILE * ROW_BYTES);
    for (ks, a) in pa.iter().enumerate() {
        let b = wgmma::desc_advance(b0, ks as u32 * 2 * GROUP_BYTES);
        // SAFETY: per the caller's contract.
        unsafe { E::pv::<ON>(o, *a, b) };
    }
}

/// The score tile as the flat accumulator array `wgmma` writes (register `4·nt + e`).
#[inline(always)]
pub(crate) fn as_flat(s: &mut RegTile<f32, 16>) -> &mut [f32; 64] {
    // SAFETY: RegTile is a transparent [[f32; 4]; 16], which has the same size, alignment
    // and element order as [f32; 64].
    unsafe { &mut *(s as *mut RegTile<f32, 16> as *mut [f32; 64]) }
}

/// The `extern "ptx-kernel"` entries of a Hopper prefill body (`$body`: the calling kernel
/// module's `prefill`), one per K/V layout, dtype, head dim and K/V load path
/// (`cp_async`, or `tma`: ragged only). All take the tensor-map block; `cp_async` entries
/// ignore it. The two paths are separate entries, not a flag: one entry holding both kept
/// more state alive into the 40-register producer, which spilled (ptxas).
macro_rules! hopper_entries {
    (@maps $name:ident, cp_async) => { crate::attn::hopper::ring::NoMaps };
    // The tensor maps stay in parameter space (TMA reads them there, by address: see
    // `arch::tma`).
    (@maps $name:ident, tma) => {
        crate::attn::hopper::ring::ParamMaps(|| crate::arch::tma::param_addr!($name, 1))
    };
    ($body:ident, $what:literal;
     $($name:ident => $r:ty, $e:ty, $d:literal, $load:ident;)*) => {$(
        #[doc = concat!("Entry point: ", $what, " (wgmma) prefill, ", stringify!($r), " K/V ",
                        "loaded with ", stringify!($load), ", ", stringify!($e), ", D = ", $d,
                        ".")]
        ///
        /// # Safety
        /// See the generic body's launch contract; `tma` entries need `maps` encoded for the
        /// launch's K and V (`abi::KvTensorMaps`).
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(
            p: PrefillParams,
            _maps: crate::abi::KvTensorMaps,
        ) {
            let m = crate::attn::hopper::hopper_entries!(@maps $name, $load);
            use crate::attn::logits::ScaleSoftCap;
            use crate::attn::mask::CausalWindow;
            use crate::attn::traits::{Dim, HeadDim};
            const ON: usize = <Dim<$d> as HeadDim>::WG_ON;
            const KS: usize = <Dim<$d> as HeadDim>::KS;
            // One body per softmax mode (see `attn::hopper::step`), chosen once per launch:
            // `Logits::folds` of the launch's transform (written out on the parameters: read
            // through a copy of the transform, the producer's registers came out differently).
            // SAFETY: forwarded launch contract.
            unsafe {
                if p.logit.soft_cap == 0 && p.logit.pre > 0.0 {
                    $body::<$r, $e, CausalWindow, ScaleSoftCap, $d, ON, KS, true, _>(&p, m)
                } else {
                    $body::<$r, $e, CausalWindow, ScaleSoftCap, $d, ON, KS, false, _>(&p, m)
                }
            }
        }
    )*};
}
pub(crate) use hopper_entries;
