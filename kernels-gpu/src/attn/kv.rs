//! K/V rows by layout ([`KvRows`]: packed ragged tensors, [`Ragged`], or the paged pool,
//! [`Paged`]) and the `cp.async` tile copies of the prefill ring ([`copy_tile`]) and of the
//! tensor-core decode's ring ([`TcKv`]: [`Half`] copies 16-bit K/V, [`Codes`] fp8 codes then
//! [`dequant_decode_tile`]). The Hopper
//! copy paths (`cp.async` by a producer warpgroup, TMA) are in `attn::hopper::load`.
use core::marker::PhantomData;

use crate::abi::{DecodeParams, PrefillParams};
use crate::arch::opaque::opaque_u32;
use crate::arch::{global, pipeline, shared, thread, warp};
use crate::attn::swizzle::swz;
use crate::attn::work::{ld_i32, DecodeWork};
use crate::config::decode_tc as dcfg;
use crate::config::prefill::TILE;
use crate::dtype::Elem;
use crate::math::fp8::{decode4, Fp8Format};

/// Where a request's K/V rows live: packed ragged tensors or the paged pool.
pub(crate) trait KvRows {
    /// Whether a row's address takes a dependent load (the page table). Tile copies then look
    /// each row up once, in one lane, and hand it to the lanes that copy it by shuffles, instead
    /// of a load per row and copying thread (see `attn::hopper::load::copy_kv`).
    const LOOKUP: bool;

    /// Byte addresses of K and V of key `t` of the request whose KV starts at `kv_begin`
    /// (ragged: token offset; paged: page-list offset), head `kvh`, element 0.
    ///
    /// # Safety
    /// `t` must be a key of the request; the host validated the tables.
    unsafe fn row(p: &PrefillParams, kv_begin: u32, t: u32, kvh: u32) -> (u64, u64);

    /// Bytes between the K rows and between the V rows of consecutive keys (ragged; the
    /// `LOOKUP` layouts have no fixed step). Used by the Hopper producer only (sm_90a images).
    #[cfg_attr(not(target_feature = "sm_90a"), allow(dead_code))]
    fn key_step(p: &PrefillParams) -> (u64, u64);

    /// Byte offset of key `t`'s K row from `p.k`; for the `LOOKUP` layouts also that of its V
    /// row from `p.v` (one geometry for both pools).
    ///
    /// # Safety
    /// As [`KvRows::row`].
    unsafe fn offset(p: &PrefillParams, kv_begin: u32, t: u32, kvh: u32) -> u64;
}

/// Packed (ragged) K/V: token `kv_begin + t` of `k`/`v` with their strides.
pub(crate) struct Ragged;

impl KvRows for Ragged {
    const LOOKUP: bool = false;

    #[inline(always)]
    unsafe fn row(p: &PrefillParams, kv_begin: u32, t: u32, kvh: u32) -> (u64, u64) {
        let n = (kv_begin + t) as u64;
        (
            p.k + (n * p.k_stride_n as u64 + (kvh * p.k_stride_h) as u64) * 2,
            p.v + (n * p.v_stride_n as u64 + (kvh * p.v_stride_h) as u64) * 2,
        )
    }

    #[inline(always)]
    fn key_step(p: &PrefillParams) -> (u64, u64) {
        (p.k_stride_n as u64 * 2, p.v_stride_n as u64 * 2)
    }

    #[inline(always)]
    unsafe fn offset(p: &PrefillParams, kv_begin: u32, t: u32, kvh: u32) -> u64 {
        ((kv_begin + t) as u64 * p.k_stride_n as u64 + (kvh * p.k_stride_h) as u64) * 2
    }
}

/// Paged K/V: entry `t % page_size` of page `kv_indices[kv_begin + t / page_size]`.
pub(crate) struct Paged;

impl KvRows for Paged {
    const LOOKUP: bool = true;

    #[inline(always)]
    unsafe fn row(p: &PrefillParams, kv_begin: u32, t: u32, kvh: u32) -> (u64, u64) {
        // SAFETY: forwarded contract.
        let off = unsafe { Self::offset(p, kv_begin, t, kvh) };
        (p.k + off, p.v + off)
    }

