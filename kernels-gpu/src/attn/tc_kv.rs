//! The tensor-core K/V of the `mma.sync` kernels (`decode_tc.rs`; the fp8 prefill of
//! `prefill.rs`): how a decode tile reaches a stage of its `cp.async` ring, and how a warp's 16
//! keys of a stage meet the query fragments, S = Q·Kᵀ, and the probabilities, O += P·V. Two
//! stored forms ([`TcKv`]):
//!
//! - [`Half`]: 16-bit K/V in the swizzled layout (`swz`), read with `ldmatrix` (K) and
//!   `ldmatrix.trans` (V) straight into mma operands.
//! - [`Codes`]: fp8 codes, half the bytes, in the code layout (`swz_codes`), read with the same
//!   16-bit `ldmatrix` instructions and converted in registers, exactly
//!   (`arch::convert::fp8x4_to_f16x2`: `cvt.f16x2.e4m3x2` on sm_89+, byte permutes for e5m2).
//!   The dims come out permuted (`math::frag_fp8`, host-tested): Q is loaded with K's
//!   permutation, and the output columns follow V's. S runs on the queries' type (K converted
//!   to bf16 for bf16 queries), P·V always on f16 (P ∈ [0, 1] keeps more bits in f16, and V
//!   needs no second conversion).
//!
//! K's scale is in the logit scale (host); V's multiplies the softmax normaliser in the kernel's
//! epilogue.
use core::marker::PhantomData;

use crate::abi::DecodeParams;
use crate::arch::convert::{fp8x4_to_f16x2, prmt};
use crate::arch::{global, ldmatrix, pipeline};
use crate::attn::swizzle::{swz, swz_codes};
use crate::attn::tile::RegTile;
use crate::attn::work::{ld_i32, DecodeWork};
use crate::config::decode_tc as cfg;
use crate::dtype::{Elem, F16};
use crate::math::fp8::Fp8Format;
use crate::math::frag::{ldmatrix_b_x4_trans_src, ldmatrix_bt_x4_src, mma_a};
use crate::math::frag_fp8::{pv_dim, qk_dim, V_PRMT};

/// A stored form of the tensor-core decode's K/V (see the module docs).
pub(crate) trait TcKv {
    /// Bytes per stored element.
    const BYTES: u32;

    /// Issues the `cp.async` copies of the work item's K and V keys `[begin + j·T, begin +
    /// (j + 1)·T)` (`T = config::decode_tc::TILE`, zero-filled past `end`) into stage `s`, as
    /// one commit group; all threads of the CTA take part.
    ///
    /// # Safety
    /// As the decode kernel's contract; `smem` is the dynamic shared memory base.
    unsafe fn copy<const D: u32>(
        p: &DecodeParams,
        kvh: u32,
        wk: &DecodeWork,
        j: u32,
        s: u32,
        tid: u32,
        smem: u32,
    );

    /// The group's queries as the `KS = D/16` A fragments of S = Q·Kᵀ (row = head of the group,
    /// zero from `group` on), column `col` of k-step `kk` taken from dim `16·kk + q_col(col)`:
    /// the order in which this form's K fragments hold the dims.
    ///
    /// # Safety
    /// Host-validated q extents.
    #[inline(always)]
    unsafe fn load_q<const KS: usize>(
        p: &DecodeParams,
        wk: &DecodeWork,
        kvh: u32,
        lane: u32,
    ) -> [[u32; 4]; KS] {
        let g = p.group;
        let mut qa = [[0u32; 4]; KS];
        for (kk, a) in qa.iter_mut().enumerate() {
            for (reg, v) in a.iter_mut().enumerate() {
                let (row, col) = mma_a(lane, reg as u32, 0);
                if row < g {
                    let off = (wk.b as u64) * (p.q_stride_b as u64)
                        + ((kvh * g + row) * p.q_stride_h + kk as u32 * 16 + Self::q_col(col))
                            as u64;
                    // SAFETY: in-range q element pair, 4-byte aligned (q_col keeps pairs).
                    *v = unsafe { global::ld_u32(p.q + off * 2) };
                }
            }
        }
        qa
    }

