//! Typed device buffers.
use cudarc::driver::{CudaSlice, DevicePtr, DeviceRepr};

/// A device allocation of `len` elements of `T` (f16, bf16, f32, i32, u32, ...), owned; freed on
/// drop. Obtain from [`crate::Gpu::alloc`] / [`crate::Gpu::upload`].
pub struct DeviceBuffer<T> {
    pub(crate) slice: CudaSlice<T>,
    pub(crate) ctx_id: usize,
}

impl<T: DeviceRepr> DeviceBuffer<T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.slice.len()
    }

    /// Whether the buffer has no elements.
    pub fn is_empty(&self) -> bool {
        self.slice.len() == 0
    }

    /// The raw device address (for kernel parameter blocks).
    pub(crate) fn addr(&self) -> u64 {
        let (ptr, _sync) = self.slice.device_ptr(self.slice.stream());
        ptr
    }

    /// The underlying cudarc slice (for interop, e.g. with candle).
    pub fn as_cuda_slice(&self) -> &CudaSlice<T> {
        &self.slice
    }

    /// The underlying cudarc slice, mutably (for interop, e.g. cuBLAS outputs).
    pub fn as_cuda_slice_mut(&mut self) -> &mut CudaSlice<T> {
        &mut self.slice
    }
}

impl<T> std::fmt::Debug for DeviceBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceBuffer<{}>[{}]",
            std::any::type_name::<T>(),
            self.slice.len()
        )
    }
}
