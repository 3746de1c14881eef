//! The contiguous side of an append or gather: rows in device memory (GPU pools) or host memory
//! (CPU pools).
use crate::runtime::{DeviceBuffer, DeviceSpan};

/// Rows on the contiguous side of an append/gather: device memory for GPU pools, host memory
/// for CPU pools.
#[derive(Clone, Copy, Debug)]
pub enum Rows<'a, T> {
    /// Device buffer.
    Device(&'a DeviceBuffer<T>),
    /// Host slice.
    Host(&'a [T]),
    /// Device memory another library owns (a candle or torch tensor's elements), checked for
    /// context and extent like a buffer. Made with the unsafe [`crate::Gpu::span`], whose
    /// contract keeps the memory alive while the copy may run.
    Span(DeviceSpan<T>),
}

impl<T: cudarc::driver::DeviceRepr> Rows<'_, T> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Rows::Device(b) => b.len(),
            Rows::Host(s) => s.len(),
            Rows::Span(s) => s.len(),
        }
    }

    /// The rows as a device span (`None` for host rows).
    pub(crate) fn device_span(&self) -> Option<DeviceSpan<T>> {
        match self {
            Rows::Device(b) => Some(b.span()),
            Rows::Span(s) => Some(*s),
            Rows::Host(_) => None,
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
