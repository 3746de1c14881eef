//! Custom masks as the wrappers pass them: `(packed bits, byte offsets)` — the bytes of
//! FlashInfer's `packed_custom_mask` (little-endian bit order, each request's bits on bytes of
//! their own) and its `mask_indptr`, already computed by the Python layer from the request
//! lengths. The library checks them against the lengths ([`PackedMask::check`]) before use.
use ferrinfer::mask::PackedMask;

/// The optional mask argument of the prefill functions.
pub type MaskArg = Option<(Vec<u8>, Vec<i32>)>;

/// The library's mask from the wrapper's pair.
pub fn packed((bits, indptr): (Vec<u8>, Vec<i32>)) -> PackedMask {
    PackedMask { bits, indptr }
}
