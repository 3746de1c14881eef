//! Borrowed device memory: `len` elements of `T` at a device address of a known context,
//! owned by someone else (a torch tensor, a caller's arena). The ops' launch code takes spans;
//! an owned [`DeviceBuffer`] is one span among others ([`DeviceBuffer::span`]).
//!
//! A span is plain data (`Copy`): it records where memory is and which context it belongs to,
//! and the ops check its extent and context exactly as they check a buffer's. Whether a span
//! is read or written is the argument's position in the op, as for a raw pointer in C.
use std::marker::PhantomData;

use cudarc::driver::DeviceRepr;

use super::buffer::DeviceBuffer;
use super::context::Gpu;
use crate::error::{Error, Result};

/// `len` elements of `T` at device address `addr` in one context (see the module docs).
pub struct DeviceSpan<T> {
    addr: u64,
    len: usize,
    ctx_id: usize,
    _elem: PhantomData<*const T>,
}

impl<T> Clone for DeviceSpan<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for DeviceSpan<T> {}

impl<T> std::fmt::Debug for DeviceSpan<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceSpan<{}>[{}]@{:#x}",
            std::any::type_name::<T>(),
            self.len,
            self.addr
        )
    }
}

// SAFETY: a span is an address and a length, no access to host memory; the memory it names is
// only touched by kernels ordered on a stream.
unsafe impl<T> Send for DeviceSpan<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for DeviceSpan<T> {}

impl<T> DeviceSpan<T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the span has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device address of the first element.
    pub fn addr(&self) -> u64 {
        self.addr
    }
}

impl Gpu {
    /// A span over caller-owned device memory of this handle's context: `len` elements of `T`
    /// at `addr`. Refuses a null or misaligned address for a non-empty span.
    ///
    /// # Safety
    /// `addr..addr + len·size_of::<T>()` must be device memory of this context that stays
    /// allocated (and is not freed or reused by its owner) until every op that was given the
    /// span has finished on the stream it was launched on.
    pub unsafe fn span<T: DeviceRepr>(&self, addr: u64, len: usize) -> Result<DeviceSpan<T>> {
        let align = std::mem::align_of::<T>() as u64;
        if len > 0 && (addr == 0 || !addr.is_multiple_of(align)) {
            return Err(Error::invalid(
                "span",
                "address",
                format!("{addr:#x} is null or not aligned to {align} bytes"),
            ));
        }
        if len
            .checked_mul(std::mem::size_of::<T>())
            .and_then(|b| addr.checked_add(b as u64))
            .is_none()
        {
            return Err(Error::Overflow {
                op: "span",
                what: "address + length",
            });
        }
        Ok(DeviceSpan {
            addr,
            len,
            ctx_id: self.ctx_id(),
            _elem: PhantomData,
        })
    }

    /// `Err(WrongContext)` unless `s` belongs to this handle's context.
    pub(crate) fn check_span<T>(&self, op: &'static str, s: &DeviceSpan<T>) -> Result<()> {
        if s.ctx_id != self.ctx_id() {
            return Err(Error::WrongContext { op });
        }
        Ok(())
    }
}

impl<T: DeviceRepr> DeviceBuffer<T> {
    /// The whole buffer as a span (valid while the buffer lives).
    pub fn span(&self) -> DeviceSpan<T> {
        DeviceSpan {
            addr: self.addr(),
            len: self.len(),
            ctx_id: self.ctx_id,
            _elem: PhantomData,
        }
    }
}
