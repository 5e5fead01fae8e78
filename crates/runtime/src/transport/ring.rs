//! A single-producer, single-consumer byte ring in memory shared by two processes: the data
//! lane of the shared-memory transport, one ring per direction of a pair of ranks.
//!
//! # Layout (offsets from the ring's base, which is 64-byte aligned)
//!
//! | offset | bytes | field | written by |
//! |---|---|---|---|
//! | 0 | 8 | `head`: bytes published since the start (never wraps) | producer |
//! | 128 | 8 | `tail`: bytes consumed since the start | consumer |
//! | 256 | 4 | `consumer_waiting`: the consumer sleeps until the producer rings | consumer sets, producer clears |
//! | 260 | 4 | `producer_waiting`: the producer sleeps until the consumer rings | producer sets, consumer clears |
//! | 264 | 4 | `closed`: the link is cut; no more bytes will come | either |
//! | 384 | `cap` | data: byte `i` of the stream at `i mod cap` | producer |
//!
//! `head` and `tail` sit 128 bytes apart (two cache lines, beyond the adjacent-line
//! prefetcher) so the producer's and consumer's stores never share a line; the flags have
//! lines of their own because they change only when a side goes to sleep.
//!
//! Each side caches the other's index and re-reads it only when its cached view says the
//! ring is full (producer) or empty (consumer). Publishing is a release store of the
//! index; reading the other side's index is an acquire load. A side that is about to sleep
//! sets its waiting flag, issues a full fence and checks the ring again; the other side,
//! after publishing, fences and swaps the flag back to 0, and if it was set, rings the
//! sleeper's doorbell (an eventfd, outside this module). Neither side can then miss the
//! other: this is the classic event-count handshake.
//!
//! Frames stay 8-byte aligned in the ring: after a frame's last byte the producer skips to
//! the next multiple of 8 (the consumer skips the same padding), so payloads of every
//! element type can be reduced in place ([`RingRx::peek`]) without straddling the wrap.

use std::ptr;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// Bytes of a ring's control block before its data.
pub const RING_HEADER: usize = 384;
const HEAD: usize = 0;
const TAIL: usize = 128;
const CONSUMER_WAITING: usize = 256;
const PRODUCER_WAITING: usize = 260;
const CLOSED: usize = 264;
/// Frames start at multiples of this in the stream.
pub const FRAME_ALIGN: u64 = 8;

/// Padding after a frame of `len` bytes in total.
pub fn pad_after(len: u64) -> u64 {
    (FRAME_ALIGN - len % FRAME_ALIGN) % FRAME_ALIGN
}

/// Bytes a ring of capacity `cap` occupies.
pub const fn ring_bytes(cap: usize) -> usize {
    RING_HEADER + cap
}

/// A ring's memory: `base` points at its control block, followed by `cap` bytes of data.
#[derive(Debug)]
struct Raw {
    base: *mut u8,
    cap: u64,
}

// SAFETY: the ring is designed for concurrent use from two processes (or threads): the
// indices and flags are atomics, and each data byte is written by the producer only while
// it lies in the free part and read by the consumer only while it lies in the published
// part, which the indices keep disjoint.
unsafe impl Send for Raw {}

impl Raw {
    /// # Safety
    /// `base` must be 64-byte aligned and valid for `RING_HEADER + cap` bytes for as long
    /// as the ring is used; `cap` a positive multiple of 64.
    unsafe fn new(base: *mut u8, cap: usize) -> Raw {
        debug_assert!(
            base as usize % 64 == 0,
            "ring base must be cache-line aligned"
        );
        debug_assert!(
            cap > 0 && cap % 64 == 0,
            "ring capacity must be a multiple of 64"
        );
        Raw {
            base,
            cap: cap as u64,
        }
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        // SAFETY: `off` is one of the control block's 8-aligned fields, inside the mapping.
        unsafe { &*(self.base.add(off) as *const AtomicU64) }
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        // SAFETY: as above, for the 4-byte flags.
        unsafe { &*(self.base.add(off) as *const AtomicU32) }
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: the data follows the control block inside the mapping.
        unsafe { self.base.add(RING_HEADER) }
    }

    fn closed(&self) -> bool {
        self.u32_at(CLOSED).load(Ordering::Acquire) != 0
    }

    fn close(&self) {
        self.u32_at(CLOSED).store(1, Ordering::Release);
    }

    /// After publishing: whether the other side sleeps and must be woken.
    fn wake_other(&self, flag: usize) -> bool {
        fence(Ordering::SeqCst);
        let f = self.u32_at(flag);
        f.load(Ordering::Relaxed) != 0 && f.swap(0, Ordering::AcqRel) != 0
    }
}

