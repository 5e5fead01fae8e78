//! The finishing threads: they run what a queued call leaves for Python (letting go of its
//! buffers, its done-callbacks, and through them the torch futures' callbacks) with the
//! GIL, off the progress threads.
//!
//! A callback may block: PyTorch's PowerSGD hook starts an all-reduce inside a future's
//! callback and waits for its future, which another finishing task completes. So a task
//! never waits for a thread that a blocked task holds: when no finishing thread is idle,
//! another starts (up to [`MAX_THREADS`]); a thread idle for [`IDLE_EXIT`] ends (the last
//! one stays).
//!
//! At interpreter exit a thread that asks for the GIL is ended by Python mid-call, which
//! aborts the process. So an `atexit` hook ([`at_exit`]) tells these threads to leave
//! Python alone from then on (what a task holds is leaked, the process is ending), and
//! waits, GIL released, for any that is already between deciding to take the GIL and
//! letting it go.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

/// Finishing threads at most; beyond, tasks wait for one to come free.
pub const MAX_THREADS: usize = 64;
/// How long a spare finishing thread waits for work before it ends.
const IDLE_EXIT: Duration = Duration::from_secs(10);
/// How long the exit hook waits for a thread to let go of Python.
const EXIT_GRACE: Duration = Duration::from_secs(2);

pub type Task = Box<dyn FnOnce(Python<'_>) + Send>;

/// Set once the interpreter is exiting.
static EXITING: AtomicBool = AtomicBool::new(false);
/// Threads that decided to take the GIL and have not let it go yet.
static IN_PYTHON: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
struct Pool {
    state: Mutex<State>,
    ready: Condvar,
}

#[derive(Default)]
struct State {
    tasks: VecDeque<Task>,
    threads: usize,
    idle: usize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(Pool::default)
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Runs `task` with the GIL on a finishing thread.
pub fn later(task: Task) {
    let p = pool();
    let mut st = p.lock();
    st.tasks.push_back(task);
    if st.idle == 0 && st.threads < MAX_THREADS {
        let spawned = std::thread::Builder::new()
            .name("topoccl-py-finish".into())
            .spawn(serve);
        if spawned.is_ok() {
            st.threads += 1;
        }
        // Without a new thread the task waits for a busy one to come free.
    }
    drop(st);
    p.ready.notify_one();
}

fn serve() {
    let p = pool();
    let mut st = p.lock();
    loop {
        if let Some(task) = st.tasks.pop_front() {
            drop(st);
            run(task);
            st = p.lock();
            continue;
        }
        st.idle += 1;
        let (next, waited) = p
            .ready
            .wait_timeout(st, IDLE_EXIT)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        st = next;
        st.idle -= 1;
        if waited.timed_out() && st.tasks.is_empty() && st.threads > 1 {
            st.threads -= 1;
            return;
        }
    }
}

/// Runs `task` with the GIL, unless the interpreter is exiting (then what it holds is
/// leaked).
fn run(task: Task) {
    IN_PYTHON.fetch_add(1, Ordering::SeqCst);
    if EXITING.load(Ordering::SeqCst) {
        IN_PYTHON.fetch_sub(1, Ordering::SeqCst);
        std::mem::forget(task);
        return;
    }
    Python::with_gil(task);
    IN_PYTHON.fetch_sub(1, Ordering::SeqCst);
}

/// The `atexit` hook: from now on finishing threads leave Python alone.
#[pyfunction]
pub fn at_exit(py: Python<'_>) {
    EXITING.store(true, Ordering::SeqCst);
    py.allow_threads(|| {
        let deadline = Instant::now() + EXIT_GRACE;
        while IN_PYTHON.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}