    #[inline(always)]
    fn key_step(_: &PrefillParams) -> (u64, u64) {
        (0, 0)
    }

    #[inline(always)]
    unsafe fn offset(p: &PrefillParams, kv_begin: u32, t: u32, kvh: u32) -> u64 {
        let (slot, entry) = p.page_size.divmod(t);
        // SAFETY: slot < the request's page count (host-validated tables).
        let page = unsafe { global::ld_u32(p.kv_indices + ((kv_begin + slot) as u64) * 4) } as u64;
        // The K and V pools of a cache share one geometry (`KvPool`), so one element offset
        // serves both (the host passes equal K and V strides; fewer live registers per row).
        (page * p.k_stride_page + (entry * p.k_stride_n + kvh * p.k_stride_h) as u64) * 2
    }
}

/// Issues the `cp.async` copies (one commit group) of the prefill ring's K/V keys
/// `[base, base + TILE)` (zero-filled past `end`) into stage `s`.
/// Thread `tid` copies 16-byte chunk `tid % (D/8)` of rows `tid / (D/8) + i · threads / (D/8)`;
/// `dst` is its first chunk's swizzled offset (the swizzle only depends on `row % 8`, the same
/// for all its rows), so each row costs one add.
///
/// # Safety
/// As the kernel's contract.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) unsafe fn copy_tile<R: KvRows, const D: u32>(
    p: &PrefillParams,
    threads: u32,
    kv_off: u32,
    kvh: u32,
    base: u32,
    end: u32,
    s: u32,
    tid: u32,
    dst: u32,
    smem: u32,
) {
    let chunks = D / 8;
    let step = threads / chunks;
    let k_base = smem + s * 2 * TILE * D * 2 + dst;
    let v_base = k_base + TILE * D * 2;
    let (r0, c) = (tid / chunks, tid % chunks);
    // Opaque: otherwise LLVM turns every row's global address into its own 64-bit induction
    // variable across the KV loop (two per row: up to 32 registers held for the whole loop).
    let base = opaque_u32(base);
    // Paged (`R::LOOKUP`): the warp's rows are `r0 + i·step` for its lanes' `r0`, i.e. rows
    // `32w/chunks + h + i·step` (h = lane / chunks < per_pass); lane `i·per_pass + h` looks
    // row (h, i) up, one page-table load per lane and tile, and the copying lanes take the
    // offset by a shuffle (a load per row and thread stalled the copies on the loads).
    let per_pass = 32 / chunks;
    let (w, lane) = (tid / 32, tid % 32);
    let mut own = 0u64;
    if R::LOOKUP {
        let key = base + w * per_pass + lane % per_pass + step * (lane / per_pass);
        if lane < per_pass * (TILE / step) && key < end {
            // SAFETY: a key of the request (key < end ≤ kv_len).
            own = unsafe { R::offset(p, kv_off, key, kvh) };
        }
    }
    // Opaque: the per-pass source lanes stay inside the KV loop (not 8–16 hoisted registers).
    let h = opaque_u32(lane / chunks);
    for i in 0..(TILE / step) {
        let t = base + r0 + i * step;
        let valid = t < end;
        let (mut ka, mut va) = (p.k, p.v);
        if R::LOOKUP {
            let off = warp::shfl_idx_u64(own, i * per_pass + h);
            if valid {
                ka = p.k + off + (c * 16) as u64;
                va = p.v + off + (c * 16) as u64;
            }
        } else if valid {
            // SAFETY: t is a key of the request (t < end ≤ kv_len).
            let (k, v) = unsafe { R::row(p, kv_off, t, kvh) };
            ka = k + (c * 16) as u64;
            va = v + (c * 16) as u64;
        }
        // Rows `step` apart share `row % 8` (one precomputed swizzle) when `step` is a multiple
        // of 8; otherwise (D = 256: 4 rows per pass) each row is swizzled on its own.
        let row = if step % 8 == 0 {
            i * step * D * 2
        } else {
            swz::<D>(r0 + i * step, c).wrapping_sub(dst)
        };
        // SAFETY: destinations inside the stage; sources valid rows, or not read (zero-fill).
        unsafe {
            pipeline::cp_async_cg_16_or_zero(k_base + row, ka, !valid);
            pipeline::cp_async_cg_16_or_zero(v_base + row, va, !valid);
        }
    }
    pipeline::commit_group();
}

