//! Custom attention masks for prefill, in FlashInfer's packed layout (`packed_custom_mask` with
//! `mask_indptr`): per request a row-major `[qo_len, kv_len]` boolean matrix (`true`: the query
//! attends the key), packed 8 per byte with bit `i` of a byte the matrix entry `8·byte + i`
//! (numpy's `packbits(..., bitorder="little")`), each request's bits starting on a byte of its
//! own. The mask combines with the op's causal flag and window: a key is attended when all
//! three allow it.
//!
//! [`segment_packbits`] packs a flat boolean mask cut into requests (FlashInfer's
//! `segment_packbits`); [`PackedMask::check`] is the one validation of a mask against a batch.
use crate::checked;
use crate::error::{Error, Result};
use crate::validate;

/// A packed custom mask of a batch: request `b`'s bits are bytes
/// `bits[indptr[b] .. indptr[b + 1]]`, `⌈qo_len·kv_len / 8⌉` of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackedMask {
    /// The packed bits of every request, request after request.
    pub bits: Vec<u8>,
    /// `[batch + 1]` byte offsets of each request's bits.
    pub indptr: Vec<i32>,
}

/// Packs `mask` 8 entries per byte, little-endian bit order (entry `8j + i` is bit `i` of
/// byte `j`); the last byte's unused bits are 0.
pub fn packbits(mask: &[bool]) -> Vec<u8> {
    mask.chunks(8)
        .map(|c| {
            c.iter()
                .enumerate()
                .fold(0u8, |b, (i, &x)| b | ((x as u8) << i))
        })
        .collect()
}

/// Packs each segment `mask[indptr[b] .. indptr[b + 1]]` (a request's row-major
/// `[qo_len, kv_len]` matrix) on its own bytes, FlashInfer's `segment_packbits` with little-endian
/// bit order. Errors: `indptr` empty, not starting at 0, decreasing or past the mask.
pub fn segment_packbits(mask: &[bool], indptr: &[i32]) -> Result<PackedMask> {
    const OP: &str = "segment_packbits";
    if indptr.is_empty() {
        return Err(Error::invalid(OP, "indptr", "needs at least one entry"));
    }
    validate::indptr(OP, "indptr", indptr, Some(mask.len()))?;
    let mut out = PackedMask {
        bits: checked::with_capacity(OP, "packed bits", mask.len().div_ceil(8) + indptr.len())?,
        indptr: checked::with_capacity(OP, "indptr", indptr.len())?,
    };
    out.indptr.push(0);
    for w in indptr.windows(2) {
        out.bits
            .extend(packbits(&mask[w[0] as usize..w[1] as usize]));
        out.indptr
            .push(checked::to_i32(OP, "packed bytes", out.bits.len())?);
    }
    Ok(out)
}

impl PackedMask {
    /// A mask of one request.
    pub fn single(mask: &[bool]) -> Result<PackedMask> {
        let n = checked::to_i32("packed_mask", "mask entries", mask.len())?;
        segment_packbits(mask, &[0, n])
    }

    /// Checks the mask against a batch of `(qo_len, kv_len)` requests (`lens`): `batch + 1`
    /// offsets from 0, each request's byte count `⌈qo_len·kv_len / 8⌉` ([`Error::Shape`]
    /// naming the request when not), and bits holding them all.
    pub fn check(
        &self,
        op: &'static str,
        lens: impl ExactSizeIterator<Item = (usize, usize)>,
    ) -> Result<()> {
        check_layout(op, &self.indptr, self.bits.len(), lens)
    }

    /// Whether request `b`'s query token `t` may attend key `key` (`kv_len`: the request's
    /// keys); `false` for entries outside the mask.
    pub fn allows(&self, b: usize, t: usize, key: usize, kv_len: usize) -> bool {
        let Some(&start) = self.indptr.get(b) else {
            return false;
        };
        let i = (start as usize * 8).saturating_add(t.saturating_mul(kv_len).saturating_add(key));
        self.bits.get(i / 8).is_some_and(|&x| x >> (i % 8) & 1 != 0)
    }
}

/// [`PackedMask::check`] of a mask given by its offsets and its byte count (the device copy
/// keeps only these).
pub(crate) fn check_layout(
    op: &'static str,
    indptr: &[i32],
    bytes: usize,
    lens: impl ExactSizeIterator<Item = (usize, usize)>,
) -> Result<()> {
    let batch = lens.len();
    if indptr.len() != batch + 1 {
        return Err(Error::shape(
            op,
            "custom mask indptr length",
            batch + 1,
            indptr.len(),
        ));
    }
    validate::indptr(op, "custom mask indptr", indptr, Some(bytes))?;
    for (b, (q, k)) in lens.enumerate() {
        let need = checked::mul(op, "custom mask bits", q, k)?.div_ceil(8);
        let have = (indptr[b + 1] - indptr[b]) as usize;
        if have != need {
            return Err(Error::shape(
                op,
                "custom mask bytes (⌈qo_len·kv_len / 8⌉ per request)",
                format!("{need} for request {b} ({q} × {k})"),
                have,
            ));
        }
    }
    Ok(())
}

/// Bit `i` of little-endian packed `bits`.
pub(crate) fn row_bit(bits: &[u8], i: usize) -> bool {
    bits[i / 8] >> (i % 8) & 1 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_little_endian_per_segment() {
        let m = [
            true, false, false, true, true, true, true, true, true, false, true,
        ];
        assert_eq!(packbits(&m), [0b1111_1001, 0b101]);
        let p = segment_packbits(&m, &[0, 3, 11]).unwrap();
        assert_eq!(p.indptr, [0, 1, 2]);
        assert_eq!(p.bits, [0b001, 0b1011_1111]);
        assert!(p.check("t", [(1, 3), (2, 4)].into_iter()).is_ok());
        assert!(matches!(
            p.check("t", [(1, 3), (3, 4)].into_iter()),
            Err(Error::Shape { .. })
        ));
        assert!(p.allows(1, 1, 0, 4) && !p.allows(1, 1, 2, 4));
        assert!(matches!(
            segment_packbits(&m, &[0, 12]),
            Err(Error::Shape { .. })
        ));
    }
}
