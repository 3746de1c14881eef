//! Embedding ferrinfer in another CUDA program (PyTorch, a serving engine): one [`Gpu`] per
//! device over the device's *primary* context — the one the CUDA runtime, and so torch, uses —
//! with the kernel module loaded once per process and device, and handles that launch on a
//! stream the caller owns.
//!
//! Why the primary context: device pointers from torch belong to it, and a kernel launched in
//! another context could not read them. Why load once: loading the module (a cubin, or PTX
//! through the JIT) costs milliseconds to seconds, and every handle of the context can share it.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{sys, CudaStream};

use super::context::{Discovery, Gpu};
use crate::error::{Error, Result};

/// The process's primary-context handles, by device ordinal.
fn registry() -> &'static Mutex<HashMap<usize, Gpu>> {
    static PRIMARY: OnceLock<Mutex<HashMap<usize, Gpu>>> = OnceLock::new();
    PRIMARY.get_or_init(|| Mutex::new(HashMap::new()))
}

impl Gpu {
    /// The handle of device `ordinal`'s primary context, launching on that context's default
    /// (legacy NULL) stream. The first call per device retains the primary context and loads
    /// the kernels; later calls return the same handle (same context id: buffers, ops and plans
    /// are interchangeable between them). "No GPU" is [`Error::NoGpu`].
    pub fn primary(ordinal: usize) -> Result<Gpu> {
        let mut map = registry()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(g) = map.get(&ordinal) {
            return Ok(g.clone());
        }
        // `discover` goes through `CudaContext::new`, which retains the primary context.
        let gpu = match Gpu::discover(ordinal)? {
            Discovery::Found(g) => g,
            Discovery::NotFound(why) => return Err(Error::NoGpu(why)),
        };
        map.insert(ordinal, gpu.clone());
        Ok(gpu)
    }

    /// A handle of the same context and module that launches on the caller's stream
    /// `stream` (e.g. `torch.cuda.current_stream().cuda_stream`). Ops, plans and buffers made
    /// with `self` work with the new handle; what runs through it is ordered with the caller's
    /// own work on that stream, and ferrinfer never synchronises it.
    ///
    /// Cheap (one small allocation): make one per call if the caller's current stream changes.
    ///
    /// # Safety
    /// `stream` must be a live stream of this handle's context (or null, the legacy default
    /// stream) and must outlive the returned handle and everything that retains it. Buffers
    /// allocated through the returned handle are freed on `stream` when dropped, so they must
    /// not outlive it either; an op that runs on borrowed streams should use caller-provided
    /// memory only (e.g. [`crate::ops::BatchDecode::plan_in_workspace`]).
    pub unsafe fn on_borrowed_stream(&self, stream: sys::CUstream) -> Gpu {
        // SAFETY: forwarded to the caller (a stream of this context that outlives the handle).
        let stream = unsafe { self.context().wrap_borrowed_stream(stream) };
        self.with_stream(stream)
    }

    /// A handle of the same context and module that launches on `stream`, a cudarc stream of
    /// this handle's context that another library owns (candle's `CudaDevice::cuda_stream()`).
    /// The safe counterpart of [`Gpu::on_borrowed_stream`]: the `Arc` keeps the stream alive as
    /// long as the handle, and a stream of another context is refused.
    pub fn on_stream(&self, stream: Arc<CudaStream>) -> Result<Gpu> {
        if !Arc::ptr_eq(stream.context(), self.context()) {
            return Err(Error::WrongContext { op: "on_stream" });
        }
        Ok(self.with_stream(stream))
    }

    /// Whether `other` is a handle of the same context and module (any stream).
    pub fn same_context(&self, other: &Gpu) -> bool {
        self.ctx_id() == other.ctx_id()
    }

    /// `Err(WrongContext)` unless `other` shares this handle's context.
    pub(crate) fn check_same(&self, op: &'static str, other: &Gpu) -> Result<()> {
        if !self.same_context(other) {
            return Err(Error::WrongContext { op });
        }
        Ok(())
    }
}