/// How K/V reach a stage of the tensor-core decode's ring as its 16-bit swizzled tile: copied
/// as they are ([`Half`]), or copied as fp8 codes and dequantised in place ([`Codes`]).
///
/// A copy issues the `cp.async` copies of the work item's K and V keys `[begin + j·T, begin +
/// (j + 1)·T)` (`T = config::decode_tc::TILE`, zero-filled past `end`) into stage `s`, as one
/// commit group; all threads of the CTA take part, `(T · D/8) / threads` chunks each.
pub(crate) trait TcKv {
    /// Issues stage `s`'s copies of tile `j` (one commit group).
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

    /// Makes stage `s` (whose copies this thread has waited for) the 16-bit tile; every
    /// thread calls it before the barrier that publishes the stage.
    ///
    /// # Safety
    /// All threads of the CTA call it.
    unsafe fn finish<E: Elem, const D: u32>(s: u32, tid: u32, smem: u32);
}

/// 16-bit K/V: 16-byte chunks land in the swizzled layout; the copy is the tile.
pub(crate) struct Half;

impl TcKv for Half {
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
            for_decode_chunks::<D>(
                p,
                kvh,
                wk,
                j,
                s,
                tid,
                smem,
                2,
                |k_base, v_base, _, r, c, ka, va, n| {
                    pipeline::cp_async_cg_16(k_base + swz::<D>(r, c), ka, 16 * n);
                    pipeline::cp_async_cg_16(v_base + swz::<D>(r, c), va, 16 * n);
                },
            )
        };
    }

    #[inline(always)]
    unsafe fn finish<E: Elem, const D: u32>(_s: u32, _tid: u32, _smem: u32) {}
}

/// fp8 codes of format `F`: the same keys and chunks (8 codes = 8 bytes each, with
/// `cp.async.ca`), each landing unswizzled at byte `8·idx` of the stage's K and V areas (their
/// first quarter: a stage is sized for 16-bit elements); [`dequant_decode_tile`] then turns
/// them into the 16-bit swizzled tile the `ldmatrix` loop reads.
pub(crate) struct Codes<F>(PhantomData<F>);

impl<F: Fp8Format> TcKv for Codes<F> {
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
        // SAFETY: forwarded contract; destinations inside the stage (8-byte aligned), sources
        // valid or zero-byte.
        unsafe {
            for_decode_chunks::<D>(
                p,
                kvh,
                wk,
                j,
                s,
                tid,
                smem,
                1,
                |k_base, v_base, idx, _, _, ka, va, n| {
                    pipeline::cp_async_ca_8(k_base + idx * 8, ka, 8 * n);
                    pipeline::cp_async_ca_8(v_base + idx * 8, va, 8 * n);
                },
            )
        };
    }

    #[inline(always)]
    unsafe fn finish<E: Elem, const D: u32>(s: u32, tid: u32, smem: u32) {
        // SAFETY: forwarded contract.
        unsafe { dequant_decode_tile::<E, F, D>(s, tid, smem) }
    }
}

