//! TMA tensor maps for the Hopper prefill's K/V loads (`kernels-gpu/src/arch/tma.rs`).
//!
//! A tensor map is a 128-byte descriptor of a strided tensor in global memory and of the box
//! one copy moves; the driver encodes it on the host (`cuTensorMapEncodeTiled`, no GPU work)
//! and the kernel takes it by value as a launch parameter, so it is rebuilt at every launch
//! from that launch's buffers. Ragged K and V rows `[rows, heads, D]` (element strides
//! `stride_n`, `stride_h`) are described as a 3-D tensor `(D, heads, rows)`, boxes of 64
//! elements × 1 head × one K/V tile of rows, with the 128-byte swizzle that the kernels'
//! shared-memory layout (`math::wgmma_layout`) uses. Rows past `rows` read as zeros.
use cudarc::driver::result::DriverError;
use cudarc::driver::sys;
use ferrinfer_kernels::abi::TensorMap;
use ferrinfer_kernels::config::prefill_hopper as cfg;

use crate::dtype::DType;
use crate::error::Result;

/// Ragged K or V rows as the Hopper producer reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RowsGeometry {
    /// Device address of element (0, 0, 0).
    pub addr: u64,
    /// Rows the map covers (reads past them return zeros).
    pub rows: u64,
    /// KV heads.
    pub heads: u32,
    /// Head dim (64 or 128 for the Hopper tile).
    pub head_dim: u32,
    /// Elements between consecutive rows.
    pub stride_n: u64,
    /// Elements between consecutive heads of a row.
    pub stride_h: u64,
}

/// Elements of one box's innermost dimension: the 128 bytes of one swizzle row.
pub(crate) const BOX_COLS: u32 = 64;

impl RowsGeometry {
    /// Whether TMA can describe these rows: a 16-byte aligned base, strides that are multiples
    /// of 16 bytes below 2^40, extents below 2^32, and whole 64-element column blocks. (The
    /// `cp.async` path needs 16-byte rows as well; what TMA adds is the stride limit.)
    pub(crate) fn tma_ok(&self) -> bool {
        let lim = 1u64 << 32;
        self.addr.is_multiple_of(16)
            && self.rows > 0
            && self.rows < lim
            && self.heads > 0
            && self.head_dim.is_multiple_of(BOX_COLS)
            && [self.stride_n, self.stride_h]
                .iter()
                .all(|&s| (s * 2).is_multiple_of(16) && s * 2 < (1u64 << 40))
    }
}

/// Encodes the tensor map of `g` for the Hopper tile's K/V loads, or `None` when TMA cannot
/// describe the rows ([`RowsGeometry::tma_ok`], or the driver refuses them as invalid); the
/// kernel then copies with `cp.async`.
pub(crate) fn encode_rows(dtype: DType, g: &RowsGeometry) -> Result<Option<TensorMap>> {
    if !g.tma_ok() {
        return Ok(None);
    }
    let data_type = match dtype {
        DType::F16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
        DType::Bf16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
    };
    let dims: [u64; 3] = [g.head_dim as u64, g.heads as u64, g.rows];
    // Byte strides of dimensions 1 and 2 (dimension 0 is contiguous).
    let strides: [u64; 2] = [g.stride_h * 2, g.stride_n * 2];
    let boxes: [u32; 3] = [BOX_COLS, 1, cfg::TILE];
    let element_strides: [u32; 3] = [1, 1, 1];
    let mut map = sys::CUtensorMap { opaque: [0; 16] };
    // SAFETY: every pointer addresses a live local array of the rank the call is told (3, and
    // 2 strides); the driver only writes `map`. The global address is not dereferenced here.
    let rc = unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut map,
            data_type,
            3,
            g.addr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            element_strides.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    match rc {
        sys::CUresult::CUDA_SUCCESS => {}
        // A geometry the checks above passed but the driver refuses: a rule they miss. The
        // launch still works through `cp.async`, so that is what it gets.
        sys::CUresult::CUDA_ERROR_INVALID_VALUE => return Ok(None),
        _ => return Err(DriverError(rc).into()),
    }
    Ok(Some(TensorMap { opaque: map.opaque }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> RowsGeometry {
        RowsGeometry {
            addr: 0x7f00_0000_0000,
            rows: 4096,
            heads: 8,
            head_dim: 128,
            stride_n: 8 * 128,
            stride_h: 128,
        }
    }

    #[test]
    fn tma_accepts_contiguous_and_fused_rows() {
        assert!(rows().tma_ok());
        // A view into a fused QKV projection: (32 + 2·8) heads per row.
        assert!(RowsGeometry {
            stride_n: 48 * 128,
            ..rows()
        }
        .tma_ok());
        assert!(RowsGeometry {
            head_dim: 64,
            stride_n: 8 * 64,
            stride_h: 64,
            ..rows()
        }
        .tma_ok());
    }

    #[test]
    fn tma_rejects_what_it_cannot_describe() {
        for g in [
            RowsGeometry {
                addr: 0x7f00_0000_0008,
                ..rows()
            },
            RowsGeometry { rows: 0, ..rows() },
            RowsGeometry {
                rows: 1 << 32,
                ..rows()
            },
            RowsGeometry {
                stride_n: 8 * 128 + 4,
                ..rows()
            },
            RowsGeometry {
                stride_h: 132,
                ..rows()
            },
            RowsGeometry {
                stride_n: 1 << 40,
                ..rows()
            },
            RowsGeometry {
                head_dim: 96,
                ..rows()
            },
        ] {
            assert!(!g.tma_ok(), "{g:?}");
        }
    }
}
