//! SIGINT and SIGTERM during a launch, delivered as events.
//!
//! Each launch registers its own `signal-hook` iterator (a self-pipe, read on a small
//! thread) and forwards what it reads into the launch's event channel, so concurrent
//! launches each hear every signal.
//!
//! Outside launches the signals must keep their default action (end the process), but
//! `signal-hook` cannot hand a signal's default disposition back once it has handled it.
//! So the first launch registers one process-wide action per signal that performs the
//! default action while no launch is armed, and launches count themselves in and out.
//! That registration is the crate's only global state, because a signal's disposition
//! belongs to the whole process.

use std::sync::atomic::AtomicBool;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

use crate::driver::Event;
use crate::LaunchError;

const WATCHED: [i32; 2] = [SIGINT, SIGTERM];

/// The process-wide "default action while idle" registration.
struct IdleDefault {
    /// True while no launch is armed: the signals then end the process.
    idle: Arc<AtomicBool>,
    /// Launches armed now.
    armed: Mutex<usize>,
}

static IDLE_DEFAULT: OnceLock<Result<IdleDefault, String>> = OnceLock::new();

impl IdleDefault {
    fn install() -> Result<IdleDefault, String> {
        let idle = Arc::new(AtomicBool::new(true));
        for signal in WATCHED {
            signal_hook::flag::register_conditional_default(signal, Arc::clone(&idle))
                .map_err(|e| e.to_string())?;
        }
        Ok(IdleDefault {
            idle,
            armed: Mutex::new(0),
        })
    }

    fn get() -> Result<&'static IdleDefault, LaunchError> {
        IDLE_DEFAULT
            .get_or_init(IdleDefault::install)
            .as_ref()
            .map_err(|e| LaunchError::Signals(e.clone()))
    }

    fn count(&self, change: impl FnOnce(usize) -> usize) {
        let mut armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
        *armed = change(*armed);
        self.idle
            .store(*armed == 0, std::sync::atomic::Ordering::SeqCst);
    }
}

/// SIGINT and SIGTERM go to one launch's channel while this lives.
pub(crate) struct SignalForwarder {
    idle_default: &'static IdleDefault,
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

impl SignalForwarder {
    /// Starts forwarding into `events`. The receiver must be dropped before the forwarder,
    /// so that a send blocked on a full channel ends.
    pub(crate) fn start(events: SyncSender<Event>) -> Result<SignalForwarder, LaunchError> {
        let idle_default = IdleDefault::get()?;
        // The iterator first, then armed: a signal in between ends the process before any
        // rank exists, rather than being lost.
        let mut signals = Signals::new(WATCHED).map_err(|e| LaunchError::Signals(e.to_string()))?;
        let handle = signals.handle();
        let thread = thread::Builder::new()
            .name("topoccl-launch-signals".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                for signal in signals.forever() {
                    if events.send(Event::Signal(signal)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| LaunchError::Signals(e.to_string()))?;
        idle_default.count(|n| n + 1);
        Ok(SignalForwarder {
            idle_default,
            handle,
            thread: Some(thread),
        })
    }
}

impl Drop for SignalForwarder {
    fn drop(&mut self) {
        // Disarmed first: a signal from here on takes the default action (if no other
        // launch runs) instead of going nowhere.
        self.idle_default.count(|n| n.saturating_sub(1));
        self.handle.close();
        if let Some(thread) = self.thread.take() {
            // Bounded: closing wakes the iterator, and a send fails once the receiver is
            // gone.
            let _ = thread.join();
        }
    }
}