/// The chunk walk both decode tile copies share: for each of this thread's chunks `idx` (row
/// `r`, 8-element chunk `c`) of tile `j`, calls `copy(k_base, v_base, idx, r, c, k_src, v_src,
/// valid)` with the stage's K and V areas and the chunk's source addresses in pools of
/// `elem_bytes`-byte elements (`valid` 0: past the item's end, the sources are the pool bases
/// and must not be read), then commits the copies as one group.
///
/// # Safety
/// As [`TcKv::copy`]; `copy` issues copies into the stage only.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn for_decode_chunks<const D: u32>(
    p: &DecodeParams,
    kvh: u32,
    wk: &DecodeWork,
    j: u32,
    s: u32,
    tid: u32,
    smem: u32,
    elem_bytes: u64,
    copy: impl Fn(u32, u32, u32, u32, u32, u64, u64, u32),
) {
    let chunks = D / 8;
    let per_thread = dcfg::TILE * chunks / dcfg::THREADS;
    let k_base = smem + s * dcfg::stage_bytes(D);
    let v_base = k_base + dcfg::TILE * D * 2;
    for i in 0..per_thread {
        let idx = tid + i * dcfg::THREADS;
        let r = idx / chunks;
        let c = idx % chunks;
        let t = wk.begin + j * dcfg::TILE + r;
        let valid = t < wk.end;
        let (mut ka, mut va) = (p.k_pool, p.v_pool);
        if valid {
            let (slot, entry) = p.page_size.divmod(t);
            // SAFETY: t < end ≤ the request's length: its page slot exists.
            let page = unsafe { ld_i32(p.kv_indices, wk.page_base + slot) } as u64;
            ka = p.k_pool
                + (page * p.k_stride_page
                    + (entry * p.k_stride_n + kvh * p.k_stride_h + c * 8) as u64)
                    * elem_bytes;
            va = p.v_pool
                + (page * p.v_stride_page
                    + (entry * p.v_stride_n + kvh * p.v_stride_h + c * 8) as u64)
                    * elem_bytes;
        }
        copy(k_base, v_base, idx, r, c, ka, va, valid as u32);
    }
    pipeline::commit_group();
}

/// Most chunks one thread copies per stage (`TILE · D/8 / THREADS` at D ≤ 128).
const MAX_CHUNKS: usize = 8;

/// Dequantises stage `s` in place: every thread reads the codes it copied
/// ([`Codes`]' copy; its own copy group must have completed), the CTA waits until all
/// codes are read (the 16-bit tile overlaps them), then each thread writes its chunks decoded
/// to `E` (exact: every fp8 value is an f16 and a bf16) into the swizzled layout. The caller's
/// barrier then publishes them to the `ldmatrix` loop. Scales are not applied here.
///
/// # Safety
/// Every thread of the CTA calls it (barrier inside); D ≤ 128.
#[inline(always)]
pub(crate) unsafe fn dequant_decode_tile<E: Elem, F: Fp8Format, const D: u32>(
    s: u32,
    tid: u32,
    smem: u32,
) {
    let chunks = D / 8;
    let per_thread = (dcfg::TILE * chunks / dcfg::THREADS) as usize;
    let k_base = smem + s * dcfg::stage_bytes(D);
    let v_base = k_base + dcfg::TILE * D * 2;
    let mut kr = [[0u32; 2]; MAX_CHUNKS];
    let mut vr = [[0u32; 2]; MAX_CHUNKS];
    for i in 0..per_thread.min(MAX_CHUNKS) {
        let idx = tid + i as u32 * dcfg::THREADS;
        // SAFETY: this thread's own completed copies, inside the stage.
        unsafe {
            kr[i] = shared::ld_u32x2(k_base + idx * 8);
            vr[i] = shared::ld_u32x2(v_base + idx * 8);
        }
    }
    thread::sync_threads();
    let pack = |w: [u32; 2]| -> [u32; 4] {
        let (lo, hi) = (decode4::<F>(w[0]), decode4::<F>(w[1]));
        [
            E::pack2(lo[0], lo[1]),
            E::pack2(lo[2], lo[3]),
            E::pack2(hi[0], hi[1]),
            E::pack2(hi[2], hi[3]),
        ]
    };
    for i in 0..per_thread.min(MAX_CHUNKS) {
        let idx = tid + i as u32 * dcfg::THREADS;
        let (r, c) = (idx / chunks, idx % chunks);
        // SAFETY: inside the stage; every thread has read its codes (barrier above).
        unsafe {
            shared::st_u32x4(k_base + swz::<D>(r, c), pack(kr[i]));
            shared::st_u32x4(v_base + swz::<D>(r, c), pack(vr[i]));
        }
    }
}