/// Initialises a ring's control block (the creator does this once, before sharing it).
///
/// # Safety
/// As for [`RingTx::new`].
pub unsafe fn init(base: *mut u8, cap: usize) {
    let r = Raw::new(base, cap);
    r.u64_at(HEAD).store(0, Ordering::Relaxed);
    r.u64_at(TAIL).store(0, Ordering::Relaxed);
    r.u32_at(CONSUMER_WAITING).store(0, Ordering::Relaxed);
    r.u32_at(PRODUCER_WAITING).store(0, Ordering::Relaxed);
    r.u32_at(CLOSED).store(0, Ordering::Release);
}

/// The producer's end of a ring.
#[derive(Debug)]
pub struct RingTx {
    raw: Raw,
    head: u64,
    /// The consumer's tail as last read.
    tail: u64,
    /// Padding still to skip before the next frame.
    pad_owed: u64,
    /// The tail as [`RingTx::poll_room`] last saw it.
    seen_tail: u64,
    /// Free bytes the last write needed to make any progress.
    need: u64,
}

impl RingTx {
    /// # Safety
    /// `base` must be 64-byte aligned, valid for [`ring_bytes`]`(cap)` bytes while the ring
    /// is used, initialised by [`init`], and have exactly one producer.
    pub unsafe fn new(base: *mut u8, cap: usize) -> RingTx {
        let raw = Raw::new(base, cap);
        let head = raw.u64_at(HEAD).load(Ordering::Acquire);
        let tail = raw.u64_at(TAIL).load(Ordering::Acquire);
        RingTx {
            raw,
            head,
            tail,
            pad_owed: 0,
            seen_tail: tail,
            need: 1,
        }
    }

    /// Free bytes; the consumer's tail is re-read when the cached view has fewer than
    /// `want`.
    fn free(&mut self, want: u64) -> u64 {
        let mut free = self.raw.cap - (self.head - self.tail);
        if free < want {
            self.tail = self.raw.u64_at(TAIL).load(Ordering::Acquire);
            free = self.raw.cap - (self.head - self.tail);
        }
        debug_assert!(self.head >= self.tail && self.head - self.tail <= self.raw.cap);
        free
    }

    /// Whether the last write would make progress now.
    fn has_room(&self) -> bool {
        self.raw.cap - (self.head - self.raw.u64_at(TAIL).load(Ordering::Acquire)) >= self.need
    }

    /// Whether the consumer moved (or the link was cut) since this was last asked.
    pub fn poll_room(&mut self) -> bool {
        let t = self.raw.u64_at(TAIL).load(Ordering::Acquire);
        let fresh = t != self.seen_tail || self.raw.closed();
        self.seen_tail = t;
        fresh
    }

    /// Withdraws a [`RingTx::prepare_sleep`].
    pub fn cancel_sleep(&self) {
        self.raw
            .u32_at(PRODUCER_WAITING)
            .store(0, Ordering::Relaxed);
    }

    /// Copies as much of `parts` (in order) as fits, publishes it and returns the count.
    /// `frame_ends` says the parts end a frame if written whole: the padding to the next
    /// frame is then skipped before anything else is written. The bool asks the caller to
    /// ring the consumer's doorbell.
    pub fn write(&mut self, parts: [&[u8]; 2], frame_ends: bool) -> (usize, bool) {
        let whole = parts[0].len() + parts[1].len();
        let mut free = self.free(self.pad_owed + whole as u64);
        self.need = self.pad_owed + 1;
        if self.pad_owed > 0 {
            if free < self.pad_owed {
                return (0, false);
            }
            self.head += self.pad_owed;
            free -= self.pad_owed;
            self.pad_owed = 0;
        }
        let mut written = 0usize;
        for part in parts {
            let n = (part.len() as u64).min(free);
            if n == 0 {
                continue;
            }
            self.copy_in(&part[..n as usize]);
            free -= n;
            written += n as usize;
        }
        if frame_ends && written == whole {
            let pad = pad_after(self.head);
            let now = pad.min(free);
            self.head += now;
            self.pad_owed = pad - now;
        }
        if written == 0 {
            // Publish a padding skip even when nothing else moved.
            self.raw.u64_at(HEAD).store(self.head, Ordering::Release);
            return (0, false);
        }
        self.raw.u64_at(HEAD).store(self.head, Ordering::Release);
        (written, self.raw.wake_other(CONSUMER_WAITING))
    }

