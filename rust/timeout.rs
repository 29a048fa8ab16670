//! The timeout's native part: a deadline block's enter and exit, the
//! scheduler's look-and-raise, and the guard of critical sections, each one
//! native call that runs no Python bytecode between its check and its effect.
//!
//! Why native: `CPython` delivers an exception queued with
//! `PyThreadState_SetAsyncExc` at its next check of the eval breaker, and on
//! 3.13 that can be the first instruction of a Python `__exit__` (the thread
//! read its breaker before it waited for the GIL, so the check where the
//! scheduler saw it misses the exception). A native `__exit__` has no such
//! instruction: it first takes back an exception queued for its own thread
//! (`PyThreadState_SetAsyncExc(own id, NULL)`), then does its bookkeeping.
//! Likewise the scheduler's check that a block is still active and its raise
//! are one native call, so the target cannot move in between (GIL builds).
//!
//! The scheduler itself, the SIGALRM handler of the main thread and the
//! errors' classes live in `shared.resilience._deadlines`, which registers
//! its hooks here once (`set_hooks`). Every Python hook runs with the
//! thread's critical depth raised, so no deadline lands inside it.
//!
//! `PyO3` has no safe wrapper for `PyThreadState_SetAsyncExc`: this is the
//! one module besides `circuit_breaker::binding::ffi` and `huge_pages` allowed `unsafe` code.

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyFloat, PyTuple, PyType};
use pyo3::{ffi, intern};
use std::cell::OnceCell;
use std::os::raw::{c_long, c_ulong};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};

/// Block states, as `_deadlines` names them.
const IDLE: u8 = 0;
const ACTIVE: u8 = 1;
const FIRED: u8 = 2;

/// What `ThreadState.fire` did.
const FIRE_RAISED: u8 = 0;
const FIRE_CRITICAL: u8 = 1;
const FIRE_SHIELDED: u8 = 2;
const FIRE_GONE: u8 = 3;

/// `PyThreadState_SetAsyncExc` takes the thread id as `unsigned long` in `CPython`;
/// `pyo3-ffi` declares it `long`: the same bits.
#[allow(clippy::cast_possible_wrap)]
fn ffi_ident(ident: c_ulong) -> c_long {
    ident as c_long
}

/// A clock object with `now_ns()` that every deadline reads instead of the
/// monotonic clock (`set_deadline_clock`: the parity tests drive this core and
/// its pure twin on one `ManualClock`). Unset, a reading costs one more load.
static MANUAL_CLOCK: Mutex<Option<Py<PyAny>>> = Mutex::new(None);
static MANUAL_CLOCK_SET: AtomicBool = AtomicBool::new(false);

/// Seconds on the deadlines' timeline (`time.monotonic()`, or the manual clock).
fn now(py: Python<'_>) -> PyResult<f64> {
    if MANUAL_CLOCK_SET.load(SeqCst) {
        let clock = lock(&MANUAL_CLOCK)
            .as_ref()
            .map(|clock| clock.clone_ref(py));
        if let Some(clock) = clock {
            let ns: u64 = clock
                .bind(py)
                .call_method0(intern!(py, "now_ns"))?
                .extract()?;
            return Ok(crate::clock::ns_to_secs(ns));
        }
    }
    Ok(crate::clock::ns_to_secs(crate::clock::now_ns()))
}

/// The hooks and classes `_deadlines` registers at import.
struct Hooks {
    /// `schedule(thread_state, when)`: the scheduler looks at the thread at `when`.
    schedule: Py<PyAny>,
    /// `check_alarm_handler()`: main thread, our SIGALRM handler is not the current one.
    check_alarm_handler: Py<PyAny>,
    /// `signal.getsignal`, `SIGALRM` and our handler (`None` when signals are not used).
    getsignal: Py<PyAny>,
    sigalrm: Py<PyAny>,
    /// The public `TimeoutError` and the base of the delivered private classes.
    timeout_error: Py<PyType>,
    expired_base: Py<PyType>,
    /// `timeout_message(seconds)`.
    message: Py<PyAny>,
    /// `validate_seconds(value) -> float`: `ValueError`/`TypeError` naming `seconds`.
    validate_seconds: Py<PyAny>,
    /// The longest `seconds` accepted without calling `validate_seconds`.
    max_seconds: f64,
}

static HOOKS: PyOnceLock<Hooks> = PyOnceLock::new();
/// Our SIGALRM handler, once installed (compared by identity on each main-thread block).
static ALARM_HANDLER: Mutex<Option<Py<PyAny>>> = Mutex::new(None);

