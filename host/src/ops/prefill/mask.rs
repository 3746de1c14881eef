//! A custom mask ([`crate::mask::PackedMask`]) on the device, as the `_mask` prefill kernels
//! read it (`kernels-gpu/src/attn/custom_mask.rs`): one `u32` buffer holding the `batch + 1`
//! byte offsets, then the packed bits (little-endian bytes in little-endian words, so byte
//! `i` of the bits is byte `i % 4` of word `i / 4`), padded to a whole word because the kernel
//! reads aligned 32-bit words. Also the planner's tile skipping for masked plans
//! ([`narrow_items`]).
use std::collections::HashMap;

use ferrinfer_kernels::abi::PrefillItem;

use crate::checked;
use crate::error::{Error, Result};
use crate::mask::{check_layout, PackedMask};
use crate::runtime::{DeviceBuffer, Gpu};

/// Whether the `_mask` kernels are built for `head_dim` (64 and 128: at 256 the sm_80 ragged
/// form spilled).
pub(crate) fn built_for(head_dim: usize) -> bool {
    matches!(head_dim, 64 | 128)
}

/// `Err(Unsupported)` unless a custom mask can run at `head_dim`.
pub(crate) fn check_head_dim(op: &'static str, head_dim: usize) -> Result<()> {
    if built_for(head_dim) {
        return Ok(());
    }
    Err(Error::unsupported(
        op,
        "custom mask",
        format!("at head_dim {head_dim} (the masked kernels are built for 64 and 128)"),
    ))
}

/// Words the packed bits of a `bytes`-byte mask take on the device.
pub(crate) fn bits_words(bytes: usize) -> usize {
    bytes.div_ceil(4)
}

/// `bits` as the kernels read them: little-endian bytes in little-endian `u32` words, the
/// last one zero-padded.
pub(crate) fn bit_words(bits: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bits.chunks(4)
        .map(|c| c.iter().rev().fold(0u32, |w, &b| (w << 8) | b as u32))
}

/// A packed custom mask uploaded for the prefill kernels ([`DeviceMask::upload`]), as single
/// prefill takes it ([`super::SinglePrefill::run_masked`]); batch plans stage theirs into the
/// plan's own tables instead ([`super::BatchPrefill::plan_ragged_masked`]).
pub struct DeviceMask {
    buf: DeviceBuffer<u32>,
    /// The byte offsets (kept on the host to check the mask against each launch's lengths).
    indptr: Vec<i32>,
}

impl DeviceMask {
    /// Uploads `mask` (its offsets must be valid for its bits; the lengths are checked when it
    /// is used).
    pub fn upload(gpu: &Gpu, mask: &PackedMask) -> Result<Self> {
        const OP: &str = "custom_mask upload";
        if mask.indptr.is_empty() {
            return Err(Error::invalid(OP, "indptr", "needs at least one entry"));
        }
        crate::validate::indptr(OP, "indptr", &mask.indptr, Some(mask.bits.len()))?;
        let n = checked::add(OP, "words", mask.indptr.len(), bits_words(mask.bits.len()))?;
        let mut words = checked::with_capacity(OP, "words", n)?;
        words.extend(mask.indptr.iter().map(|&x| x as u32));
        words.extend(bit_words(&mask.bits));
        Ok(Self {
            buf: gpu.upload(&words)?,
            indptr: mask.indptr.clone(),
        })
    }

    /// Checks the mask against `(qo_len, kv_len)` per request (as [`PackedMask::check`]).
    pub(crate) fn check(
        &self,
        op: &'static str,
        lens: impl ExactSizeIterator<Item = (usize, usize)>,
    ) -> Result<()> {
        let bytes = self.indptr.last().copied().unwrap_or(0) as usize;
        check_layout(op, &self.indptr, bytes, lens)
    }

    /// `(bits, indptr)` device addresses for `PrefillParams::{mask, mask_indptr}`.
    pub(crate) fn addrs(&self) -> (u64, u64) {
        let at = self.buf.addr();
        (at + 4 * self.indptr.len() as u64, at)
    }

    /// The device buffer (its context is checked by the ops).
    pub(crate) fn buffer(&self) -> &DeviceBuffer<u32> {
        &self.buf
    }
}

