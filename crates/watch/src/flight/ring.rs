//! The bounded ring of a rank's recent calls.
//!
//! Entry `id` lives in slot `id % capacity`; ids are handed out 0, 1, 2, … and never
//! reused, so an update names its entry by id and finds it in O(1): if the slot now holds
//! a newer id, the entry was overwritten and the update is ignored. When the ring is full
//! a new call overwrites the oldest entry. The slots are allocated once, at
//! [`Ring::new`]; after that, recording and updating allocate nothing as long as the
//! caller's strings are borrowed (`Cow::Borrowed`), except a failure's owned error text.
//!
//! Capacity: 1..=[`MAX_CAPACITY`], default [`DEFAULT_CAPACITY`] = 2,000 (PyTorch's
//! `TORCH_NCCL_TRACE_BUFFER_SIZE` default). An entry takes 248 bytes (64-bit targets),
//! so the default ring holds about 500 KB, allocated at construction. Recording, starting
//! and completing a call costs tens of nanoseconds (see `tests/flight_perf.rs`).

use std::borrow::Cow;

use super::dump::{Dump, DumpMeta};
use super::entry::{Call, Entry, State};
use super::error::FlightError;

/// The default number of entries a ring keeps (PyTorch's default buffer size).
pub const DEFAULT_CAPACITY: usize = 2_000;

/// The most entries a ring (or a parsed dump) may hold.
pub const MAX_CAPACITY: usize = 1_000_000;

/// A rank's bounded ring of recent calls (see the module doc).
#[derive(Clone, Debug)]
pub struct Ring {
    slots: Vec<Entry>,
    capacity: usize,
    next_id: u64,
}

impl Default for Ring {
    /// A ring of [`DEFAULT_CAPACITY`] entries.
    fn default() -> Self {
        Ring::with_capacity_unchecked(DEFAULT_CAPACITY)
    }
}

impl Ring {
    /// A ring keeping the last `capacity` calls (1..=[`MAX_CAPACITY`]).
    pub fn new(capacity: usize) -> Result<Self, FlightError> {
        if capacity == 0 || capacity > MAX_CAPACITY {
            return Err(FlightError::Capacity {
                given: capacity,
                max: MAX_CAPACITY,
                default: DEFAULT_CAPACITY,
            });
        }
        Ok(Ring::with_capacity_unchecked(capacity))
    }

    fn with_capacity_unchecked(capacity: usize) -> Self {
        Ring {
            slots: Vec::with_capacity(capacity),
            capacity,
            next_id: 0,
        }
    }

    /// How many entries the ring keeps at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many entries it holds now (≤ capacity).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The id the next recorded call gets (= the number of calls recorded so far).
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// How many entries were overwritten (recorded but no longer held).
    pub fn dropped(&self) -> u64 {
        self.next_id - self.slots.len() as u64
    }

    /// Records a call entered at `t_ns` (state `scheduled`) and returns its id,
    /// overwriting the oldest entry if the ring is full. O(1).
    pub fn record_start(&mut self, call: Call, t_ns: u64) -> u64 {
        let id = self.next_id;
        let entry = Entry::new(id, call, t_ns);
        if self.slots.len() < self.capacity {
            self.slots.push(entry);
        } else {
            let slot = self.slot(id);
            self.slots[slot] = entry;
        }
        self.next_id += 1;
        id
    }

    /// Marks call `id` started at `t_ns`. Returns false, changing nothing, if `id` was
    /// overwritten or never handed out, or the call is not in state `scheduled`.
    pub fn mark_started(&mut self, id: u64, t_ns: u64) -> bool {
        self.get_mut(id).is_some_and(|e| e.start(t_ns))
    }

    /// Marks call `id` completed at `t_ns`. Returns false, changing nothing, if `id` was
    /// overwritten or never handed out, or the call had already ended.
    pub fn mark_completed(&mut self, id: u64, t_ns: u64) -> bool {
        self.get_mut(id)
            .is_some_and(|e| e.finish(t_ns, State::Completed, None))
    }

    /// Marks call `id` failed at `t_ns` with `reason`. Returns false, changing nothing,
    /// if `id` was overwritten or never handed out, or the call had already ended.
    pub fn mark_failed(
        &mut self,
        id: u64,
        t_ns: u64,
        reason: impl Into<Cow<'static, str>>,
    ) -> bool {
        self.get_mut(id)
            .is_some_and(|e| e.finish(t_ns, State::Failed, Some(reason.into())))
    }

    /// The entry `id`, if the ring still holds it.
    pub fn get(&self, id: u64) -> Option<&Entry> {
        self.held(id).then(|| &self.slots[self.slot(id)])
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut Entry> {
        if !self.held(id) {
            return None;
        }
        let slot = self.slot(id);
        Some(&mut self.slots[slot])
    }

    /// Whether entry `id` is still in the ring: handed out and not overwritten.
    fn held(&self, id: u64) -> bool {
        id < self.next_id && self.next_id - id <= self.slots.len() as u64
    }

    fn slot(&self, id: u64) -> usize {
        // capacity ≤ MAX_CAPACITY fits u64, and the remainder fits usize.
        (id % self.capacity as u64) as usize
    }

    /// The held entries, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> + '_ {
        let split = if self.slots.len() < self.capacity {
            0
        } else {
            self.slot(self.next_id)
        };
        let (newer, older) = self.slots.split_at(split);
        older.iter().chain(newer.iter())
    }

    /// A dump of the held entries (oldest first) with the header `meta`.
    pub fn dump(&self, meta: DumpMeta) -> Dump {
        Dump::new(
            meta,
            self.capacity,
            self.dropped(),
            self.entries().cloned().collect(),
        )
    }
}
