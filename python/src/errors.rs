//! ferrinfer's typed [`Error`] as Python exceptions: a caller's mistake (a bad shape, value or
//! page id) is a `ValueError`, a configuration ferrinfer does not implement is a
//! `NotImplementedError`, resource exhaustion a `MemoryError`, a driver failure a
//! `RuntimeError`. The message is the library's own, which names the op and the argument.
use ferrinfer::Error;
use pyo3::exceptions::{PyMemoryError, PyNotImplementedError, PyRuntimeError, PyValueError};
use pyo3::PyErr;

/// Converts a library error into the Python exception of its kind.
pub fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::Shape { .. }
        | Error::InvalidArgument { .. }
        | Error::Overflow { .. }
        | Error::PageOutOfRange { .. }
        | Error::StaleHandle { .. }
        | Error::UnknownSequence { .. }
        | Error::WrongContext { .. } => PyValueError::new_err(msg),
        Error::Unsupported { .. } | Error::UnsupportedArch { .. } => {
            PyNotImplementedError::new_err(msg)
        }
        Error::OutOfMemory { .. } | Error::OutOfPages { .. } => PyMemoryError::new_err(msg),
        // NoGpu, Driver, KernelMissing and any kind added later.
        _ => PyRuntimeError::new_err(msg),
    }
}

/// `?`-friendly conversion: `lib_call().map_err(to_py)?` reads as `lib(lib_call())?`.
pub fn lib<T>(r: ferrinfer::Result<T>) -> pyo3::PyResult<T> {
    r.map_err(to_py)
}