    fn copy_in(&mut self, src: &[u8]) {
        let cap = self.raw.cap;
        let at = self.head % cap;
        let first = (cap - at).min(src.len() as u64) as usize;
        // SAFETY: [head, head + len) is free space (len ≤ free), which the consumer does not
        // read; `at + first ≤ cap` and the wrapped rest starts at the data's beginning.
        unsafe {
            ptr::copy_nonoverlapping(src.as_ptr(), self.raw.data().add(at as usize), first);
            if first < src.len() {
                ptr::copy_nonoverlapping(
                    src.as_ptr().add(first),
                    self.raw.data(),
                    src.len() - first,
                );
            }
        }
        self.head += src.len() as u64;
    }

    /// Announces that the producer will sleep until there is room; returns false (and
    /// withdraws) if room appeared meanwhile.
    pub fn prepare_sleep(&mut self) -> bool {
        self.raw.u32_at(PRODUCER_WAITING).store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.has_room() || self.raw.closed() {
            self.cancel_sleep();
            return false;
        }
        true
    }

    pub fn closed(&self) -> bool {
        self.raw.closed()
    }

    /// Cuts the link: the consumer reads what is there and then sees the end.
    pub fn close(&self) -> bool {
        self.raw.close();
        self.raw.wake_other(CONSUMER_WAITING)
    }
}

/// The consumer's end of a ring.
#[derive(Debug)]
pub struct RingRx {
    raw: Raw,
    tail: u64,
    /// The producer's head as last read.
    head: u64,
    /// Padding still to skip before the next frame.
    skip_owed: u64,
    /// The head as [`RingRx::poll_fresh`] last saw it.
    seen: u64,
    seen_closed: bool,
}

impl RingRx {
    /// # Safety
    /// As [`RingTx::new`], with exactly one consumer.
    pub unsafe fn new(base: *mut u8, cap: usize) -> RingRx {
        let raw = Raw::new(base, cap);
        let tail = raw.u64_at(TAIL).load(Ordering::Acquire);
        RingRx {
            raw,
            tail,
            head: tail,
            skip_owed: 0,
            seen: tail,
            seen_closed: false,
        }
    }

    /// Published bytes not yet read; the producer's head is re-read when the cached view
    /// holds fewer than `want` (a reader waiting for a whole element must see new bytes).
    fn available(&mut self, want: u64) -> u64 {
        if self.head - self.tail < want {
            self.head = self.raw.u64_at(HEAD).load(Ordering::Acquire);
        }
        debug_assert!(self.head >= self.tail && self.head - self.tail <= self.raw.cap);
        let avail = self.head - self.tail;
        if self.skip_owed > 0 {
            // The padding is skipped by `settle`, which publishes it.
            return 0;
        }
        avail
    }

    /// Skips the padding after the last frame once the producer has published it, and
    /// publishes the tail (so a producer waiting for room sees it); returns whether to ring
    /// the producer's doorbell.
    pub fn settle(&mut self) -> bool {
        if self.skip_owed == 0 {
            return false;
        }
        if self.head - self.tail < self.skip_owed {
            self.head = self.raw.u64_at(HEAD).load(Ordering::Acquire);
            if self.head - self.tail < self.skip_owed {
                return false;
            }
        }
        let n = self.skip_owed as usize;
        self.skip_owed = 0;
        self.consume(n)
    }

    /// Whether bytes arrived (or the link was cut) since this was last asked.
    pub fn poll_fresh(&mut self) -> bool {
        let h = self.raw.u64_at(HEAD).load(Ordering::Acquire);
        let closed = self.raw.closed();
        let fresh = h != self.seen || closed != self.seen_closed;
        self.seen = h;
        self.seen_closed = closed;
        fresh
    }

    pub fn closed(&self) -> bool {
        self.raw.closed()
    }

    /// Whether everything published has been read (bytes published just before the
    /// producer went away count).
    pub fn drained(&mut self) -> bool {
        self.head = self.raw.u64_at(HEAD).load(Ordering::Acquire);
        self.settle();
        self.available(1) == 0
    }

    /// Copies up to `dst.len()` bytes out; returns the count and whether to ring the
    /// producer's doorbell.
    pub fn read(&mut self, dst: &mut [u8]) -> (usize, bool) {
        let woke = self.settle();
        let n = self.available(dst.len() as u64).min(dst.len() as u64) as usize;
        if n == 0 {
            return (0, woke);
        }
        let cap = self.raw.cap;
        let at = self.tail % cap;
        let first = (cap - at).min(n as u64) as usize;
        // SAFETY: [tail, tail + n) is published (n ≤ available), which the producer does not
        // write until the tail passes it.
        unsafe {
            ptr::copy_nonoverlapping(self.raw.data().add(at as usize), dst.as_mut_ptr(), first);
            if first < n {
                ptr::copy_nonoverlapping(self.raw.data(), dst.as_mut_ptr().add(first), n - first);
            }
        }
        (n, self.consume(n) | woke)
    }

