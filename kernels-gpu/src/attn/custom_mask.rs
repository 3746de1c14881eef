//! The custom mask ([`CustomMask`]): FlashInfer's packed bit mask, one row-major
//! `[qo_len, kv_len]` bit matrix per request (little-endian bit order; request `b`'s bits from
//! byte `mask_indptr[b]`), combined with the causal flag and window ([`CausalWindow`]): a key
//! is visible when both allow it. Host twin: `host/src/mask.rs`.
//!
//! The visible key range is the causal/window one (the bits are not scanned for it), and every
//! tile that range covers runs the per-element test: bits are read with aligned 32-bit loads
//! (the host pads the buffer to a 4-byte multiple), one per element the causal/window mask
//! keeps — keys outside the request are never read.
use crate::abi::{PrefillItem, PrefillParams, PrefillRequest};
use crate::arch::global;
use crate::attn::mask::{CausalWindow, Mask};

/// The custom mask of a launch, bound to one request by [`Mask::bind`].
#[derive(Clone, Copy)]
pub(crate) struct CustomMask {
    inner: CausalWindow,
    /// The packed bits (`PrefillParams::mask`).
    bits: u64,
    /// Bit index of the request's entry (query 0, key 0), minus `offset · kv_len`: query
    /// position `pos`'s row starts at `row0 + pos · kv_len`.
    row0: u64,
    kv_len: u32,
}

impl Mask for CustomMask {
    #[inline(always)]
    fn new(p: &PrefillParams) -> Self {
        Self {
            inner: CausalWindow::new(p),
            bits: p.mask,
            row0: 0,
            kv_len: 0,
        }
    }

    #[inline(always)]
    fn bind(self, p: &PrefillParams, req: &PrefillRequest, item: &PrefillItem) -> Self {
        let first_byte = if p.mask_indptr == 0 {
            0
        } else {
            // SAFETY: the host uploads `batch + 1` offsets; `item.request` is a request index.
            unsafe { global::ld_u32(p.mask_indptr + 4 * item.request as u64) }
        };
        let offset = (req.kv_len - req.qo_len) as u64;
        Self {
            // Position `pos = offset + t`: row `t` starts at `8·first_byte + t·kv_len`.
            row0: (8 * first_byte as u64).wrapping_sub(offset * req.kv_len as u64),
            kv_len: req.kv_len,
            ..self
        }
    }

    #[inline(always)]
    fn visible(&self, pos_first: u32, pos_last: u32, kv_len: u32) -> (u32, u32) {
        self.inner.visible(pos_first, pos_last, kv_len)
    }

    #[inline(always)]
    fn all_from(&self, pos_last: u32) -> u32 {
        self.inner.all_from(pos_last)
    }

    #[inline(always)]
    fn tile_masked(&self, _: u32, _: u32, _: u32, _: u32, _: u32) -> bool {
        // Any key may be hidden by its bit.
        true
    }

    #[inline(always)]
    fn keep(&self, key: u32, pos: u32, kv_end: u32) -> bool {
        // The bit is read only for keys the causal/window mask keeps (`key < kv_end ≤ kv_len`,
        // `pos` a query of the request): never outside the request's matrix.
        if !self.inner.keep(key, pos, kv_end) {
            return false;
        }
        let bit = self
            .row0
            .wrapping_add(pos as u64 * self.kv_len as u64 + key as u64);
        // SAFETY: inside the request's bits (above); the buffer is 4-byte aligned and padded
        // to a 4-byte multiple (host contract).
        let word = unsafe { global::ld_u32(self.bits + (bit / 32) * 4) };
        (word >> (bit % 32)) & 1 != 0
    }
}
