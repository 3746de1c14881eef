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
        self.check_span("upload", &dst)?;
        if host.len() > dst.len() {
            return Err(Error::shape(
                "upload",
                "destination length",
                format!(">= {}", host.len()),
                dst.len(),
            ));
        }
        if host.is_empty() {
            return Ok(());
        }
        self.bind()?;
        if staging.as_ref().is_none_or(|s| s.buf.len() < host.len()) {
            // The old buffer may still feed an async copy: wait for it before it is freed.
            if let Some(old) = staging.as_ref() {
                old.done.synchronize()?;
            }
            // SAFETY: the buffer is written before any copy reads it (below).
            let buf = unsafe {
                self.context()
                    .alloc_pinned::<i32>(host.len().next_power_of_two())
            }?;
            let done = self.context().new_event(None)?;
            *staging = Some(PinnedStaging { buf, done });
        }
        let Some(s) = staging.as_mut() else {
            return Err(Error::invalid("upload", "staging", "missing"));
        };
        s.done.synchronize()?;
        let pinned = s.buf.as_mut_slice()?;
        pinned[..host.len()].copy_from_slice(host);
        // SAFETY: `dst` holds at least host.len() elements; the pinned source stays alive and
        // unmodified until `done` (recorded right after the copy) completes, which every reuse
        // waits for above.
        unsafe {
            cudarc::driver::result::memcpy_htod_async(
                dst.addr(),
                &pinned[..host.len()],
                self.stream().cu_stream(),
            )
        }?;
        s.done.record(self.stream())?;
        Ok(())
    }
}