fn hooks(py: Python<'_>) -> PyResult<&Hooks> {
    HOOKS
        .get(py)
        .ok_or_else(|| PyRuntimeError::new_err("the timeout machinery is not initialised"))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic cannot leave the data half-updated in ways that matter more than a hang.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One thread's deadline bookkeeping (shared by the thread and the scheduler).
struct Thread {
    ident: c_ulong,
    is_main: bool,
    /// Critical sections the thread is in (guards, our own enter/exit and hooks).
    critical: AtomicU32,
    /// Shields the thread is in.
    shield: AtomicU32,
    /// An exception was queued for this thread and maybe not delivered yet.
    queued: AtomicBool,
    /// Main thread: deadlines are delivered by SIGALRM (set by `_deadlines`).
    signal_mode: AtomicBool,
    /// False once the thread has exited: its identifier may then name another thread.
    alive: AtomicBool,
    data: Mutex<ThreadData>,
}

struct ThreadData {
    blocks: Vec<Py<DeadlineCore>>,
    /// When the scheduler looks at this thread next (its live heap entry).
    wake_at: f64,
    /// The block whose exception was queued last.
    pending: Option<Py<DeadlineCore>>,
}

/// The calling thread's registration; marks its `Thread` dead when the thread exits.
struct Registration(Arc<Thread>);

impl Drop for Registration {
    fn drop(&mut self) {
        self.0.alive.store(false, SeqCst);
    }
}

thread_local! {
    static CURRENT: OnceCell<Registration> = const { OnceCell::new() };
}

fn current_thread(py: Python<'_>) -> PyResult<Arc<Thread>> {
    CURRENT.with(|cell| {
        if let Some(registration) = cell.get() {
            return Ok(registration.0.clone());
        }
        // SAFETY: no precondition; returns the calling thread's identifier.
        let ident = unsafe { ffi::PyThread_get_thread_ident() };
        let main_ident: c_ulong = py
            .import(intern!(py, "threading"))?
            .call_method0(intern!(py, "main_thread"))?
            .getattr(intern!(py, "ident"))?
            .extract()?;
        let thread = Arc::new(Thread {
            ident,
            is_main: ident == main_ident,
            critical: AtomicU32::new(0),
            shield: AtomicU32::new(0),
            queued: AtomicBool::new(false),
            signal_mode: AtomicBool::new(false),
            alive: AtomicBool::new(true),
            data: Mutex::new(ThreadData {
                blocks: Vec::new(),
                wake_at: f64::INFINITY,
                pending: None,
            }),
        });
        let _ = cell.set(Registration(thread.clone()));
        Ok(thread)
    })
}

/// Raises the thread's critical depth for its lifetime.
struct CriticalSection<'a>(&'a Thread);

impl<'a> CriticalSection<'a> {
    fn enter(thread: &'a Thread) -> Self {
        thread.critical.fetch_add(1, SeqCst);
        CriticalSection(thread)
    }
}

impl Drop for CriticalSection<'_> {
    fn drop(&mut self) {
        self.0.critical.fetch_sub(1, SeqCst);
    }
}

impl Thread {
    /// Takes back an exception queued for this (the calling) thread and not delivered.
    ///
    /// Returns its block; the caller decides what the fire becomes.
    fn take_back(&self, py: Python<'_>) -> Option<Py<DeadlineCore>> {
        if !self.queued.swap(false, SeqCst) {
            return None;
        }
        let pending = lock(&self.data).pending.take()?;
        if pending.get().delivered.load(SeqCst) {
            return None; // it reached the thread's code already
        }
        // SAFETY: the thread is attached (`py`); a NULL exception clears the one
        // queued for the thread `ident` (ours), and takes no reference.
        unsafe { ffi::PyThreadState_SetAsyncExc(ffi_ident(self.ident), std::ptr::null_mut()) };
        let _ = py;
        Some(pending)
    }

    fn handle(self: &Arc<Self>, py: Python<'_>) -> PyResult<Py<ThreadState>> {
        Py::new(
            py,
            ThreadState {
                thread: self.clone(),
            },
        )
    }

    /// Re-arms a block whose exception was taken back: the scheduler fires it again.
    fn rearm(self: &Arc<Self>, py: Python<'_>, block: &Py<DeadlineCore>) -> PyResult<()> {
        let core = block.get();
        if core.state.load(SeqCst) == FIRED {
            core.state.store(ACTIVE, SeqCst);
            self.schedule(py, now(py)?)?;
        }
        Ok(())
    }

