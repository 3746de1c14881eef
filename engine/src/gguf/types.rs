//! ggml element and block formats, and their conversion to f32.
//!
//! Block layouts (ggml's `block_q4_0`, `block_q4_1`, `block_q8_0`, 32 elements each):
//! - Q4_0: f16 scale `d`, 16 bytes of nibbles; `x[j] = (lo(q[j]) - 8)·d`, `x[j+16] = (hi(q[j]) - 8)·d`
//! - Q4_1: f16 `d`, f16 minimum `m`, 16 bytes; `x[j] = lo(q[j])·d + m`, `x[j+16] = hi(q[j])·d + m`
//! - Q8_0: f16 `d`, 32 signed bytes; `x[j] = q[j]·d`
use half::{bf16, f16};

/// The formats this loader reads (others are refused with their ggml id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    /// f32.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
    /// 4-bit, symmetric, 32 per block.
    Q4_0,
    /// 4-bit with a minimum, 32 per block.
    Q4_1,
    /// 8-bit, 32 per block.
    Q8_0,
}

const QK: u64 = 32;

impl GgmlType {
    /// From ggml's type id; the id back when it is not supported.
    pub fn from_id(id: u32) -> Result<Self, u32> {
        Ok(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::Bf16,
            other => return Err(other),
        })
    }

    /// (elements per block, bytes per block).
    pub fn block(self) -> (u64, u64) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::Bf16 => (1, 2),
            Self::Q4_0 => (QK, 18),
            Self::Q4_1 => (QK, 20),
            Self::Q8_0 => (QK, 34),
        }
    }

    /// Bytes of a tensor of `elements` whose rows are `row` elements long (rows must be whole
    /// blocks, as in ggml).
    pub fn bytes_for(self, elements: u64, row: u64) -> Result<u64, String> {
        let (per, bytes) = self.block();
        if !row.is_multiple_of(per) {
            return Err(format!(
                "row of {row} elements is not whole {self:?} blocks"
            ));
        }
        (elements / per)
            .checked_mul(bytes)
            .ok_or_else(|| "byte size overflows".to_string())
    }

    /// Converts `src` (whole blocks) to f32 into `dst` (`dst.len()` elements).
    pub fn to_f32(self, src: &[u8], dst: &mut [f32]) -> Result<(), String> {
        let (per, bytes) = self.block();
        let (per, bytes) = (per as usize, bytes as usize);
        if !dst.len().is_multiple_of(per) || src.len() != dst.len() / per * bytes {
            return Err(format!(
                "{self:?}: {} bytes for {} elements",
                src.len(),
                dst.len()
            ));
        }
        for (blk, out) in src.chunks_exact(bytes).zip(dst.chunks_exact_mut(per)) {
            match self {
                Self::F32 => out[0] = f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]),
                Self::F16 => out[0] = half_at(blk),
                Self::Bf16 => out[0] = bf16::from_le_bytes([blk[0], blk[1]]).to_f32(),
                Self::Q4_0 | Self::Q4_1 | Self::Q8_0 => {
                    let mut w = [0f32; 32];
                    decode_block(self, blk, &mut w);
                    out.copy_from_slice(&w);
                }
            }
        }
        Ok(())
    }

    /// Whether the format is one of the 32-element block formats [`decode_block`] reads.
    pub fn is_block(self) -> bool {
        matches!(self, Self::Q4_0 | Self::Q4_1 | Self::Q8_0)
    }
}

#[inline(always)]
fn half_at(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// The 32 values of one Q4_0/Q4_1/Q8_0 block (`blk` holds at least the block's bytes), in f32
/// exactly as [`GgmlType::to_f32`] gives them: the packed mat-vec and the dequantised weights
/// see the same numbers. Other formats leave `w` unchanged.
#[inline(always)]
pub fn decode_block(ty: GgmlType, blk: &[u8], w: &mut [f32; 32]) {
    match ty {
        GgmlType::Q4_0 => {
            let d = half_at(blk);
            for (j, &q) in blk[2..18].iter().enumerate() {
                w[j] = ((q & 0xf) as f32 - 8.0) * d;
                w[j + 16] = ((q >> 4) as f32 - 8.0) * d;
            }
        }
        GgmlType::Q4_1 => {
            let (d, m) = (half_at(blk), half_at(&blk[2..]));
            for (j, &q) in blk[4..20].iter().enumerate() {
                w[j] = (q & 0xf) as f32 * d + m;
                w[j + 16] = (q >> 4) as f32 * d + m;
            }
        }
        GgmlType::Q8_0 => {
            let d = half_at(blk);
            for (j, &q) in blk[2..34].iter().enumerate() {
                w[j] = q as i8 as f32 * d;
            }
        }
        GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_block() {
        let mut b = Vec::new();
        b.extend_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b.extend_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        for j in 0..16u8 {
            b.push((15 - j) << 4 | j);
        }
        let mut out = [0f32; 32];
        GgmlType::Q4_1.to_f32(&b, &mut out).unwrap();
        for j in 0..16 {
            assert_eq!(out[j], j as f32 * 0.5 - 1.0);
            assert_eq!(out[j + 16], (15 - j) as f32 * 0.5 - 1.0);
        }
    }

    #[test]
    fn q8_0_and_q4_0_blocks() {
        let mut b = f16::from_f32(0.25).to_le_bytes().to_vec();
        b.extend((0..32).map(|j| (j as i8 - 16) as u8));
        let mut out = [0f32; 32];
        GgmlType::Q8_0.to_f32(&b, &mut out).unwrap();
        for (j, &x) in out.iter().enumerate() {
            assert_eq!(x, (j as f32 - 16.0) * 0.25);
        }
        let mut b = f16::from_f32(2.0).to_le_bytes().to_vec();
        b.extend((0..16u8).map(|j| j << 4 | (15 - j)));
        GgmlType::Q4_0.to_f32(&b, &mut out).unwrap();
        for j in 0..16 {
            assert_eq!(out[j], (15.0 - j as f32 - 8.0) * 2.0);
            assert_eq!(out[j + 16], (j as f32 - 8.0) * 2.0);
        }
    }

    #[test]
    fn wrong_sizes_are_errors() {
        let mut out = [0f32; 32];
        assert!(GgmlType::Q4_1.to_f32(&[0; 19], &mut out).is_err());
        assert!(GgmlType::Q8_0.to_f32(&[0; 34], &mut out[..31]).is_err());
        assert!(GgmlType::Q4_1.bytes_for(64, 48).is_err());
    }
}
