//! Ctrl-C during a call: the call aborts within a poll interval and Python raises
//! `KeyboardInterrupt`.
//!
//! While a call runs the GIL is released, so Python's own SIGINT handler only sets a flag
//! that nothing reads until the call returns, and a call waiting for a peer could wait out
//! its whole deadline. So a SIGINT action is added beside Python's (`signal-hook` chains
//! the handler that was there: Python's still runs, and raises `KeyboardInterrupt` once
//! the call is back in Python); it aborts the communicators whose calls are in flight,
//! found in a fixed table of slots ([`InFlight`] fills one for the length of a call).
//! The action only loads atomics and calls [`AbortHandle::abort`] (an atomic store and an
//! eventfd write), which is async-signal-safe.
//!
//! The action is added the first time a call runs, and only when Python handles SIGINT
//! itself (its default `KeyboardInterrupt`, or a Python handler): a program that ignores
//! SIGINT or left it to the system keeps that behaviour.

use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Once;

use pyo3::prelude::*;
use topoccl::AbortHandle;

/// Calls in flight at once that Ctrl-C can abort (more run, but are not aborted by it).
const SLOTS: usize = 32;

static IN_FLIGHT: [AtomicPtr<AbortHandle>; SLOTS] =
    [const { AtomicPtr::new(ptr::null_mut()) }; SLOTS];
static INSTALL: Once = Once::new();

/// Adds the SIGINT action once, if Python handles SIGINT.
pub fn install(py: Python<'_>) {
    INSTALL.call_once(|| {
        if !python_handles_sigint(py) {
            return;
        }
        // SAFETY: the action is async-signal-safe (see the module doc).
        let added = unsafe {
            signal_hook::low_level::register(signal_hook::consts::SIGINT, abort_in_flight)
        };
        if let Err(e) = added {
            let warning = py.get_type::<pyo3::exceptions::PyRuntimeWarning>();
            let text = format!("topoccl: Ctrl-C will not abort calls in flight: {e}");
            let _ = PyErr::warn(
                py,
                &warning,
                &std::ffi::CString::new(text).unwrap_or_default(),
                1,
            );
        }
    });
}

fn python_handles_sigint(py: Python<'_>) -> bool {
    let check = || -> PyResult<bool> {
        let signal = py.import("signal")?;
        let current = signal.call_method1("getsignal", (signal.getattr("SIGINT")?,))?;
        Ok(current.is_callable())
    };
    check().unwrap_or(false)
}

fn abort_in_flight() {
    for slot in &IN_FLIGHT {
        let handle = slot.load(Ordering::SeqCst);
        if !handle.is_null() {
            // SAFETY: a slot holds a handle only while the `InFlight` that put it there
            // lives, and that borrows the handle.
            unsafe { (*handle).abort() };
        }
    }
}

/// A call in flight on the communicator of `handle`: Ctrl-C aborts it until dropped.
pub struct InFlight<'a>(Option<usize>, PhantomData<&'a AbortHandle>);

impl<'a> InFlight<'a> {
    pub fn new(handle: &'a AbortHandle) -> InFlight<'a> {
        let p = handle as *const AbortHandle as *mut AbortHandle;
        let slot = IN_FLIGHT.iter().position(|s| {
            s.compare_exchange(ptr::null_mut(), p, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        });
        InFlight(slot, PhantomData)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.0 {
            IN_FLIGHT[i].store(ptr::null_mut(), Ordering::SeqCst);
        }
    }
}