    /// Asks the scheduler to look at this thread at `when` (critical depth raised).
    fn schedule(self: &Arc<Self>, py: Python<'_>, when: f64) -> PyResult<()> {
        let _critical = CriticalSection::enter(self);
        let handle = self.handle(py)?;
        hooks(py)?.schedule.call1(py, (handle, when))?;
        Ok(())
    }
}

/// A deadline block: `with DeadlineCore(seconds):` (see `TimeoutContext`).
#[pyclass(subclass, frozen, module = "shared._native")]
pub struct DeadlineCore {
    seconds: f64,
    deadline: AtomicU64,
    state: AtomicU8,
    fired: AtomicBool,
    delivered: AtomicBool,
    thread: Mutex<Option<Arc<Thread>>>,
}

impl DeadlineCore {
    fn deadline(&self) -> f64 {
        f64::from_bits(self.deadline.load(SeqCst))
    }

    fn fresh_timeout(&self, py: Python<'_>) -> PyResult<PyErr> {
        let hooks = hooks(py)?;
        let message = hooks.message.call1(py, (self.seconds,))?;
        let error = hooks.timeout_error.bind(py).call1((message,))?;
        Ok(PyErr::from_value(error))
    }
}

#[pymethods]
impl DeadlineCore {
    #[new]
    #[pyo3(signature = (seconds, *_args, **_kwargs))]
    fn new(
        seconds: &Bound<'_, PyAny>,
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let py = seconds.py();
        let hooks = hooks(py)?;
        let fast = seconds
            .cast_exact::<PyFloat>()
            .ok()
            .map(PyFloatMethods::value)
            .filter(|value| *value > 0.0 && *value <= hooks.max_seconds);
        let seconds = match fast {
            Some(value) => value,
            None => hooks.validate_seconds.call1(py, (seconds,))?.extract(py)?,
        };
        Ok(DeadlineCore {
            seconds,
            deadline: AtomicU64::new(0f64.to_bits()),
            state: AtomicU8::new(IDLE),
            fired: AtomicBool::new(false),
            delivered: AtomicBool::new(false),
            thread: Mutex::new(None),
        })
    }

    #[getter]
    fn seconds(&self) -> f64 {
        self.seconds
    }

    #[getter(deadline)]
    fn get_deadline(&self) -> f64 {
        self.deadline()
    }

    #[getter]
    fn state(&self) -> u8 {
        self.state.load(SeqCst)
    }

    #[getter]
    fn fired(&self) -> bool {
        self.fired.load(SeqCst)
    }

    #[getter]
    fn delivered(&self) -> bool {
        self.delivered.load(SeqCst)
    }

    /// Records the outcome of a block run elsewhere (an `async with`).
    fn _set_fired(&self, fired: bool) {
        self.fired.store(fired, SeqCst);
    }

    /// Called where the queued exception lands: from now on it is no longer cancellable.
    fn _mark_delivered(&self) {
        self.delivered.store(true, SeqCst);
    }

    fn __enter__(slf: &Bound<'_, Self>) -> PyResult<Py<Self>> {
        let py = slf.py();
        let core = slf.get();
        let thread = current_thread(py)?;
        let _critical = CriticalSection::enter(&thread);
        // An outer block's exception queued and not delivered would land in the hooks
        // below: taken back here, it fires again inside this block.
        if let Some(outer) = thread.take_back(py) {
            thread.rearm(py, &outer)?;
        }
        if core.state.load(SeqCst) != IDLE {
            return Err(PyRuntimeError::new_err(
                "this timeout is already active; use one object per block",
            ));
        }
        let deadline = now(py)? + core.seconds;
        core.deadline.store(deadline.to_bits(), SeqCst);
        core.fired.store(false, SeqCst);
        core.delivered.store(false, SeqCst);
        *lock(&core.thread) = Some(thread.clone());
        core.state.store(ACTIVE, SeqCst);
        let must_schedule = {
            let mut data = lock(&thread.data);
            data.blocks.push(slf.clone().unbind());
            deadline < data.wake_at
        };
        let outcome = (|| -> PyResult<()> {
            if thread.is_main {
                check_alarm_handler(py)?;
            }
            if must_schedule {
                thread.schedule(py, deadline)?;
            }
            Ok(())
        })();
        if let Err(error) = outcome {
            // A KeyboardInterrupt in a hook, say: the block was not entered.
            remove_block(&thread, core);
            core.state.store(IDLE, SeqCst);
            return Err(error);
        }
        Ok(slf.clone().unbind())
    }