/// Tile skipping for a masked plan: each work item's key range `[kv_begin, kv_end)` is cut to
/// the hull of the keys some row of its query tile may attend under `mask` (`tile_tokens`
/// query tokens from `item.t0` of request `item.request`; `qo_lens`/`kv_lens` per request), so
/// key tiles before the first and after the last set bit of the tile's rows are never loaded
/// or computed; a tile with no set bit keeps an empty range (its rows end empty: output 0,
/// lse −inf, as the per-element test would leave them). Fully masked tiles between set bits
/// are still computed (the kernel's per-element test hides them). `mask` was checked against
/// the lengths.
pub(crate) fn narrow_items(
    items: &mut [PrefillItem],
    mask: &PackedMask,
    qo_lens: &[usize],
    kv_lens: &[usize],
    tile_tokens: usize,
) {
    let mut hulls: HashMap<(u32, u32), Option<(usize, usize)>> = HashMap::new();
    for it in items.iter_mut() {
        let (b, t0) = (it.request as usize, it.t0 as usize);
        let hull = *hulls.entry((it.request, it.t0)).or_insert_with(|| {
            let kv = kv_lens[b];
            let rows = t0..(t0 + tile_tokens).min(qo_lens[b]);
            let start = mask.indptr[b] as usize * 8;
            rows.filter_map(|t| set_bits_hull(&mask.bits, start + t * kv, kv))
                .reduce(|(a, z), (a2, z2)| (a.min(a2), z.max(z2)))
        });
        // The intersection, kept inside the item's range (empty at its start when disjoint).
        let (b0, e0) = (it.kv_begin, it.kv_end);
        (it.kv_begin, it.kv_end) = match hull {
            Some((lo, hi)) => {
                let begin = b0.max(lo as u32).min(e0);
                (begin, e0.min(hi as u32).max(begin))
            }
            None => (b0, b0),
        };
    }
}

/// `(first, last + 1)` of the set bits among `len` bits from bit `at` of little-endian
/// `bits`, relative to `at`; `None` when none is set. Zero bytes are skipped whole.
fn set_bits_hull(bits: &[u8], at: usize, len: usize) -> Option<(usize, usize)> {
    let (mut i, end) = (at, at + len);
    let mut hull: Option<(usize, usize)> = None;
    while i < end {
        if i % 8 == 0 && i + 8 <= end && bits[i / 8] == 0 {
            i += 8;
            continue;
        }
        if bits[i / 8] >> (i % 8) & 1 != 0 {
            let k = i - at;
            hull = Some(hull.map_or((k, k + 1), |(a, _)| (a, k + 1)));
        }
        i += 1;
    }
    hull
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::segment_packbits;

    fn item(request: u32, t0: u32, kv: (u32, u32)) -> PrefillItem {
        PrefillItem {
            request,
            t0,
            kv_begin: kv.0,
            kv_end: kv.1,
            part: u32::MAX,
            chunk: 0,
            nchunks: 1,
            pad: 0,
        }
    }

    #[test]
    fn bits_pack_little_endian_into_padded_words() {
        let w: Vec<u32> = bit_words(&[1, 2, 3, 4, 5]).collect();
        assert_eq!(w, [0x0403_0201, 0x05]);
        assert_eq!(bits_words(5), 2);
        assert_eq!(bits_words(8), 2);
        assert_eq!(bits_words(0), 0);
    }

    #[test]
    fn items_shrink_to_the_hull_of_their_rows() {
        // Request 0: 4 queries × 100 keys, rows 0–1 see keys 10..20, rows 2–3 key 70 only;
        // request 1: 2 × 9, nothing set.
        let mut m = vec![false; 4 * 100 + 18];
        for t in 0..2 {
            m[t * 100 + 10..t * 100 + 20].fill(true);
        }
        m[2 * 100 + 70] = true;
        m[3 * 100 + 70] = true;
        let mask = segment_packbits(&m, &[0, 400, 418]).unwrap();
        let mut items = [
            item(0, 0, (0, 100)),
            item(0, 2, (0, 64)),
            item(0, 2, (64, 100)),
            item(1, 0, (0, 9)),
        ];
        narrow_items(&mut items, &mask, &[4, 2], &[100, 9], 2);
        let ranges: Vec<_> = items.iter().map(|i| (i.kv_begin, i.kv_end)).collect();
        assert_eq!(ranges, [(10, 20), (64, 64), (70, 71), (0, 0)]);
        assert_eq!(set_bits_hull(&mask.bits, 0, 100), Some((10, 20)));
    }
}
