//! A custom mask ([`crate::mask::PackedMask`]) on the device, as the `_mask` prefill kernels
//! read it (`kernels-gpu/src/attn/custom_mask.rs`): one `u32` buffer holding the `batch + 1`
//! byte offsets, then the packed bits (little-endian bytes in little-endian words, so byte
//! `i` of the bits is byte `i % 4` of word `i / 4`), padded to a whole word because the kernel
//! reads aligned 32-bit words.
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

/// A packed custom mask uploaded for the prefill kernels ([`DeviceMask::upload`]); batch
/// plans upload theirs ([`super::BatchPrefill::plan_ragged_masked`]), single prefill takes one
/// ([`super::SinglePrefill::run_masked`]).
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
        let n = checked::add(OP, "words", mask.indptr.len(), mask.bits.len().div_ceil(4))?;
        let mut words = checked::with_capacity(OP, "words", n)?;
        words.extend(mask.indptr.iter().map(|&x| x as u32));
        words.extend(
            mask.bits
                .chunks(4)
                .map(|c| c.iter().rev().fold(0u32, |w, &b| (w << 8) | b as u32)),
        );
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