    #[pyo3(signature = (_exc_type, exc, _traceback))]
    fn __exit__(
        slf: &Bound<'_, Self>,
        _exc_type: &Bound<'_, PyAny>,
        exc: &Bound<'_, PyAny>,
        _traceback: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let py = slf.py();
        let core = slf.get();
        let Some(thread) = lock(&core.thread).clone() else {
            return Err(PyRuntimeError::new_err("__exit__ without __enter__"));
        };
        let _critical = CriticalSection::enter(&thread);
        // First, before anything else: an exception queued for this thread and not
        // delivered is taken back (it would land after the block has left).
        let taken_back = thread.take_back(py);
        if core.state.load(SeqCst) == IDLE {
            return Err(PyRuntimeError::new_err("__exit__ without __enter__"));
        }
        remove_block(&thread, core);
        let state = core.state.swap(IDLE, SeqCst);
        let own_taken_back = taken_back.as_ref().is_some_and(|b| b.is(slf));
        if let Some(other) = taken_back.as_ref().filter(|_| !own_taken_back) {
            // An outer block's exception, queued while this block ran: fires again.
            thread.rearm(py, other)?;
        }
        let hooks = hooks(py)?;
        let mut fired = false;
        let mut raise: Option<PyErr> = None;
        if state == FIRED {
            fired = true;
            if exc.is_instance(hooks.expired_base.bind(py))?
                && exc.get_type().getattr(intern!(py, "block"))?.is(slf)
            {
                // Our own exception reached the block: it leaves as the public class,
                // with the chain it had (the exception it interrupted, if any).
                exc.setattr(intern!(py, "__class__"), hooks.timeout_error.bind(py))?;
            } else if own_taken_back && exc.is_none() {
                raise = Some(core.fresh_timeout(py)?);
            }
        } else if exc.is_none() && thread.shield.load(SeqCst) == 0 && now(py)? >= core.deadline() {
            // The deadline passed and nothing told the block (the thread held the GIL
            // in a long C call until just before the end): it times out here.
            fired = true;
            raise = Some(core.fresh_timeout(py)?);
        }
        core.fired.store(fired, SeqCst);
        match raise {
            Some(error) => Err(error),
            None => Ok(false),
        }
    }
}

fn remove_block(thread: &Thread, core: &DeadlineCore) {
    let mut data = lock(&thread.data);
    let blocks = &mut data.blocks;
    if let Some(index) = blocks.iter().rposition(|b| std::ptr::eq(b.get(), core)) {
        blocks.remove(index);
    }
}

/// Main thread: asks `_deadlines` to (re)install our SIGALRM handler when it is not current.
fn check_alarm_handler(py: Python<'_>) -> PyResult<()> {
    let hooks = hooks(py)?;
    let current = hooks.getsignal.call1(py, (hooks.sigalrm.clone_ref(py),))?;
    let ours = lock(&ALARM_HANDLER)
        .as_ref()
        .is_some_and(|handler| handler.is(&current));
    if !ours {
        hooks.check_alarm_handler.call0(py)?;
    }
    Ok(())
}

/// A thread's bookkeeping as the scheduler and the SIGALRM handler see it.
#[pyclass(frozen, module = "shared._native")]
pub struct ThreadState {
    thread: Arc<Thread>,
}

#[pymethods]
impl ThreadState {
    #[getter]
    fn ident(&self) -> c_ulong {
        self.thread.ident
    }

    #[getter]
    fn alive(&self) -> bool {
        self.thread.alive.load(SeqCst)
    }

    #[getter]
    fn is_main(&self) -> bool {
        self.thread.is_main
    }

    #[getter]
    fn critical(&self) -> u32 {
        self.thread.critical.load(SeqCst)
    }

    #[getter]
    fn shield(&self) -> u32 {
        self.thread.shield.load(SeqCst)
    }

    #[getter]
    fn signal_mode(&self) -> bool {
        self.thread.signal_mode.load(SeqCst)
    }

    #[setter]
    fn set_signal_mode(&self, value: bool) {
        self.thread.signal_mode.store(value, SeqCst);
    }

    #[getter]
    fn wake_at(&self) -> f64 {
        lock(&self.thread.data).wake_at
    }

    #[setter]
    fn set_wake_at(&self, value: f64) {
        lock(&self.thread.data).wake_at = value;
    }

