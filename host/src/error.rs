//! The crate's one error type. Every fallible public function returns [`Result`]; nothing
//! reachable from the public API panics on bad input.

/// Errors of ferrinfer, grouped by kind.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No usable CUDA GPU: no driver library, no driver, or no device.
    #[error("no CUDA device: {0}")]
    NoGpu(String),
    /// A CUDA driver call failed.
    #[error("cuda driver error: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    /// The device's compute capability has no kernels in this build.
    #[error(
        "unsupported compute capability {major}.{minor}: ferrinfer kernels need sm_80 or newer"
    )]
    UnsupportedArch {
        /// Major version.
        major: i32,
        /// Minor version.
        minor: i32,
    },
    /// A kernel symbol is missing from the loaded module.
    #[error("kernel `{0}` not found in the loaded module")]
    KernelMissing(String),
    /// A tensor or buffer has the wrong size/shape.
    #[error("{op}: {what}: expected {expected}, got {got}")]
    Shape {
        /// The op that rejected the input.
        op: &'static str,
        /// Which argument.
        what: &'static str,
        /// What was expected.
        expected: String,
        /// What was given.
        got: String,
    },
    /// A configuration (dtype, head dim, group size, option) this op does not support.
    #[error("{op}: unsupported {what}: {detail}")]
    Unsupported {
        /// The op.
        op: &'static str,
        /// What is unsupported.
        what: &'static str,
        /// Details.
        detail: String,
    },
    /// An invalid argument value.
    #[error("{op}: invalid {what}: {detail}")]
    InvalidArgument {
        /// The op.
        op: &'static str,
        /// Which argument.
        what: &'static str,
        /// Details.
        detail: String,
    },
    /// Size arithmetic overflowed.
    #[error("{op}: size overflow computing {what}")]
    Overflow {
        /// The op.
        op: &'static str,
        /// What was being computed.
        what: &'static str,
    },
    /// An allocation of host memory failed, or its size is not representable: the request is
    /// refused instead of aborting the process.
    #[error("{op}: out of memory allocating {what} ({bytes} bytes)")]
    OutOfMemory {
        /// The op.
        op: &'static str,
        /// What was being allocated.
        what: &'static str,
        /// Bytes requested (`usize::MAX` when the size itself overflowed).
        bytes: usize,
    },
    /// A handle (append step, append plan) made by another cache or page table, or made before
    /// a later change of its tables: using it would write into pages that now belong to
    /// another sequence.
    #[error("{op}: stale or foreign {what}: {detail}")]
    StaleHandle {
        /// The op.
        op: &'static str,
        /// Which handle.
        what: &'static str,
        /// Details.
        detail: String,
    },
    /// A sequence id that the page table does not know.
    #[error("{op}: unknown sequence {id}")]
    UnknownSequence {
        /// The op.
        op: &'static str,
        /// The id.
        id: u64,
    },
    /// Not enough free pages in the pool.
    #[error("{op}: out of pages: need {needed}, {free} free")]
    OutOfPages {
        /// The op.
        op: &'static str,
        /// Pages needed.
        needed: usize,
        /// Pages free.
        free: usize,
    },
    /// A page index outside the pool.
    #[error("{op}: page index {page} out of range (pool has {num_pages} pages)")]
    PageOutOfRange {
        /// The op.
        op: &'static str,
        /// The offending index.
        page: i64,
        /// Pool size.
        num_pages: usize,
    },
    /// Buffers from another GPU context were passed.
    #[error("{op}: buffer belongs to another device context")]
    WrongContext {
        /// The op.
        op: &'static str,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for [`Error::Shape`].
    pub fn shape(
        op: &'static str,
        what: &'static str,
        expected: impl std::fmt::Display,
        got: impl std::fmt::Display,
    ) -> Self {
        Error::Shape {
            op,
            what,
            expected: expected.to_string(),
            got: got.to_string(),
        }
    }

    /// Shorthand for [`Error::Unsupported`].
    pub fn unsupported(
        op: &'static str,
        what: &'static str,
        detail: impl std::fmt::Display,
    ) -> Self {
        Error::Unsupported {
            op,
            what,
            detail: detail.to_string(),
        }
    }

    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(op: &'static str, what: &'static str, detail: impl std::fmt::Display) -> Self {
        Error::InvalidArgument {
            op,
            what,
            detail: detail.to_string(),
        }
    }
}
