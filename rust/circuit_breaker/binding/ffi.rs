//! The circuit breaker's fast paths that `PyO3` cannot express; the one
//! module of the breaker allowed `unsafe` code. It imports nothing from its
//! parent (the binding): the class it serves implements [`FastCall`].
//!
//! `call(func, /, *args, **kwargs)` as a real `METH_FASTCALL | METH_KEYWORDS`
//! method. `PyO3` gives a method with `**kwargs` the tuple/dict convention,
//! so `breaker.call(f)` paid for an argument tuple and its parsing (about
//! 45 ns, more than the breaker itself). Here the arguments after `func` go
//! to `func` as they came, through `PyObject_Vectorcall`, without a copy.
//! The method is installed on the class (`CircuitBreakerCore`) at module
//! init, so the Python subclass inherits it.
//!
//! `context_get`/`context_set`: the `with` statement's lease stack lives in a
//! `ContextVar`; the C API reads and sets it without two method calls.
//!
//! The `abi3` build keeps `PyO3`'s own `call` (`PyObject_Vectorcall` is not in
//! its API). Every rejection raises a fresh `CircuitBreakerOpenError`: a
//! reused one would keep the last rejected caller's traceback, and with it
//! that caller's frames and locals, alive until the next rejection. Both
//! builds raise through [`raise_chained`], which sets `__context__` as a
//! Python `raise` does.

use pyo3::exceptions::{PyBaseException, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::pyclass::boolean_struct::True;
use pyo3::types::{PyString, PyType};
use pyo3::PyClass;

/// What the fast `call` needs of the class it is installed on: admit, then
/// record how the call ended. The binding implements it for
/// `CircuitBreakerCore`.
// The abi3 build keeps PyO3's `call` and never calls these.
#[cfg_attr(feature = "abi3", allow(dead_code))]
pub trait FastCall: PyClass<Frozen = True> + Sync {
    /// The right to run one call, from [`FastCall::try_admit`].
    type Permit;

    /// Admits a call, or returns the (not yet raised) error that rejects it.
    fn try_admit<'py>(
        &self,
        breaker: &Bound<'py, Self>,
    ) -> PyResult<Result<Self::Permit, Bound<'py, PyBaseException>>>;

    /// Records an exception that the caller re-raises.
    fn record_error(
        &self,
        breaker: &Bound<'_, Self>,
        permit: Self::Permit,
        error: &PyErr,
    ) -> PyResult<()>;

    /// Records a returned value.
    fn record_value(
        &self,
        breaker: &Bound<'_, Self>,
        permit: Self::Permit,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()>;
}

/// Sets `error` as the raised exception as a Python `raise error` would: its
/// `__context__` becomes the exception being handled, if any (`PyErr_SetObject`
/// does that chaining; `PyO3`'s `PyErr::restore` does not).
pub fn set_raised(error: &Bound<'_, PyBaseException>) {
    // SAFETY: the thread is attached (`error` is bound to it); both pointers
    // are valid borrowed objects, and `PyErr_SetObject` takes its own references.
    unsafe { ffi::PyErr_SetObject(error.get_type().as_ptr(), error.as_ptr()) };
}

/// `error` as a `PyErr`, chained like [`set_raised`] does.
pub fn raise_chained(error: &Bound<'_, PyBaseException>) -> PyErr {
    set_raised(error);
    PyErr::fetch(error.py())
}

/// `cls(name, retry_after)`: a new `CircuitBreakerOpenError` (the class runs no Python code).
pub fn fresh_error<'py>(
    cls: &Bound<'py, PyType>,
    name: &Bound<'py, PyString>,
    retry_after: f64,
) -> PyResult<Bound<'py, PyBaseException>> {
    cls.call1((name, retry_after))?
        .cast_into::<PyBaseException>()
        .map_err(|_| PyTypeError::new_err("CircuitBreakerOpenError must be an exception class"))
}

#[cfg(not(feature = "abi3"))]
pub use fast::{context_get, context_set, install};

#[cfg(feature = "abi3")]
pub use fallback::{context_get, context_set, install};

#[cfg(not(feature = "abi3"))]
mod fast {
    use super::{set_raised, FastCall};
    use pyo3::exceptions::PyTypeError;
    use pyo3::panic::PanicException;
    use pyo3::prelude::*;
    use pyo3::{ffi, intern};
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::ptr::null_mut;

    const CALL_DOC: &std::ffi::CStr = c"call($self, func, /, *args, **kwargs)\n--\n\n\
        Calls `func(*args, **kwargs)` through the breaker.";

    /// Installs the fast `call` on `T` (once, at module init).
    pub fn install<T: FastCall>(module: &Bound<'_, PyModule>) -> PyResult<()> {
        let py = module.py();
        let ty = py.get_type::<T>();
        // The definition must outlive the type; it is made once per process.
        let def = Box::leak(Box::new(ffi::PyMethodDef {
            ml_name: c"call".as_ptr(),
            ml_meth: ffi::PyMethodDefPointer {
                PyCFunctionFastWithKeywords: call_trampoline::<T>,
            },
            ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
            ml_doc: CALL_DOC.as_ptr(),
        }));
        // SAFETY: attached thread; `ty` is a valid type object and `def` is a
        // valid definition that lives for the rest of the process. The result
        // is a new reference (or NULL with an error set), which
        // `from_owned_ptr_or_err` takes over.
        let descriptor = unsafe {
            Bound::from_owned_ptr_or_err(py, ffi::PyDescr_NewMethod(ty.as_type_ptr(), def))?
        };
        // The type is mutable (no `immutable_type`): setting the attribute also
        // invalidates the method caches.
        ty.setattr(intern!(py, "call"), descriptor)
    }