    /// S = Q·Kᵀ of the warp's 16 keys (stage rows `row0..row0 + 16` at `k_base`): two n-tiles.
    ///
    /// # Safety
    /// The stage is published (barrier); warp-convergent.
    unsafe fn qk<E: Elem, const D: u32, const KS: usize>(
        k_base: u32,
        row0: u32,
        lane: u32,
        qa: &[[u32; 4]; KS],
    ) -> RegTile<f32, 2>;

    /// O += P·V over the warp's 16 keys; `pv[hh][i]` is the probability of row half `hh`, keys
    /// `2tq + i` (i < 2) and `8 + 2tq + i − 2`, as in the S tile.
    ///
    /// # Safety
    /// As [`TcKv::qk`].
    unsafe fn pv<E: Elem, const D: u32, const NT: usize>(
        v_base: u32,
        row0: u32,
        lane: u32,
        pv: &[[f32; 4]; 2],
        o: &mut RegTile<f32, NT>,
    );

    /// Head dim (within a 16-dim k-step) of column `col` of Q's A fragments.
    fn q_col(col: u32) -> u32;

    /// Head dim of column `col` (0..8) of output n-tile `nt`.
    fn o_dim(nt: u32, col: u32) -> u32;

    /// Pair `i` (0..NT) of a lane's two adjacent output dims in row half `hh` of `o` (lane
    /// `tq` of its quad): `(first dim, value, value of the next dim)`, so a 16-bit output is
    /// one 32-bit store per pair.
    fn o_pair<const NT: usize>(
        o: &RegTile<f32, NT>,
        i: usize,
        hh: usize,
        tq: u32,
    ) -> (u32, f32, f32);
}

/// 16-bit K/V (the queries' type).
pub(crate) struct Half;

/// fp8 codes of format `F`.
pub(crate) struct Codes<F>(PhantomData<F>);

impl TcKv for Half {
    const BYTES: u32 = 2;

    #[inline(always)]
    unsafe fn copy<const D: u32>(
        p: &DecodeParams,
        kvh: u32,
        wk: &DecodeWork,
        j: u32,
        s: u32,
        tid: u32,
        smem: u32,
    ) {
        // SAFETY: forwarded contract; destinations inside the stage, sources valid or
        // zero-byte.
        unsafe {
            for_decode_chunks::<D, 2>(p, kvh, wk, j, s, tid, smem, |k, v, r, c, ka, va, n| {
                pipeline::cp_async_cg_16(k + swz::<D>(r, c), ka, 16 * n);
                pipeline::cp_async_cg_16(v + swz::<D>(r, c), va, 16 * n);
            })
        };
    }

    #[inline(always)]
    unsafe fn qk<E: Elem, const D: u32, const KS: usize>(
        k_base: u32,
        row0: u32,
        lane: u32,
        qa: &[[u32; 4]; KS],
    ) -> RegTile<f32, 2> {
        let mut s = RegTile::<f32, 2>::splat(0.0);
        let (bn, bk) = ldmatrix_bt_x4_src(lane);
        for (kk, a) in qa.iter().enumerate() {
            let addr = k_base + swz::<D>(row0 + bn, (kk as u32 * 16 + bk) / 8);
            // SAFETY: inside the stage; warp-convergent.
            let kb = unsafe { ldmatrix::ldmatrix_x4(addr) };
            s.mma_pair::<E>(0, *a, kb);
        }
        s
    }

    #[inline(always)]
    unsafe fn pv<E: Elem, const D: u32, const NT: usize>(
        v_base: u32,
        row0: u32,
        lane: u32,
        pv: &[[f32; 4]; 2],
        o: &mut RegTile<f32, NT>,
    ) {
        let pa = pack_p::<E>(pv);
        // Two n-tiles per ldmatrix.x4.trans.
        let (vk, vn) = ldmatrix_b_x4_trans_src(lane);
        let mut np = 0;
        while np < NT / 2 {
            let addr = v_base + swz::<D>(row0 + vk, (np as u32 * 16 + vn) / 8);
            // SAFETY: inside the stage; warp-convergent.
            let vb = unsafe { ldmatrix::ldmatrix_x4_trans(addr) };
            o.mma_pair::<E>(2 * np, pa, vb);
            np += 1;
        }
    }