    /// The published bytes from the read position up to the wrap (at most `max`), to be
    /// used in place and then [`RingRx::consume`]d (call [`RingRx::settle`] first).
    pub fn peek(&mut self, max: usize) -> &[u8] {
        let avail = self.available(max as u64);
        let cap = self.raw.cap;
        let at = self.tail % cap;
        let n = avail.min(cap - at).min(max as u64) as usize;
        // SAFETY: published bytes the producer leaves alone until they are consumed; the
        // borrow of `self` keeps `consume` from running while the slice lives.
        unsafe { std::slice::from_raw_parts(self.raw.data().add(at as usize), n) }
    }

    /// Marks `n` bytes read; returns whether to ring the producer's doorbell.
    pub fn consume(&mut self, n: usize) -> bool {
        debug_assert!(
            n as u64 <= self.head - self.tail,
            "consumed unpublished bytes"
        );
        self.tail += n as u64;
        self.raw.u64_at(TAIL).store(self.tail, Ordering::Release);
        self.raw.wake_other(PRODUCER_WAITING)
    }

    /// A frame of `len` bytes in all (header and payload) has been read: its padding is to
    /// be skipped ([`RingRx::settle`]); returns whether to ring the producer's doorbell.
    pub fn frame_read(&mut self, len: u64) -> bool {
        self.skip_owed += pad_after(len);
        self.settle()
    }

    /// Announces that the consumer will sleep until bytes arrive; returns false (and
    /// withdraws) if they arrived meanwhile.
    pub fn prepare_sleep(&mut self) -> bool {
        self.raw.u32_at(CONSUMER_WAITING).store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.poll_fresh() {
            self.cancel_sleep();
            return false;
        }
        true
    }

    /// Withdraws a [`RingRx::prepare_sleep`].
    pub fn cancel_sleep(&self) {
        self.raw
            .u32_at(CONSUMER_WAITING)
            .store(0, Ordering::Relaxed);
    }