    /// `CircuitBreakerCore.call` under the `METH_FASTCALL | METH_KEYWORDS`
    /// convention: `args[..nargs]` are positional, then one value per name of
    /// `kwnames`. No panic crosses this boundary.
    unsafe extern "C" fn call_trampoline<T: FastCall>(
        slf: *mut ffi::PyObject,
        args: *const *mut ffi::PyObject,
        nargs: ffi::Py_ssize_t,
        kwnames: *mut ffi::PyObject,
    ) -> *mut ffi::PyObject {
        // SAFETY: CPython calls a method only from an attached thread.
        let py = unsafe { Python::assume_attached() };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: the arguments are those CPython passes to this convention.
            unsafe { call_body::<T>(py, slf, args, nargs, kwnames) }
        }));
        let error = match outcome {
            Ok(Ok(result)) => return result,
            Ok(Err(error)) => error,
            Err(payload) => panic_error(payload.as_ref()),
        };
        error.restore(py);
        null_mut()
    }

    /// `var.get()` for a `ContextVar` made with a default, without a method call.
    pub fn context_get<'py>(var: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = var.py();
        let mut value = null_mut();
        // SAFETY: attached thread; `var` is a valid object (the C function checks
        // that it is a ContextVar). On success `value` is a new reference, or
        // NULL when the variable has no value and no default.
        let status = unsafe { ffi::PyContextVar_Get(var.as_ptr(), null_mut(), &raw mut value) };
        if status < 0 {
            return Err(PyErr::fetch(py));
        }
        // SAFETY: a new reference (or NULL), now owned by the result.
        unsafe { Bound::from_owned_ptr_or_opt(py, value) }
            .ok_or_else(|| PyTypeError::new_err("the context variable has no default"))
    }

    /// `var.set(value)` (the reset token is dropped), without a method call.
    pub fn context_set(var: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = var.py();
        // SAFETY: attached thread; both are valid objects (the C function checks
        // the type of `var`). The result is a new reference to a token, or NULL
        // with an error set.
        let token = unsafe { ffi::PyContextVar_Set(var.as_ptr(), value.as_ptr()) };
        // SAFETY: as above; the token is owned here and dropped at once.
        unsafe { Bound::from_owned_ptr_or_err(py, token) }.map(drop)
    }

    #[cold]
    fn panic_error(payload: &(dyn std::any::Any + Send)) -> PyErr {
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("panic in CircuitBreakerCore.call");
        PanicException::new_err(message.to_owned())
    }

    /// Returns the result as a new reference, or NULL with the exception set.
    ///
    /// # Safety
    /// `slf` is a valid object; `args` holds `nargs` valid objects followed by
    /// one per entry of `kwnames` (NULL or a tuple of str), all borrowed.
    unsafe fn call_body<T: FastCall>(
        py: Python<'_>,
        slf: *mut ffi::PyObject,
        args: *const *mut ffi::PyObject,
        nargs: ffi::Py_ssize_t,
        kwnames: *mut ffi::PyObject,
    ) -> PyResult<*mut ffi::PyObject> {
        // SAFETY: `slf` is a valid borrowed object pointer (see above).
        let slf = unsafe { Bound::ref_from_ptr(py, &slf) };
        // The method descriptor checks the type of `self`; check again anyway (a few ns).
        let breaker = slf.cast::<T>()?;
        if nargs < 1 {
            return Err(PyTypeError::new_err(
                "CircuitBreakerCore.call() missing 1 required positional argument: 'func'",
            ));
        }
        let this = breaker.get();
        let permit = match this.try_admit(breaker)? {
            Ok(permit) => permit,
            Err(rejection) => {
                // Raised straight into the thread state: no `PyErr` round trip.
                set_raised(&rejection);
                return Ok(null_mut());
            }
        };
        // SAFETY: `args + 1` holds `nargs - 1` positional values then the
        // keyword values, exactly the vector `func` (`args[0]`, valid since
        // nargs >= 1) takes with `kwnames`. No PY_VECTORCALL_ARGUMENTS_OFFSET:
        // `args[0]` is not ours to overwrite. The result is a new reference,
        // or NULL with an exception set.
        let result =
            unsafe { ffi::PyObject_Vectorcall(*args, args.add(1), (nargs - 1) as usize, kwnames) };
        if result.is_null() {
            let error = PyErr::fetch(py);
            this.record_error(breaker, permit, &error)?;
            return Err(error);
        }
        // SAFETY: a new reference, now owned by `value`.
        let value = unsafe { Bound::from_owned_ptr(py, result) };
        this.record_value(breaker, permit, &value)?;
        Ok(value.into_ptr())
    }
}

#[cfg(feature = "abi3")]
mod fallback {
    use pyo3::intern;
    use pyo3::prelude::*;

    /// `var.get()`.
    pub fn context_get<'py>(var: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        var.call_method0(intern!(var.py(), "get"))
    }

    /// `var.set(value)`.
    pub fn context_set(var: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        var.call_method1(intern!(var.py(), "set"), (value,))
            .map(drop)
    }

    /// The `abi3` build keeps `PyO3`'s `call`: nothing to install.
    #[allow(clippy::unnecessary_wraps)]
    pub fn install<T: super::FastCall>(_module: &Bound<'_, PyModule>) -> PyResult<()> {
        Ok(())
    }
}