    #[inline(always)]
    fn q_col(col: u32) -> u32 {
        col
    }

    #[inline(always)]
    fn o_dim(nt: u32, col: u32) -> u32 {
        8 * nt + col
    }

    #[inline(always)]
    fn o_pair<const NT: usize>(
        o: &RegTile<f32, NT>,
        i: usize,
        hh: usize,
        tq: u32,
    ) -> (u32, f32, f32) {
        (8 * i as u32 + 2 * tq, o.0[i][2 * hh], o.0[i][2 * hh + 1])
    }
}

impl<F: Fp8Format> TcKv for Codes<F> {
    const BYTES: u32 = 1;

    #[inline(always)]
    unsafe fn copy<const D: u32>(
        p: &DecodeParams,
        kvh: u32,
        wk: &DecodeWork,
        j: u32,
        s: u32,
        tid: u32,
        smem: u32,
    ) {
        // SAFETY: forwarded contract; destinations inside the stage, sources valid or
        // zero-byte.
        unsafe {
            for_decode_chunks::<D, 1>(p, kvh, wk, j, s, tid, smem, |k, v, r, c, ka, va, n| {
                pipeline::cp_async_cg_16(k + swz_codes::<D>(r, c), ka, 16 * n);
                pipeline::cp_async_cg_16(v + swz_codes::<D>(r, c), va, 16 * n);
            })
        };
    }

    #[inline(always)]
    unsafe fn qk<E: Elem, const D: u32, const KS: usize>(
        k_base: u32,
        row0: u32,
        lane: u32,
        qa: &[[u32; 4]; KS],
    ) -> RegTile<f32, 2> {
        let mut s = RegTile::<f32, 2>::splat(0.0);
        // One ldmatrix.x4 per two k-steps: register m is n-tile m / 2, chunk (k-step) m % 2.
        let (bn, bk) = ldmatrix_bt_x4_src(lane);
        let mut pair = 0;
        while pair < KS / 2 {
            let addr = k_base + swz_codes::<D>(row0 + bn, 2 * pair as u32 + bk / 8);
            // SAFETY: inside the stage; warp-convergent.
            let w = unsafe { ldmatrix::ldmatrix_x4(addr) };
            for step in 0..2 {
                let a = qa[2 * pair + step];
                for nt in 0..2 {
                    let h = fp8x4_to_f16x2::<F>(w[2 * nt + step]);
                    s.0[nt] = E::mma(a, [E::from_f16x2(h[0]), E::from_f16x2(h[1])], s.0[nt]);
                }
            }
            pair += 1;
        }
        s
    }

    #[inline(always)]
    unsafe fn pv<E: Elem, const D: u32, const NT: usize>(
        v_base: u32,
        row0: u32,
        lane: u32,
        pv: &[[f32; 4]; 2],
        o: &mut RegTile<f32, NT>,
    ) {
        let pa = pack_p::<F16>(pv);
        // One ldmatrix.x4.trans per two 16-dim chunks: registers 2h, 2h + 1 are keys 0..8 and
        // 8..16 of chunk 2·cp + h, whose n-tiles are 2c (even dims) and 2c + 1 (odd dims).
        let (vk, vn) = ldmatrix_b_x4_trans_src(lane);
        let mut cp = 0;
        while cp < NT / 4 {
            let addr = v_base + swz_codes::<D>(row0 + vk, 2 * cp as u32 + vn / 8);
            // SAFETY: inside the stage; warp-convergent.
            let w = unsafe { ldmatrix::ldmatrix_x4_trans(addr) };
            for h in 0..2 {
                let c = 2 * cp + h;
                let lo = fp8x4_to_f16x2::<F>(prmt(w[2 * h], V_PRMT));
                let hi = fp8x4_to_f16x2::<F>(prmt(w[2 * h + 1], V_PRMT));
                o.0[2 * c] = F16::mma(pa, [lo[0], hi[0]], o.0[2 * c]);
                o.0[2 * c + 1] = F16::mma(pa, [lo[1], hi[1]], o.0[2 * c + 1]);
            }
            cp += 1;
        }
    }