    /// Cuts the link from the consumer's side (the producer's writes then fail).
    pub fn close(&self) -> bool {
        self.raw.close();
        self.raw.wake_other(PRODUCER_WAITING)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A ring in ordinary memory, 64-byte aligned.
    struct Mem(Vec<u64>);

    impl Mem {
        fn new(cap: usize) -> Mem {
            // Over-allocate by a line and align by hand.
            Mem(vec![0u64; (ring_bytes(cap) + 64) / 8])
        }
        fn base(&mut self) -> *mut u8 {
            let p = self.0.as_mut_ptr() as *mut u8;
            // SAFETY: the allocation has 64 spare bytes for the alignment.
            unsafe { p.add(p.align_offset(64)) }
        }
        fn ends(&mut self, cap: usize) -> (RingTx, RingRx) {
            let b = self.base();
            // SAFETY: `b` is aligned and the allocation outlives the ends in each test.
            unsafe {
                init(b, cap);
                (RingTx::new(b, cap), RingRx::new(b, cap))
            }
        }
    }

    #[test]
    fn bytes_come_out_in_order_across_the_wrap() {
        let mut m = Mem::new(64);
        let (mut tx, mut rx) = m.ends(64);
        let data: Vec<u8> = (0..200u8).collect();
        let mut out = Vec::new();
        let mut at = 0;
        while out.len() < data.len() {
            let (n, _) = tx.write([&data[at..(at + 40).min(data.len())], &[]], false);
            at += n;
            let mut buf = [0u8; 24];
            let (got, _) = rx.read(&mut buf);
            out.extend_from_slice(&buf[..got]);
        }
        assert_eq!(out, data);
    }

    #[test]
    fn a_reader_waiting_for_a_whole_element_sees_bytes_published_later() {
        let mut m = Mem::new(64);
        let (mut tx, mut rx) = m.ends(64);
        tx.write([&[1, 2, 3, 4], &[]], false);
        assert_eq!(rx.peek(8), &[1, 2, 3, 4]);
        tx.write([&[5, 6, 7, 8], &[]], false);
        // The cached head holds 4 bytes; asking for 8 must look again.
        assert_eq!(rx.peek(8), &[1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn frames_are_padded_to_eight_bytes() {
        let mut m = Mem::new(64);
        let (mut tx, mut rx) = m.ends(64);
        assert_eq!(tx.write([b"abc", b"de"], true), (5, false));
        assert_eq!(tx.write([b"XY", &[]], false).0, 2);
        let mut five = [0u8; 5];
        assert_eq!(rx.read(&mut five).0, 5);
        rx.frame_read(5);
        assert_eq!(rx.peek(8), b"XY");
    }

    #[test]
    fn a_full_ring_takes_nothing_and_padding_waits_for_room() {
        let mut m = Mem::new(64);
        let (mut tx, mut rx) = m.ends(64);
        assert_eq!(tx.write([&[1u8; 61], &[]], true).0, 61);
        // The 3 bytes of padding filled the ring.
        assert_eq!(tx.write([&[2u8; 8], &[]], false).0, 0);
        let mut buf = [0u8; 64];
        assert_eq!(rx.read(&mut buf[..61]).0, 61);
        rx.frame_read(61);
        assert_eq!(tx.write([&[2u8; 8], &[]], false).0, 8);
        assert_eq!(rx.read(&mut buf).0, 8);
        assert_eq!(&buf[..8], &[2u8; 8]);
    }

    #[test]
    fn sleeping_sides_are_woken() {
        let mut m = Mem::new(64);
        let (mut tx, mut rx) = m.ends(64);
        assert!(rx.prepare_sleep());
        let (_, wake) = tx.write([b"hello", &[]], false);
        assert!(wake, "the consumer slept");
        let (_, wake) = tx.write([b"!", &[]], false);
        assert!(!wake, "woken once");
        assert!(!rx.prepare_sleep(), "data is there");
        tx.write([&[0u8; 58], &[]], false);
        assert!(tx.prepare_sleep(), "full");
        let mut b = [0u8; 8];
        assert!(rx.read(&mut b).1, "the producer slept");
    }

    #[test]
    fn close_ends_the_stream_after_its_bytes() {
        let mut m = Mem::new(64);
        let (mut tx, mut rx) = m.ends(64);
        tx.write([b"last", &[]], false);
        tx.close();
        assert!(rx.closed() && !rx.drained());
        let mut b = [0u8; 8];
        assert_eq!(rx.read(&mut b).0, 4);
        assert!(rx.drained());
        assert!(tx.closed());
    }

    #[test]
    fn two_threads_stream_through_a_small_ring() {
        let mut m = Mem::new(256);
        let (mut tx, mut rx) = m.ends(256);
        let total = 1 << 20;
        let writer = std::thread::spawn(move || {
            let data: Vec<u8> = (0..total).map(|i| (i * 7 % 251) as u8).collect();
            let mut at = 0;
            while at < total {
                at += tx.write([&data[at..(at + 1000).min(total)], &[]], false).0;
                std::hint::spin_loop();
            }
        });
        let mut got = 0usize;
        let mut buf = vec![0u8; 333];
        while got < total {
            let (n, _) = rx.read(&mut buf);
            for (k, b) in buf[..n].iter().enumerate() {
                assert_eq!(*b, ((got + k) * 7 % 251) as u8, "byte {}", got + k);
            }
            got += n;
        }
        writer.join().unwrap();
    }

    proptest! {
        /// Frames of any sizes, written and read in any pieces, arrive whole and aligned.
        #[test]
        fn frames_survive_any_chunking(
            lens in proptest::collection::vec(0usize..300, 1..20),
            wchunk in 1usize..200,
            rchunk in 1usize..200,
        ) {
            let cap = 256;
            let mut m = Mem::new(cap);
            let (mut tx, mut rx) = m.ends(cap);
            let frames: Vec<Vec<u8>> = lens
                .iter()
                .enumerate()
                .map(|(f, &l)| (0..l).map(|i| (f * 31 + i) as u8).collect())
                .collect();
            let (mut wf, mut wat) = (0, 0);
            let (mut rf, mut rat) = (0, 0);
            let mut cur = Vec::new();
            let mut spins = 0;
            while rf < frames.len() {
                spins += 1;
                prop_assert!(spins < 1_000_000, "stuck");
                if wf < frames.len() {
                    let f = &frames[wf];
                    let end = (wat + wchunk).min(f.len());
                    let (n, _) = tx.write([&f[wat..end], &[]], end == f.len());
                    wat += n;
                    if wat == f.len() && (n > 0 || f.is_empty()) {
                        wf += 1;
                        wat = 0;
                    }
                }
                let want = frames[rf].len();
                if rat == want {
                    prop_assert_eq!(&cur, &frames[rf]);
                    rx.frame_read(want as u64);
                    cur.clear();
                    rf += 1;
                    rat = 0;
                    continue;
                }
                let mut buf = vec![0u8; rchunk.min(want - rat)];
                let (n, _) = rx.read(&mut buf);
                cur.extend_from_slice(&buf[..n]);
                rat += n;
            }
        }
    }
}
