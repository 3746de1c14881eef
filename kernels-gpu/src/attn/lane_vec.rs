//! A decode lane's vector of `VEC` K/V elements as the CUDA-core decode stages and reads it
//! ([`KvVec`]): 16 bytes of f16/bf16 ([`Half`]) or 8 bytes of fp8 codes ([`Codes`]), whole or
//! as two halves (RoPE's split pairs), and the f32 unpacking of both.
use core::marker::PhantomData;

use crate::arch::{pipeline, shared};
use crate::config::decode_rows::VEC as VEC_U32;
use crate::dtype::Elem;
use crate::math::fp8::{decode4, Fp8Format};

/// Elements per lane vector.
pub(crate) const VEC: usize = VEC_U32 as usize;

#[inline(always)]
pub(crate) fn unpack8<E: Elem>(raw: [u32; 4]) -> [f32; VEC] {
    let mut out = [0.0f32; VEC];
    for j in 0..4 {
        let (lo, hi) = E::unpack2(raw[j]);
        out[2 * j] = lo;
        out[2 * j + 1] = hi;
    }
    out
}

#[inline(always)]
pub(crate) fn pack8<E: Elem>(v: [f32; VEC]) -> [u32; 4] {
    [
        E::pack2(v[0], v[1]),
        E::pack2(v[2], v[3]),
        E::pack2(v[4], v[5]),
        E::pack2(v[6], v[7]),
    ]
}

/// How a lane's `VEC` K/V elements are stored in the pool and staged: 16 bytes of 16-bit
/// values, or 8 bytes of fp8 codes (staged into the same 16-byte slots).
pub(crate) trait KvVec {
    /// Bytes per pool element.
    const ELEM_BYTES: u64;
    /// Bytes of one lane's vector.
    const VEC_BYTES: u32;

    /// Copies `n` bytes (`VEC_BYTES`, or 0: zeros, `src` not read) of the lane's vector at
    /// `src` into the staging slot `dst`.
    ///
    /// # Safety
    /// `dst` a staging slot of the ring; `src` a readable, aligned vector when `n > 0`.
    unsafe fn stage(dst: u32, src: u64, n: u32);

    /// As [`Self::stage`] for a vector loaded as two halves (RoPE's split pairs,
    /// `attn::rope::PosEnc::halves`): `VEC/2` elements at `lo` then at `hi`, all (`valid`) or
    /// zeros.
    ///
    /// # Safety
    /// As `stage`, for both halves.
    unsafe fn stage_halves(dst: u32, lo: u64, hi: u64, valid: bool);

    /// The staged bytes of one vector.
    type Raw: Copy;

    /// Reads a staged vector.
    ///
    /// # Safety
    /// `addr` a staging slot whose copy has completed.
    unsafe fn ld(addr: u32) -> Self::Raw;

    /// The vector as f32 (fp8: the codes' values, before their scale).
    fn unpack(raw: Self::Raw) -> [f32; VEC];
}

/// 16-bit K/V of element type `E`.
pub(crate) struct Half<E>(PhantomData<E>);

impl<E: Elem> KvVec for Half<E> {
    const ELEM_BYTES: u64 = 2;
    const VEC_BYTES: u32 = 16;

    #[inline(always)]
    unsafe fn stage(dst: u32, src: u64, n: u32) {
        // SAFETY: per the caller's contract.
        unsafe { pipeline::cp_async_cg_16(dst, src, n) };
    }

    #[inline(always)]
    unsafe fn stage_halves(dst: u32, lo: u64, hi: u64, valid: bool) {
        let n = if valid { 8 } else { 0 };
        // SAFETY: per the caller's contract (halves of 4 elements are 8-byte aligned).
        unsafe {
            pipeline::cp_async_ca_8(dst, lo, n);
            pipeline::cp_async_ca_8(dst + 8, hi, n);
        }
    }

    type Raw = [u32; 4];

    #[inline(always)]
    unsafe fn ld(addr: u32) -> [u32; 4] {
        // SAFETY: per the caller's contract.
        unsafe { shared::ld_u32x4(addr) }
    }

    #[inline(always)]
    fn unpack(raw: [u32; 4]) -> [f32; VEC] {
        unpack8::<E>(raw)
    }
}

/// fp8 K/V codes of format `F`.
pub(crate) struct Codes<F>(PhantomData<F>);

impl<F: Fp8Format> KvVec for Codes<F> {
    const ELEM_BYTES: u64 = 1;
    const VEC_BYTES: u32 = 8;

    #[inline(always)]
    unsafe fn stage(dst: u32, src: u64, n: u32) {
        // SAFETY: per the caller's contract (8-byte aligned: head dims are multiples of 8).
        unsafe { pipeline::cp_async_ca_8(dst, src, n) };
    }

    #[inline(always)]
    unsafe fn stage_halves(dst: u32, lo: u64, hi: u64, valid: bool) {
        let n = if valid { 4 } else { 0 };
        // SAFETY: per the caller's contract (halves of 4 codes are 4-byte aligned).
        unsafe {
            pipeline::cp_async_ca_4(dst, lo, n);
            pipeline::cp_async_ca_4(dst + 4, hi, n);
        }
    }

    type Raw = [u32; 2];

    #[inline(always)]
    unsafe fn ld(addr: u32) -> [u32; 2] {
        // SAFETY: per the caller's contract.
        unsafe { shared::ld_u32x2(addr) }
    }

    #[inline(always)]
    fn unpack(w: [u32; 2]) -> [f32; VEC] {
        let (lo, hi) = (decode4::<F>(w[0]), decode4::<F>(w[1]));
        [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]]
    }
}
