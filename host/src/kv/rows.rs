//! The contiguous side of an append or gather: rows in device memory (GPU pools) or host memory
//! (CPU pools).
use crate::runtime::DeviceBuffer;

/// Rows on the contiguous side of an append/gather: device memory for GPU pools, host memory
/// for CPU pools.
#[derive(Clone, Copy, Debug)]
pub enum Rows<'a, T> {
    /// Device buffer.
    Device(&'a DeviceBuffer<T>),
    /// Host slice.
    Host(&'a [T]),
}

impl<T: cudarc::driver::DeviceRepr> Rows<'_, T> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Rows::Device(b) => b.len(),
            Rows::Host(s) => s.len(),
        }
    }
}

/// Mutable rows on the contiguous side of a gather.
#[derive(Debug)]
pub enum RowsMut<'a, T> {
    /// Device buffer.
    Device(&'a mut DeviceBuffer<T>),
    /// Host slice.
    Host(&'a mut [T]),
}

impl<'a, T> RowsMut<'a, T> {
    pub(crate) fn as_rows(&self) -> Rows<'_, T> {
        match self {
            RowsMut::Device(b) => Rows::Device(b),
            RowsMut::Host(s) => Rows::Host(s),
        }
    }
}
