//! The GPU runner's own stream. Every launch, copy and allocation of the runner goes to one
//! non-blocking stream it creates, not to the context's legacy default stream: stream capture
//! (the CUDA graph of a decode step, [`super::graphs`]) is not permitted on the legacy stream,
//! and a non-blocking stream is also not serialised with unrelated work another library
//! enqueues on the legacy stream of the same context.
//!
//! Why not `CudaContext::new_stream`: it switches cudarc into multi-stream mode, in which every
//! buffer records an event at each use (host time in every launch of a ~300-launch step). The
//! runner's handle wraps the raw stream as a borrowed one instead ([`Gpu::on_borrowed_stream`]),
//! and this guard owns it.
use cudarc::driver::{result, sys};
use ferrinfer::Gpu;

use crate::error::{EngineError, Result};

/// Owns a non-blocking stream of a GPU's context and destroys it when dropped (after waiting
/// for its work). Everything allocated or launched on it must be dropped first: the runner
/// declares this guard as its last field (fields drop in declaration order), so its buffers'
/// stream-ordered frees are enqueued on a live stream.
pub(super) struct RunnerStream {
    raw: sys::CUstream,
    gpu: Gpu,
}

impl RunnerStream {
    /// A new non-blocking stream of `gpu`'s context, and a handle of `gpu` that launches on it.
    pub fn new(gpu: &Gpu) -> Result<(Self, Gpu)> {
        let err = |e: cudarc::driver::DriverError| EngineError::Model(format!("stream: {e}"));
        gpu.context().bind_to_thread().map_err(err)?;
        let raw = result::stream::create(result::stream::StreamKind::NonBlocking).map_err(err)?;
        // SAFETY: `raw` is a live stream of this context; this guard outlives the handle and
        // everything made with it (the runner drops them before the guard).
        let on = unsafe { gpu.on_borrowed_stream(raw) };
        Ok((
            Self {
                raw,
                gpu: gpu.clone(),
            },
            on,
        ))
    }
}

impl Drop for RunnerStream {
    fn drop(&mut self) {
        // Errors cannot be returned from drop; a failure leaves the stream to the context's
        // teardown.
        if self.gpu.context().bind_to_thread().is_ok() {
            // SAFETY: the stream is live (created in `new`, destroyed only here) and nothing
            // made on it is left (the runner's fields dropped before this guard).
            unsafe {
                let _ = result::stream::synchronize(self.raw);
                let _ = result::stream::destroy(self.raw);
            }
        }
    }
}

// SAFETY: a CUstream handle may be used from any thread of its context; the guard only
// synchronises and destroys it, once.
unsafe impl Send for RunnerStream {}
