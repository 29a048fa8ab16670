//! Error builders the Python bindings of the cores share (behind the `python`
//! feature), so that every core words a bad argument the same way and the
//! pure-Python twins' rules (`shared._validation`) stay the one source of the
//! messages they share.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

/// `shared._validation.<name>`: the argument rules both backends share. Call
/// it off the fast path only (an argument that is not the plain expected
/// type, or is out of range), so both backends raise the same error.
pub fn validation<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    py.import("shared._validation")?.getattr(name)
}

/// The name of `value`'s type, or `?` if it cannot be read.
#[cold]
#[must_use]
pub fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map_or_else(|_| "?".to_owned(), |n| n.to_string())
}

/// `repr(value)`, or `?` if it raises.
#[cold]
#[must_use]
pub fn repr_or_placeholder(value: &Bound<'_, PyAny>) -> String {
    value
        .repr()
        .map_or_else(|_| "?".to_owned(), |r| r.to_string())
}

/// `TypeError: {name} must be {expected}, got {type}`.
#[cold]
#[must_use]
pub fn wrong_type(name: &str, expected: &str, value: &Bound<'_, PyAny>) -> PyErr {
    PyTypeError::new_err(format!(
        "{name} must be {expected}, got {}",
        type_name(value)
    ))
}

/// `ValueError: {name} must be {rule}, got {shown}`.
#[cold]
#[must_use]
pub fn out_of_range(name: &str, rule: &str, shown: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(format!("{name} must be {rule}, got {shown}"))
}
