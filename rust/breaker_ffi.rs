//! The circuit breaker's two fast paths that `PyO3` cannot express; the one
//! module of the crate allowed `unsafe` code.
//!
//! 1. `call(func, /, *args, **kwargs)` as a real `METH_FASTCALL | METH_KEYWORDS`
//!    method. `PyO3` gives a method with `**kwargs` the tuple/dict convention,
//!    so `breaker.call(f)` paid for an argument tuple and its parsing (about
//!    45 ns, more than the breaker itself). Here the arguments after `func` go
//!    to `func` as they came, through `PyObject_Vectorcall`, without a copy.
//!    The method is installed on `CircuitBreakerCore` at module init, so the
//!    Python subclass inherits it.
//! 2. The rejection error reused: building a fresh `CircuitBreakerOpenError`
//!    costs about a quarter of a rejection. Each breaker caches its last one
//!    and reuses it only when nobody else can see it (see [`ErrorCache`]).
//!
//! The `abi3` build keeps `PyO3`'s own `call` and builds a fresh error every
//! time (`PyObject_Vectorcall` and the exception struct are not in its API).
//! Both builds raise through [`raise_chained`], which sets `__context__` as a
//! Python `raise` does.

use pyo3::exceptions::{PyBaseException, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyString, PyType};
use pyo3::{ffi, PyTraverseError, PyVisit};

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
fn fresh_error<'py>(
    cls: &Bound<'py, PyType>,
    name: &Bound<'py, PyString>,
    retry_after: f64,
) -> PyResult<Bound<'py, PyBaseException>> {
    cls.call1((name, retry_after))?
        .cast_into::<PyBaseException>()
        .map_err(|_| PyTypeError::new_err("CircuitBreakerOpenError must be an exception class"))
}

#[cfg(not(feature = "abi3"))]
pub use fast::{install, ErrorCache};

#[cfg(feature = "abi3")]
pub use fallback::{install, ErrorCache};

#[cfg(not(feature = "abi3"))]
mod fast {
    use super::{fresh_error, set_raised, PyBaseException, PyTraverseError, PyVisit};
    use crate::circuit_breaker::CircuitBreakerCore;
    use pyo3::exceptions::PyTypeError;
    use pyo3::panic::PanicException;
    use pyo3::prelude::*;
    use pyo3::types::{PyFloat, PyString, PyTuple, PyType};
    use pyo3::{ffi, intern};
    use std::mem::ManuallyDrop;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::ptr::null_mut;
    use std::sync::atomic::{
        AtomicBool, AtomicPtr,
        Ordering::{AcqRel, Acquire, Relaxed},
    };

    /// Whether rejections may reuse their error. Off on free-threaded builds,
    /// where a reference count of 1 does not prove that no thread holds it.
    static REUSE: AtomicBool = AtomicBool::new(false);

    const CALL_DOC: &std::ffi::CStr = c"call($self, func, /, *args, **kwargs)\n--\n\n\
        Calls `func(*args, **kwargs)` through the breaker.";