    #[getter]
    fn pending(&self, py: Python<'_>) -> Option<Py<DeadlineCore>> {
        lock(&self.thread.data)
            .pending
            .as_ref()
            .map(|b| b.clone_ref(py))
    }

    #[getter]
    fn blocks(&self, py: Python<'_>) -> Vec<Py<DeadlineCore>> {
        lock(&self.thread.data)
            .blocks
            .iter()
            .map(|b| b.clone_ref(py))
            .collect()
    }

    /// The earliest active block, or None.
    fn earliest_unfired(&self, py: Python<'_>) -> Option<Py<DeadlineCore>> {
        let data = lock(&self.thread.data);
        data.blocks
            .iter()
            .filter(|b| b.get().state.load(SeqCst) == ACTIVE)
            .min_by(|a, b| a.get().deadline().total_cmp(&b.get().deadline()))
            .map(|b| b.clone_ref(py))
    }

    /// Queues `expiry` for the thread if `block` is still active and the thread is in no
    /// critical section or shield: one native step, so the thread cannot move in between.
    fn fire(&self, block: &Bound<'_, DeadlineCore>, expiry: &Bound<'_, PyType>) -> u8 {
        let thread = &self.thread;
        if thread.critical.load(SeqCst) > 0 {
            return FIRE_CRITICAL;
        }
        if thread.shield.load(SeqCst) > 0 {
            return FIRE_SHIELDED;
        }
        if !thread.alive.load(SeqCst) {
            return FIRE_GONE; // exited inside a block: never raise in whoever has its id now
        }
        let core = block.get();
        let ours = lock(&core.thread)
            .as_ref()
            .is_some_and(|t| Arc::ptr_eq(t, thread));
        if !ours || core.state.load(SeqCst) != ACTIVE {
            return FIRE_GONE;
        }
        core.delivered.store(false, SeqCst);
        core.state.store(FIRED, SeqCst);
        lock(&thread.data).pending = Some(block.clone().unbind());
        thread.queued.store(true, SeqCst);
        // SAFETY: the thread is attached (`block` is bound to it); `expiry` is a valid
        // exception class, to which CPython takes its own reference.
        unsafe { ffi::PyThreadState_SetAsyncExc(ffi_ident(thread.ident), expiry.as_ptr()) };
        FIRE_RAISED
    }

    /// Main thread (SIGALRM handler, which runs in it): marks `block` fired.
    #[allow(clippy::unused_self)] // a method: the handler calls it on the thread's state
    fn mark_fired(&self, block: &Bound<'_, DeadlineCore>) -> bool {
        block
            .get()
            .state
            .compare_exchange(ACTIVE, FIRED, SeqCst, SeqCst)
            .is_ok()
    }

    /// Puts a fired block whose exception was swallowed back to active.
    fn unfire(&self, block: &Bound<'_, DeadlineCore>) -> bool {
        let core = block.get();
        let mut data = lock(&self.thread.data);
        if data.pending.as_ref().is_some_and(|p| p.is(block)) {
            data.pending = None;
            self.thread.queued.store(false, SeqCst);
        }
        core.state
            .compare_exchange(FIRED, ACTIVE, SeqCst, SeqCst)
            .is_ok()
    }

    /// Forgets the scheduler's pending exception (after fork: its scheduler is gone).
    fn reset_after_fork(&self) {
        let mut data = lock(&self.thread.data);
        data.pending = None;
        data.wake_at = f64::INFINITY;
        self.thread.queued.store(false, SeqCst);
    }
}

/// The calling thread's `ThreadState`.
#[pyfunction]
pub fn current_thread_state(py: Python<'_>) -> PyResult<Py<ThreadState>> {
    current_thread(py)?.handle(py)
}

/// The shared timeline of deadlines (seconds, as `time.monotonic()`).
#[pyfunction]
pub fn deadline_clock(py: Python<'_>) -> PyResult<f64> {
    now(py)
}

/// Every deadline reads `clock.now_ns()` from now on; `None` restores the monotonic clock.
///
/// For tests that drive this core and its pure twin on one manual clock.
#[pyfunction]
pub fn set_deadline_clock(clock: Option<Bound<'_, PyAny>>) -> PyResult<()> {
    if let Some(clock) = &clock {
        if !clock.hasattr(intern!(clock.py(), "now_ns"))? {
            return Err(PyTypeError::new_err(
                "clock must have a now_ns() method (for example shared.testing.ManualClock)",
            ));
        }
    }
    let set = clock.is_some();
    let previous = std::mem::replace(&mut *lock(&MANUAL_CLOCK), clock.map(Bound::unbind));
    MANUAL_CLOCK_SET.store(set, SeqCst);
    drop(previous); // after the lock is released: its finalizer may run Python code
    Ok(())
}

