//! Where calls run: on the caller's thread, or queued on the communicator's progress thread
//! for `async_op=True` (a [`Work`] handle comes back at once).
//!
//! | piece | owns | runs |
//! |---|---|---|
//! | [`Shared`] | the communicator (behind a lock) and its abort handle | one call at a time, from either thread |
//! | [`Queue`] | the progress thread and a bounded channel of [`QUEUE_DEPTH`] calls | queued calls in the order they were started |
//! | [`Work`] | one queued call's outcome and done-callbacks | `wait` in slices of [`WAIT_SLICE`], checking for Ctrl-C between |
//!
//! A blocking call runs on the caller's thread when nothing is queued (no hand-off between
//! threads on the hot path) and waits behind the queue otherwise, so every call starts in
//! the order the program made it, as all ranks require. Likewise `wait` on a queued call
//! that is the only one pending and not yet taken by the progress thread runs it on the
//! waiting thread (whoever takes the call out of its `Work` runs it): torch's blocking
//! collectives start a call and wait for it at once, and pay no hand-off. The progress
//! thread leaves such a lone call [`STEAL_GRACE`] before taking it itself. A queued call's buffers stay held
//! until it ends; they are let go, and its done-callbacks run, on the progress thread with
//! the GIL (the torch backend completes its futures there). No wait is unbounded: `wait`
//! gives up after the communicator's deadline (plus slack) for each call queued up to and
//! including its own.
//!
//! What needs Python after a queued call (letting go of its buffers, its done-callbacks)
//! is handed to the finishing threads ([`crate::finish`]), never run on the progress
//! thread: a callback may start another call and wait for it (PyTorch's PowerSGD hook
//! does), which the progress thread must be free to run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use topoccl::AbortHandle;

use crate::buffer::Buffer;
use crate::interrupt::InFlight;
use crate::Failure;

/// Calls that may wait on the progress thread at once; starting one more fails at once.
pub const QUEUE_DEPTH: usize = 1024;
/// How long `wait` sleeps between checks for Ctrl-C.
pub const WAIT_SLICE: Duration = Duration::from_millis(100);
/// How long the progress thread leaves a call that is the only one pending for its caller
/// to take with `wait` before it runs it itself: torch's blocking collectives wait right
/// after starting, and then pay no hand-off between threads.
pub const STEAL_GRACE: Duration = Duration::from_micros(50);
/// Slack per queued call on top of its deadline, for the diagnosis a timeout runs.
const PER_CALL_SLACK: Duration = Duration::from_secs(3);

pub type Run = Box<dyn FnOnce(&mut topoccl::Communicator) -> topoccl::Result<()> + Send>;

/// One call: what it is (for messages), what runs, and the buffers it uses.
pub struct Call {
    pub what: &'static str,
    pub run: Run,
    pub held: Vec<Buffer>,
}

/// The communicator, shared by the caller's thread and the progress thread.
pub struct Shared {
    /// `None` once closed.
    comm: Mutex<Option<topoccl::Communicator>>,
    pub abort: AbortHandle,
    pub timeout: Duration,
}

