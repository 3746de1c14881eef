//! Errors: ferrinfer's typed errors and this crate's own input checks, both surfaced as
//! `candle_core::Error` so a candle user handles them like any other tensor error.
use candle_core::Error;

/// A ferrinfer error as a candle error (its message names the op and the argument).
pub(crate) fn wrap(e: ferrinfer::Error) -> Error {
    Error::wrap(e)
}

/// An input this crate refuses before calling ferrinfer: `op` is the public function.
pub(crate) fn invalid(op: &str, detail: impl std::fmt::Display) -> Error {
    Error::Msg(format!("ferrinfer-candle {op}: {detail}"))
}