/// Registers `_deadlines`' hooks and classes (once; later calls are ignored).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn set_hooks(
    py: Python<'_>,
    schedule: Py<PyAny>,
    check_alarm_handler: Py<PyAny>,
    getsignal: Py<PyAny>,
    sigalrm: Py<PyAny>,
    timeout_error: Py<PyType>,
    expired_base: Py<PyType>,
    message: Py<PyAny>,
    validate_seconds: Py<PyAny>,
    max_seconds: f64,
) {
    let _ = HOOKS.set(
        py,
        Hooks {
            schedule,
            check_alarm_handler,
            getsignal,
            sigalrm,
            timeout_error,
            expired_base,
            message,
            validate_seconds,
            max_seconds,
        },
    );
}

/// Records our SIGALRM handler (compared by identity on each main-thread block).
#[pyfunction]
pub fn set_alarm_handler(handler: Py<PyAny>) {
    *lock(&ALARM_HANDLER) = Some(handler);
}

/// Enters a shield: no deadline of the calling thread is delivered until it leaves.
///
/// An exception queued just before is taken back and fires again at the end.
#[pyfunction]
pub fn shield_enter(py: Python<'_>) -> PyResult<()> {
    let thread = current_thread(py)?;
    thread.shield.fetch_add(1, SeqCst);
    let _critical = CriticalSection::enter(&thread);
    if let Some(block) = thread.take_back(py) {
        let core = block.get();
        let _ = core.state.compare_exchange(FIRED, ACTIVE, SeqCst, SeqCst);
    }
    Ok(())
}

/// Leaves a shield; True when it was the outermost and a deadline of the thread passed.
#[pyfunction]
pub fn shield_exit(py: Python<'_>) -> PyResult<bool> {
    let thread = current_thread(py)?;
    let left = thread.shield.fetch_sub(1, SeqCst);
    if left == 0 {
        thread.shield.store(0, SeqCst);
        return Err(PyRuntimeError::new_err(
            "shield left more often than entered",
        ));
    }
    if left > 1 {
        return Ok(false);
    }
    if lock(&thread.data).blocks.is_empty() {
        return Ok(false);
    }
    let now = now(py)?; // with no lock held: a manual clock runs Python code
    let data = lock(&thread.data);
    Ok(data
        .blocks
        .iter()
        .any(|b| b.get().state.load(SeqCst) == ACTIVE && b.get().deadline() <= now))
}

/// `critical(function)`: no deadline is delivered while the thread runs `function`.
#[pyclass(frozen, module = "shared._native")]
pub struct Guard {
    function: Py<PyAny>,
}

#[pymethods]
impl Guard {
    #[new]
    fn new(function: Py<PyAny>, py: Python<'_>) -> PyResult<Self> {
        if !function.bind(py).is_callable() {
            return Err(PyTypeError::new_err("function must be callable"));
        }
        Ok(Guard { function })
    }

    #[getter]
    fn __wrapped__(&self, py: Python<'_>) -> Py<PyAny> {
        self.function.clone_ref(py)
    }

    #[pyo3(signature = (*args, **kwargs))]
    fn __call__(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let thread = current_thread(py)?;
        let _critical = CriticalSection::enter(&thread);
        let taken_back = thread.take_back(py);
        let result = self.function.bind(py).call(args, kwargs);
        if let Some(block) = taken_back {
            thread.rearm(py, &block)?;
        }
        Ok(result?.unbind())
    }

    fn __get__(
        slf: &Bound<'_, Self>,
        instance: Option<&Bound<'_, PyAny>>,
        _owner: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        match instance {
            None => Ok(slf.clone().into_any().unbind()),
            Some(instance) => Ok(py
                .import(intern!(py, "types"))?
                .getattr(intern!(py, "MethodType"))?
                .call1((slf, instance))?
                .unbind()),
        }
    }
}

pub const FIRE_OUTCOMES: [(&str, u8); 4] = [
    ("FIRE_RAISED", FIRE_RAISED),
    ("FIRE_CRITICAL", FIRE_CRITICAL),
    ("FIRE_SHIELDED", FIRE_SHIELDED),
    ("FIRE_GONE", FIRE_GONE),
];
