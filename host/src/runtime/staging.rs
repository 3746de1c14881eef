//! Pinned host staging for index uploads: the planner writes a step's index arrays into
//! page-locked memory and the copy to the device is truly asynchronous (a pageable copy blocks
//! the host while the driver stages it). The buffers are used in turn ([`STAGING_SLOTS`]):
//! reusing one waits on the event recorded after its last copy, and with a single buffer that
//! copy is queued behind the previous step's kernels, so every plan would wait for the GPU to
//! finish the step before — the host could never run more than one step ahead.
use cudarc::driver::sys::CUstreamCaptureStatus;
use cudarc::driver::{CudaEvent, PinnedHostSlice};

use super::{DeviceBuffer, DeviceSpan, Gpu};
use crate::error::{Error, Result};

/// Pinned buffers a staging cycles through by default: a plan waits only for the copy made from
/// the same buffer this many stages before.
pub const STAGING_SLOTS: usize = 3;

/// The number of buffers used: [`STAGING_SLOTS`], or `FERRINFER_STAGING_SLOTS` (1 to 8) read once
/// from the environment; 1 is the single buffer, whose reuse waits for the previous step's
/// kernels (kept selectable so the two can be timed in one run).
pub fn staging_slots() -> usize {
    static SLOTS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *SLOTS.get_or_init(|| {
        std::env::var("FERRINFER_STAGING_SLOTS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| (1..=8).contains(n))
            .unwrap_or(STAGING_SLOTS)
    })
}

/// Reusable pinned upload buffers of `i32`, used in turn.
#[derive(Default)]
pub struct PinnedStaging {
    slots: Vec<Slot>,
    /// The slot the last [`Gpu::pinned_for`] handed out (the one the next upload copies).
    cur: usize,
}

struct Slot {
    buf: PinnedHostSlice<i32>,
    /// Recorded after the last copy out of `buf`.
    done: CudaEvent,
}

impl Drop for PinnedStaging {
    fn drop(&mut self) {
        // A buffer may still feed a queued copy: let those finish before the memory is freed.
        for s in &self.slots {
            let _ = s.done.synchronize();
        }
    }
}

impl std::fmt::Debug for PinnedStaging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lens: Vec<usize> = self.slots.iter().map(|s| s.buf.len()).collect();
        write!(f, "PinnedStaging{lens:?}")
    }
}

/// The slot the next stage uses out of `slots`: a new one while fewer than `slots` exist, else
/// the one after `cur`, cyclically.
fn next_slot(have: usize, cur: usize, slots: usize) -> usize {
    if have < slots {
        have
    } else {
        (cur + 1) % slots
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
        // A copy queued while the stream is captured would become a graph node that re-reads
        // this buffer at every replay, after later plans refilled it: silently wrong tables.
        // Refused before anything is written, so the previous plan stays usable.
        if self.stream().capture_status()? != CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE {
            return Err(Error::invalid(
                "upload",
                "stream",
                "is being captured into a CUDA graph: plan (and upload host tables) before \
                 the capture; a replay reads the device tables the last plan wrote",
            ));
        }
        let st = staging.get_or_insert_with(PinnedStaging::default);
        let next = next_slot(st.slots.len(), st.cur, staging_slots());
        let alloc = |len: usize| {
            // SAFETY: the buffer is written before any copy reads it (the caller fills it).
            unsafe {
                self.context()
                    .alloc_pinned::<i32>(len.max(1).next_power_of_two())
            }
        };
        if next == st.slots.len() {
            let buf = alloc(len)?;
            let done = self.context().new_event(None)?;
            st.slots.push(Slot { buf, done });
        } else {
            let slot = &mut st.slots[next];
            // Its previous copy must be done before the buffer is refilled (or freed).
            slot.done.synchronize()?;
            if slot.buf.len() < len {
                slot.buf = alloc(len)?;
            }
        }
        st.cur = next;
        Ok(st.slots[next].buf.as_mut_slice()?)
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
        let Some(s) = staging
            .as_mut()
            .and_then(|st| st.slots.get_mut(st.cur))
            .filter(|s| s.buf.len() >= len)
        else {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_created_then_used_in_turn() {
        let (mut have, mut cur) = (0, 0);
        let mut order = Vec::new();
        for _ in 0..8 {
            let n = next_slot(have, cur, STAGING_SLOTS);
            if n == have {
                have += 1;
            }
            cur = n;
            order.push(n);
        }
        assert_eq!(order, [0, 1, 2, 0, 1, 2, 0, 1]);
        assert_eq!(have, STAGING_SLOTS);
    }

    #[test]
    fn one_slot_is_always_reused() {
        assert_eq!(next_slot(0, 0, 1), 0);
        assert_eq!(
            (0..4).map(|_| next_slot(1, 0, 1)).collect::<Vec<_>>(),
            [0; 4]
        );
    }
}
