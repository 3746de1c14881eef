//! Pinned host staging for index uploads: the planner writes a step's index arrays into
//! page-locked memory and the copy to the device is truly asynchronous (a pageable copy blocks
//! the host while the driver stages it). Reuse waits on an event recorded after the last copy.
use cudarc::driver::{CudaEvent, PinnedHostSlice};

use super::{DeviceBuffer, DeviceSpan, Gpu};
use crate::error::{Error, Result};

/// A reusable pinned upload buffer of `i32`.
pub struct PinnedStaging {
    buf: PinnedHostSlice<i32>,
    done: CudaEvent,
}

impl std::fmt::Debug for PinnedStaging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PinnedStaging[{}]", self.buf.len())
    }
}

impl Gpu {
    /// Uploads `host` into the front of `dst` through the pinned `staging` buffer (grown as
    /// needed): waits only for this buffer's previous copy, then enqueues an async copy.
    pub(crate) fn upload_pinned(
        &self,
        staging: &mut Option<PinnedStaging>,
        host: &[i32],
        dst: &mut DeviceBuffer<i32>,
    ) -> Result<()> {
        self.check_buffer("upload", dst)?;
        // SAFETY: `dst` is a live buffer of this context, exclusively borrowed for the upload.
        unsafe { self.upload_pinned_to(staging, host, dst.span()) }
    }

    /// As [`Gpu::upload_pinned`], into a span (a plan's region of a caller's workspace).
    ///
    /// # Safety
    /// `dst` must be live device memory of this context that nothing else writes while the
    /// copy is queued.
    pub(crate) unsafe fn upload_pinned_to(
        &self,
        staging: &mut Option<PinnedStaging>,
        host: &[i32],
        dst: DeviceSpan<i32>,
    ) -> Result<()> {
        if host.is_empty() {
            return Ok(());
        }
        self.pinned_for(staging, host.len())?[..host.len()].copy_from_slice(host);
        // SAFETY: the caller's contract; the staging holds `host` in its first entries.
        unsafe { self.upload_staged_to(staging, host.len(), dst) }
    }

    /// The pinned buffer of `staging`, grown to at least `len` entries, once its previous copy
    /// has finished: a plan writes its tables here directly, then [`Gpu::upload_staged_to`]
    /// queues the copy (one host pass over the tables instead of a vector and a second copy).
    pub(crate) fn pinned_for<'s>(
        &self,
        staging: &'s mut Option<PinnedStaging>,
        len: usize,
    ) -> Result<&'s mut [i32]> {
        self.bind()?;
        if staging.as_ref().is_none_or(|s| s.buf.len() < len) {
            // The old buffer may still feed an async copy: wait for it before it is freed.
            if let Some(old) = staging.as_ref() {
                old.done.synchronize()?;
            }
            // SAFETY: the buffer is written before any copy reads it (the caller fills it).
            let buf = unsafe {
                self.context()
                    .alloc_pinned::<i32>(len.max(1).next_power_of_two())
            }?;
            let done = self.context().new_event(None)?;
            *staging = Some(PinnedStaging { buf, done });
        }
        let Some(s) = staging.as_mut() else {
            return Err(Error::invalid("upload", "staging", "missing"));
        };
        s.done.synchronize()?;
        Ok(s.buf.as_mut_slice()?)
    }

    /// Queues the copy of the first `len` entries of `staging` (filled through
    /// [`Gpu::pinned_for`]) into the front of `dst` on the stream, and records the event the
    /// next reuse waits for.
    ///
    /// # Safety
    /// As [`Gpu::upload_pinned_to`].
    pub(crate) unsafe fn upload_staged_to(
        &self,
        staging: &mut Option<PinnedStaging>,
        len: usize,
        dst: DeviceSpan<i32>,
    ) -> Result<()> {
        self.check_span("upload", &dst)?;
        if len > dst.len() {
            return Err(Error::shape(
                "upload",
                "destination length",
                format!(">= {len}"),
                dst.len(),
            ));
        }
        if len == 0 {
            return Ok(());
        }
        let Some(s) = staging.as_mut().filter(|s| s.buf.len() >= len) else {
            return Err(Error::invalid(
                "upload",
                "staging",
                format!("fewer than {len} staged entries"),
            ));
        };
        self.bind()?;
        let pinned = s.buf.as_mut_slice()?;
        // SAFETY: `dst` holds at least `len` elements; the pinned source stays alive and
        // unmodified until `done` (recorded right after the copy) completes, which every reuse
        // waits for (`pinned_for`).
        unsafe {
            cudarc::driver::result::memcpy_htod_async(
                dst.addr(),
                &pinned[..len],
                self.stream().cu_stream(),
            )
        }?;
        s.done.record(self.stream())?;
        Ok(())
    }
}