    /// Installs the fast `call` on `CircuitBreakerCore` (once, at module init).
    pub fn install(module: &Bound<'_, PyModule>) -> PyResult<()> {
        let py = module.py();
        let free_threaded = py
            .import("sysconfig")?
            .call_method1("get_config_var", ("Py_GIL_DISABLED",))?
            .is_truthy()?;
        REUSE.store(!free_threaded, Relaxed);
        let ty = py.get_type::<CircuitBreakerCore>();
        // The definition must outlive the type; it is made once per process.
        let def = Box::leak(Box::new(ffi::PyMethodDef {
            ml_name: c"call".as_ptr(),
            ml_meth: ffi::PyMethodDefPointer {
                PyCFunctionFastWithKeywords: call_trampoline,
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
    unsafe extern "C" fn call_trampoline(
        slf: *mut ffi::PyObject,
        args: *const *mut ffi::PyObject,
        nargs: ffi::Py_ssize_t,
        kwnames: *mut ffi::PyObject,
    ) -> *mut ffi::PyObject {
        // SAFETY: CPython calls a method only from an attached thread.
        let py = unsafe { Python::assume_attached() };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: the arguments are those CPython passes to this convention.
            unsafe { call_body(py, slf, args, nargs, kwnames) }
        }));
        let error = match outcome {
            Ok(Ok(result)) => return result,
            Ok(Err(error)) => error,
            Err(payload) => panic_error(payload.as_ref()),
        };
        error.restore(py);
        null_mut()
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
    unsafe fn call_body(
        py: Python<'_>,
        slf: *mut ffi::PyObject,
        args: *const *mut ffi::PyObject,
        nargs: ffi::Py_ssize_t,
        kwnames: *mut ffi::PyObject,
    ) -> PyResult<*mut ffi::PyObject> {
        // SAFETY: `slf` is a valid borrowed object pointer (see above).
        let slf = unsafe { Bound::ref_from_ptr(py, &slf) };
        // The method descriptor checks the type of `self`; check again anyway (a few ns).
        let breaker = slf.cast::<CircuitBreakerCore>()?;
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

    /// One breaker's last rejection error, reused when nobody else can see it.
    ///
    /// The slot owns one strong reference (or is NULL). A rejection takes the
    /// error out of the slot; it reuses it only if that reference is the only
    /// one (no caller, handler, `__context__` or frame holds it), it has no
    /// weak reference, no `__dict__` (so no notes or attributes) and no
    /// `__cause__`. It then clears `__traceback__`, `__context__` and
    /// `__suppress_context__`, sets fresh `args`, and puts it back. Otherwise a
    /// fresh error is built and cached instead.
    pub struct ErrorCache {
        slot: AtomicPtr<ffi::PyObject>,
    }

    impl ErrorCache {
        pub fn new() -> Self {
            Self {
                slot: AtomicPtr::new(null_mut()),
            }
        }

        /// `cls(name, retry_after)`, reused when possible.
        pub fn error<'py>(
            &self,
            cls: &Bound<'py, PyType>,
            name: &Bound<'py, PyString>,
            retry_after: f64,
        ) -> PyResult<Bound<'py, PyBaseException>> {
            let py = cls.py();
            if !REUSE.load(Relaxed) {
                return fresh_error(cls, name, retry_after);
            }
            let taken = self.slot.swap(null_mut(), AcqRel);
            if !taken.is_null() {
                // SAFETY: the slot held a strong reference; it is now ours.
                let cached = unsafe { Bound::from_owned_ptr(py, taken) };
                if cached.get_type().is(cls) {
                    let args = PyTuple::new(
                        py,
                        [
                            name.as_any().clone(),
                            PyFloat::new(py, retry_after).into_any(),
                        ],
                    )?;
                    // SAFETY: `cached` is an instance of `cls`, a BaseException
                    // subclass (we built it), so it has the exception layout.
                    if unsafe { reuse(cached.as_ptr(), args) } {
                        // SAFETY: checked above: an exception instance.
                        let error = unsafe { cached.cast_into_unchecked::<PyBaseException>() };
                        self.put(&error);
                        return Ok(error);
                    }
                }
            }
            let fresh = fresh_error(cls, name, retry_after)?;
            self.put(&fresh);
            Ok(fresh)
        }

        fn put(&self, error: &Bound<'_, PyBaseException>) {
            let ptr = error.clone().into_ptr();
            if self
                .slot
                .compare_exchange(null_mut(), ptr, AcqRel, Acquire)
                .is_err()
            {
                // Another rejection refilled the slot meanwhile: keep theirs.
                // SAFETY: `ptr` is the strong reference made just above.
                drop(unsafe { Bound::from_owned_ptr(error.py(), ptr) });
            }
        }

        /// Lets the garbage collector see the cached error (its traceback can
        /// reach frames that hold the breaker).
        pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
            let ptr = self.slot.load(Acquire);
            if ptr.is_null() {
                return Ok(());
            }
            // SAFETY: the collector runs on an attached thread, and `ptr` is a
            // strong reference the slot owns. The handle borrows it: wrapped in
            // ManuallyDrop, it never touches the reference count.
            let borrowed = ManuallyDrop::new(unsafe {
                Bound::from_owned_ptr(Python::assume_attached(), ptr).unbind()
            });
            visit.call(&*borrowed)
        }

        /// Drops the cached error (`__clear__` and drop).
        pub fn clear(&self) {
            let ptr = self.slot.swap(null_mut(), AcqRel);
            if !ptr.is_null() {
                Python::attach(|py| {
                    // SAFETY: the slot's strong reference, now ours.
                    drop(unsafe { Bound::from_owned_ptr(py, ptr) });
                });
            }
        }
    }

    impl Drop for ErrorCache {
        fn drop(&mut self) {
            self.clear();
        }
    }

    /// Resets `error` for another raise if nobody else can observe it; `args`
    /// become its new `args`. Returns false (changing nothing) otherwise.
    ///
    /// # Safety
    /// `error` points to a live exception instance whose one reference the
    /// caller owns (it was just taken out of the cache), on an attached thread.
    unsafe fn reuse(error: *mut ffi::PyObject, args: Bound<'_, PyTuple>) -> bool {
        let exc = error.cast::<ffi::PyBaseExceptionObject>();
        // SAFETY: `error` is a live exception instance (see above), so its type
        // and the exception struct fields may be read.
        unsafe {
            // The weak-reference list of the instance sits at the type's
            // offset: positive for a class laid out by hand (3.9-3.11), negative
            // for one whose weakrefs CPython manages before the object header
            // (3.12+). Zero: the class takes no weak references.
            let weaklist_offset = (*ffi::Py_TYPE(error)).tp_weaklistoffset;
            let has_weakrefs = weaklist_offset != 0
                && !(*error
                    .byte_offset(weaklist_offset)
                    .cast::<*mut ffi::PyObject>())
                .is_null();
            if ffi::Py_REFCNT(error) != 1
                || has_weakrefs
                // `__notes__` and any attribute live in the `__dict__`
                // (`add_note` sets an ordinary attribute; the struct's `notes`
                // slot, 3.11+, is unused). Tested on 3.11 to 3.13.
                || !(*exc).dict.is_null()
                || !(*exc).cause.is_null()
            {
                return false;
            }
            // Detach every field first, then drop the old values: dropping a
            // traceback can run arbitrary code (finalizers of its frames).
            let old_args = std::mem::replace(&mut (*exc).args, args.into_ptr());
            let old_traceback = std::mem::replace(&mut (*exc).traceback, null_mut());
            let old_context = std::mem::replace(&mut (*exc).context, null_mut());
            // A C `char` (one byte; pyo3-ffi declares it as a Rust `char`).
            std::ptr::addr_of_mut!((*exc).suppress_context)
                .cast::<u8>()
                .write(0);
            ffi::Py_XDECREF(old_args);
            ffi::Py_XDECREF(old_traceback);
            ffi::Py_XDECREF(old_context);
        }
        true
    }
}

#[cfg(feature = "abi3")]
mod fallback {
    use super::{PyBaseException, PyString, PyTraverseError, PyType, PyVisit};
    use pyo3::prelude::*;

    /// The `abi3` build keeps `PyO3`'s `call`: nothing to install.
    #[allow(clippy::unnecessary_wraps)]
    pub fn install(_module: &Bound<'_, PyModule>) -> PyResult<()> {
        Ok(())
    }

    /// The `abi3` build cannot read the exception struct: a fresh error every time.
    pub struct ErrorCache;

    impl ErrorCache {
        pub fn new() -> Self {
            Self
        }

        #[allow(clippy::unused_self)]
        pub fn error<'py>(
            &self,
            cls: &Bound<'py, PyType>,
            name: &Bound<'py, PyString>,
            retry_after: f64,
        ) -> PyResult<Bound<'py, PyBaseException>> {
            super::fresh_error(cls, name, retry_after)
        }

        #[allow(clippy::unused_self, clippy::unnecessary_wraps)]
        pub fn traverse(&self, _visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
            Ok(())
        }

        #[allow(clippy::unused_self)]
        pub fn clear(&self) {}
    }
}
