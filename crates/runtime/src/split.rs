//! Where a rank's time inside collective calls goes: moving bytes, reducing, waiting for
//! peers. Measured only when asked ([`crate::Communicator::measure_time_split`]): each part
//! costs two clock reads around it, which small messages would notice.

use std::time::{Duration, Instant};

/// Time spent inside calls, by what the rank was doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeSplit {
    /// Calls measured.
    pub calls: u64,
    /// Inside the calls, in all.
    pub total: Duration,
    /// Moving bytes: frames written into a ring or a socket, frames read into their
    /// destination or a staging buffer, local copies.
    pub copy: Duration,
    /// Reductions: local ones and those done as frames arrive (straight from a ring or
    /// from staging).
    pub reduce: Duration,
    /// Waiting for peers: spinning on and sleeping in the transports.
    pub wait: Duration,
}

impl TimeSplit {
    /// The rest of `total`: matching frames, polling, the plan's bookkeeping.
    pub fn other(&self) -> Duration {
        self.total
            .saturating_sub(self.copy + self.reduce + self.wait)
    }
}

/// A part of [`TimeSplit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Copy,
    Reduce,
    Wait,
}

/// Times parts of one call into a [`TimeSplit`], or does nothing (no clock read) when the
/// split is not being measured.
pub(crate) struct Stopwatch<'s> {
    split: Option<&'s mut TimeSplit>,
}

impl<'s> Stopwatch<'s> {
    pub fn new(split: Option<&'s mut TimeSplit>) -> Stopwatch<'s> {
        Stopwatch { split }
    }

    /// The start of a part, when measuring.
    pub fn start(&self) -> Option<Instant> {
        self.split.as_ref().map(|_| Instant::now())
    }

    /// Ends a part begun at `start`.
    pub fn stop(&mut self, part: Part, start: Option<Instant>) {
        if let (Some(s), Some(t)) = (self.split.as_deref_mut(), start) {
            let d = t.elapsed();
            match part {
                Part::Copy => s.copy += d,
                Part::Reduce => s.reduce += d,
                Part::Wait => s.wait += d,
            }
        }
    }

    /// Ends a call begun at `start`.
    pub fn call(&mut self, start: Option<Instant>) {
        if let (Some(s), Some(t)) = (self.split.as_deref_mut(), start) {
            s.total += t.elapsed();
            s.calls += 1;
            debug_assert!(
                s.copy + s.reduce + s.wait <= s.total + Duration::from_micros(1) * s.calls as u32,
                "the parts of a call fit in it"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_reads_no_clock_and_adds_nothing() {
        let mut sw = Stopwatch::new(None);
        let t = sw.start();
        assert!(t.is_none());
        sw.stop(Part::Copy, t);
        sw.call(t);
    }

    #[test]
    fn parts_add_up_inside_the_call() {
        let mut split = TimeSplit::default();
        {
            let mut sw = Stopwatch::new(Some(&mut split));
            let call = sw.start();
            for part in [Part::Copy, Part::Reduce, Part::Wait] {
                let t = sw.start();
                std::thread::sleep(Duration::from_millis(2));
                sw.stop(part, t);
            }
            sw.call(call);
        }
        assert_eq!(split.calls, 1);
        for d in [split.copy, split.reduce, split.wait] {
            assert!(d >= Duration::from_millis(2), "{split:?}");
        }
        assert!(split.total >= split.copy + split.reduce + split.wait);
        assert_eq!(
            split.other(),
            split.total - split.copy - split.reduce - split.wait
        );
    }
}