    #[inline(always)]
    fn q_col(col: u32) -> u32 {
        qk_dim(col)
    }

    #[inline(always)]
    fn o_dim(nt: u32, col: u32) -> u32 {
        pv_dim(nt, col)
    }

    /// n-tiles `2c` and `2c + 1` hold dims `16c + 4tq + {0, 2}` and `{1, 3}`
    /// ([`pv_dim`]): pair `2c + h` is dims `16c + 4tq + 2h` and `+ 1`, one from each.
    #[inline(always)]
    fn o_pair<const NT: usize>(
        o: &RegTile<f32, NT>,
        i: usize,
        hh: usize,
        tq: u32,
    ) -> (u32, f32, f32) {
        let (c, h) = (i / 2, i % 2);
        let dim = 16 * c as u32 + 4 * tq + 2 * h as u32;
        (dim, o.0[2 * c][2 * hh + h], o.0[2 * c + 1][2 * hh + h])
    }
}

/// P as the A operand of type `E`: reg0 (row gq, keys 2tq..), reg1 (row gq+8, ..), reg2 (row gq,
/// keys 8+2tq..), reg3 (row gq+8, 8+2tq..).
#[inline(always)]
fn pack_p<E: Elem>(pv: &[[f32; 4]; 2]) -> [u32; 4] {
    [
        E::pack2(pv[0][0], pv[0][1]),
        E::pack2(pv[1][0], pv[1][1]),
        E::pack2(pv[0][2], pv[0][3]),
        E::pack2(pv[1][2], pv[1][3]),
    ]
}

/// The chunk walk both forms share: for each of this thread's 16-byte chunks of tile `j` (row
/// `r`, chunk `c` of the row's `D·B/16`), calls `copy(k_area, v_area, r, c, k_src, v_src, valid)`
/// with stage `s`'s K and V areas and the chunk's sources in pools of `B`-byte elements (`valid`
/// 0: past the item's end, the sources are the pool bases and must not be read), then commits
/// the copies as one group.
///
/// # Safety
/// As [`TcKv::copy`]; `copy` issues copies into the stage only.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn for_decode_chunks<const D: u32, const B: u32>(
    p: &DecodeParams,
    kvh: u32,
    wk: &DecodeWork,
    j: u32,
    s: u32,
    tid: u32,
    smem: u32,
    copy: impl Fn(u32, u32, u32, u32, u64, u64, u32),
) {
    let chunks = D * B / 16;
    let per_thread = cfg::TILE * chunks / cfg::THREADS;
    let k_base = smem + s * cfg::stage_bytes(D, B);
    let v_base = k_base + cfg::TILE * D * B;
    for i in 0..per_thread {
        let idx = tid + i * cfg::THREADS;
        let r = idx / chunks;
        let c = idx % chunks;
        let t = wk.begin + j * cfg::TILE + r;
        let valid = t < wk.end;
        let (mut ka, mut va) = (p.k_pool, p.v_pool);
        if valid {
            let (slot, entry) = p.page_size.divmod(t);
            // SAFETY: t < end ≤ the request's length: its page slot exists.
            let page = unsafe { ld_i32(p.kv_indices, wk.page_base + slot) } as u64;
            let e = c * 16 / B;
            ka = p.k_pool
                + (page * p.k_stride_page + (entry * p.k_stride_n + kvh * p.k_stride_h + e) as u64)
                    * B as u64;
            va = p.v_pool
                + (page * p.v_stride_page + (entry * p.v_stride_n + kvh * p.v_stride_h + e) as u64)
                    * B as u64;
        }
        copy(k_base, v_base, r, c, ka, va, valid as u32);
    }
    pipeline::commit_group();
}