impl Shared {
    pub fn new(comm: topoccl::Communicator) -> Shared {
        Shared {
            abort: comm.abort_handle(),
            timeout: comm.config().timeout,
            comm: Mutex::new(Some(comm)),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Option<topoccl::Communicator>> {
        self.comm
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The communicator if no call holds it.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, Option<topoccl::Communicator>>> {
        match self.comm.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Runs `run` on this thread (whose GIL the caller has released); Ctrl-C aborts it.
    pub fn run(&self, what: &str, run: Run) -> topoccl::Result<()> {
        let _in_flight = InFlight::new(&self.abort);
        let mut c = self.lock();
        match c.as_mut() {
            Some(c) => run(c),
            None => Err(topoccl::Error::CommAborted(format!(
                "{what}: the communicator was closed; create a new one"
            ))),
        }
    }

    /// Closes the communicator (saying goodbye to the peers); later calls fail.
    pub fn close(&self) {
        self.lock().take();
    }
}

/// The progress thread of one communicator.
pub struct Queue {
    tx: SyncSender<Job>,
    /// Calls queued or running.
    pending: Arc<AtomicUsize>,
}

/// A queued call: its `State` holds the call until the progress thread or a waiter takes
/// it.
struct Job {
    state: Arc<State>,
}

impl Queue {
    pub fn start(shared: Arc<Shared>, rank: u32) -> std::io::Result<Queue> {
        let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE_DEPTH);
        let pending = Arc::new(AtomicUsize::new(0));
        let left = pending.clone();
        std::thread::Builder::new()
            .name(format!("topoccl-py-rank{rank}"))
            .spawn(move || {
                while let Ok(Job { state }) = rx.recv() {
                    if left.load(Ordering::SeqCst) == 1 {
                        std::thread::sleep(STEAL_GRACE);
                    }
                    // A waiter that took the call ran it (and counted it done).
                    let Some(Call { what, run, held }) = state.take_call() else {
                        continue;
                    };
                    let outcome = shared.run(what, run).map_err(Failure::from);
                    left.fetch_sub(1, Ordering::SeqCst);
                    let callbacks = state.finish(outcome);
                    if held.is_empty() && callbacks.is_empty() {
                        continue;
                    }
                    crate::finish::later(Box::new(move |py: Python<'_>| {
                        drop(held);
                        run_callbacks(py, callbacks);
                    }));
                }
            })?;
        Ok(Queue { tx, pending })
    }

    /// Whether no call is queued or running.
    pub fn idle(&self) -> bool {
        self.pending.load(Ordering::SeqCst) == 0
    }

    /// Queues `call` behind those already started.
    pub fn submit(&self, call: Call, shared: &Arc<Shared>) -> Result<Work, Failure> {
        let what = call.what;
        let ahead = self.pending.fetch_add(1, Ordering::SeqCst);
        let state = Arc::new(State {
            what,
            call: Mutex::new(Some(call)),
            inner: Mutex::new(Inner::default()),
            cv: Condvar::new(),
        });
        let job = Job {
            state: state.clone(),
        };
        if let Err(e) = self.tx.try_send(job) {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            let why = match e {
                TrySendError::Full(_) => format!(
                    "{QUEUE_DEPTH} calls are already queued; wait for some before starting more"
                ),
                TrySendError::Disconnected(_) => "the progress thread has ended".to_string(),
            };
            return Err(Failure::plain(format!("cannot start {what}: {why}")));
        }
        Ok(Work {
            state,
            abort: shared.abort.clone(),
            limit: (shared.timeout + PER_CALL_SLACK) * (ahead as u32 + 1),
            shared: shared.clone(),
            pending: self.pending.clone(),
        })
    }
}

fn run_callbacks(py: Python<'_>, callbacks: Vec<Py<PyAny>>) {
    for cb in callbacks {
        if let Err(e) = cb.call0(py) {
            e.write_unraisable(py, Some(cb.bind(py)));
        }
    }
}

#[derive(Default)]
struct Inner {
    outcome: Option<Result<(), Failure>>,
    callbacks: Vec<Py<PyAny>>,
}

struct State {
    what: &'static str,
    /// The call, until the progress thread or a waiter takes it to run.
    call: Mutex<Option<Call>>,
    inner: Mutex<Inner>,
    cv: Condvar,
}

impl State {
    fn take_call(&self) -> Option<Call> {
        self.call
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records the outcome, wakes the waiters and hands back the callbacks to run.
    fn finish(&self, outcome: Result<(), Failure>) -> Vec<Py<PyAny>> {
        let callbacks = {
            let mut inner = self.lock();
            inner.outcome = Some(outcome);
            std::mem::take(&mut inner.callbacks)
        };
        self.cv.notify_all();
        callbacks
    }
}

/// A call started with `async_op=True`.
#[pyclass(module = "topoccl", frozen)]
pub struct Work {
    state: Arc<State>,
    abort: AbortHandle,
    /// How long `wait` waits at most by default.
    limit: Duration,
    /// To run the call here when it is the only one pending.
    shared: Arc<Shared>,
    pending: Arc<AtomicUsize>,
}

impl Work {
    /// Runs the call on this thread if it is the only call pending and the progress thread
    /// has not taken it.
    fn steal(&self, py: Python<'_>) -> PyResult<()> {
        if self.pending.load(Ordering::SeqCst) != 1 {
            return Ok(());
        }
        let Some(Call { what, run, held }) = self.state.take_call() else {
            return Ok(());
        };
        let shared = &self.shared;
        let outcome = py
            .allow_threads(|| shared.run(what, run))
            .map_err(Failure::from);
        self.pending.fetch_sub(1, Ordering::SeqCst);
        let interrupted = outcome.is_err().then(|| py.check_signals().err()).flatten();
        let callbacks = self.state.finish(outcome);
        drop(held);
        run_callbacks(py, callbacks);
        interrupted.map_or(Ok(()), Err)
    }

    /// Waits (GIL released, Ctrl-C checked every [`WAIT_SLICE`]) up to `limit`.
    pub fn wait_for(&self, py: Python<'_>, limit: Duration) -> PyResult<()> {
        self.steal(py)?;
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let done = py.allow_threads(|| {
                let inner = self.state.lock();
                let (inner, _) = self
                    .state
                    .cv
                    .wait_timeout_while(inner, left.min(WAIT_SLICE), |i| i.outcome.is_none())
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                inner.outcome.clone()
            });
            if let Err(interrupted) = py.check_signals() {
                self.abort.abort();
                return Err(interrupted);
            }
            match done {
                Some(Ok(())) => return Ok(()),
                Some(Err(f)) => return Err(f.to_py(py)),
                None if left.is_zero() => {
                    return Err(Failure::plain(format!(
                        "{} did not finish within {:.1} s (the calls queued before it, each \
                         with its own deadline, had not finished either); abort the \
                         communicator",
                        self.state.what,
                        limit.as_secs_f64()
                    ))
                    .to_py(py))
                }
                None => {}
            }
        }
    }
}

#[pymethods]
impl Work {
    /// Blocks until the call ends; raises what it raised. `timeout` in seconds (default:
    /// the communicator's deadline for each call queued up to this one).
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        let limit = match timeout {
            Some(t) if t.is_finite() && t >= 0.0 => Duration::from_secs_f64(t),
            Some(t) => {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "timeout={t}: give a number of seconds ≥ 0"
                )))
            }
            None => self.limit,
        };
        self.wait_for(py, limit)
    }

    /// Whether the call has ended (successfully or not); never blocks.
    fn is_completed(&self) -> bool {
        self.state.lock().outcome.is_some()
    }

    /// Whether the call has ended successfully.
    fn is_success(&self) -> bool {
        matches!(self.state.lock().outcome, Some(Ok(())))
    }

    /// The exception the call ended with, or None (also while it runs).
    fn exception(&self, py: Python<'_>) -> Option<PyObject> {
        match &self.state.lock().outcome {
            Some(Err(f)) => Some(f.to_py(py).into_value(py).into_any()),
            _ => None,
        }
    }

    /// Calls `callback()` once the call has ended: at once if it has, else on the
    /// progress thread (with the GIL). Exceptions it raises are reported as unraisable.
    fn add_done_callback(&self, py: Python<'_>, callback: PyObject) -> PyResult<()> {
        {
            let mut inner = self.state.lock();
            if inner.outcome.is_none() {
                inner.callbacks.push(callback);
                return Ok(());
            }
        }
        callback.call0(py).map(drop)
    }

    fn __repr__(&self) -> String {
        let state = match &self.state.lock().outcome {
            None => "pending",
            Some(Ok(())) => "done",
            Some(Err(_)) => "failed",
        };
        format!("<topoccl.Work {} {state}>", self.state.what)
    }
}
