//! The heartbeat's wire format, without sockets: a beat to bytes ([`encode`]) and bytes to
//! a beat ([`decode`], a pure function that never panics on any input), and the MAC that
//! proves the job's key ([`verify`]).
//!
//! A beat goes from one rank to one peer on a connection of the heartbeat's own
//! (`crate::health`), one every period. Integers are little-endian.
//!
//! | offset     | bytes | field                                                              |
//! |------------|-------|--------------------------------------------------------------------|
//! | 0          | 4     | magic `b"TCHB"`                                                    |
//! | 4          | 1     | version ([`VERSION`])                                              |
//! | 5          | 1     | flags: bit 0 in a call, bit 1 waiting on the receiver, bit 2 goodbye; others 0 |
//! | 6          | 1     | `n`, reports carried (at most [`MAX_REPORTS`])                     |
//! | 7          | 1     | 0                                                                  |
//! | 8          | 4     | sender's world rank                                                |
//! | 12         | 4     | receiver's world rank                                              |
//! | 16         | 8     | beat number (increases strictly per sender; replays are refused)   |
//! | 24         | 8     | calls completed                                                    |
//! | 32         | 4     | call in flight: its communicator (a hash of its name); 0 outside calls |
//! | 36         | 8     | call in flight: its sequence number; 0 outside calls               |
//! | 44         | 8     | bytes moved                                                        |
//! | 52         | 12·n  | reports: rank `u32`, observer `u32`, state code `u8` (`PeerState::code`), 3 bytes 0 |
//! | 52 + 12·n  | 32    | MAC (`auth::Use::Heartbeat`) of the bytes before it and the receiver's heartbeat nonce |
//!
//! A beat is at most [`MAX_BEAT`] bytes. The receiver checks, in this order: layout
//! ([`decode`]), the MAC under the job's key with its own nonce (published with its
//! heartbeat address, so a beat made for one receiver or run passes for no other), that
//! it is the receiver, and that the beat number is above the last it accepted from that
//! sender. A stranger without the key cannot make a beat pass, so cannot fake liveness.

use thiserror::Error;
use topoccl_plan::Rank;
use topoccl_watch::health::{CallId, PeerState, Progress, Report};

use crate::auth::{JobKey, Use, MAC_LEN, NONCE_LEN};

/// The magic at the start of every beat.
pub const MAGIC: [u8; 4] = *b"TCHB";
/// The format's version.
pub const VERSION: u8 = 1;
/// Bytes before the reports.
pub const HEAD_LEN: usize = 52;
/// Bytes of one report.
pub const REPORT_LEN: usize = 12;
/// Reports a beat carries at most.
pub const MAX_REPORTS: usize = 16;
/// The longest beat.
pub const MAX_BEAT: usize = HEAD_LEN + REPORT_LEN * MAX_REPORTS + MAC_LEN;

const IN_CALL: u8 = 1;
const WAITING: u8 = 2;
const GOODBYE: u8 = 4;

/// A beat's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Beat {
    pub from: Rank,
    pub to: Rank,
    pub number: u64,
    pub progress: Progress,
    pub goodbye: bool,
    pub reports: Vec<Report>,
}

/// Why bytes are not a beat.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum BeatError {
    #[error("not a heartbeat (magic {0:02x?}, expected \"TCHB\")")]
    Magic([u8; 4]),
    #[error("heartbeat version {0}; this build speaks version {VERSION}")]
    Version(u8),
    #[error("a heartbeat carries {0} reports; at most {MAX_REPORTS} are allowed")]
    TooManyReports(u8),
    #[error("a heartbeat's reserved bits or bytes are not zero")]
    Reserved,
    #[error("a heartbeat's report {index} has state code {code}, which is none (0-5)")]
    StateCode { index: usize, code: u8 },
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The beat's bytes, MAC included (made with `key` for the receiver's `nonce`). Reports
/// beyond [`MAX_REPORTS`] are left out.
pub fn encode(beat: &Beat, key: &JobKey, nonce: &[u8; NONCE_LEN]) -> Vec<u8> {
    let reports = &beat.reports[..beat.reports.len().min(MAX_REPORTS)];
    let mut b = Vec::with_capacity(HEAD_LEN + REPORT_LEN * reports.len() + MAC_LEN);
    b.extend_from_slice(&MAGIC);
    b.push(VERSION);
    let p = &beat.progress;
    let flags = if p.in_call.is_some() { IN_CALL } else { 0 }
        | if p.waiting_on_you { WAITING } else { 0 }
        | if beat.goodbye { GOODBYE } else { 0 };
    b.push(flags);
    b.push(reports.len() as u8);
    b.push(0);
    b.extend_from_slice(&beat.from.to_le_bytes());
    b.extend_from_slice(&beat.to.to_le_bytes());
    b.extend_from_slice(&beat.number.to_le_bytes());
    b.extend_from_slice(&p.calls_completed.to_le_bytes());
    let call = p.in_call.unwrap_or(CallId { comm: 0, seq: 0 });
    b.extend_from_slice(&call.comm.to_le_bytes());
    b.extend_from_slice(&call.seq.to_le_bytes());
    b.extend_from_slice(&p.bytes.to_le_bytes());
    for r in reports {
        b.extend_from_slice(&r.rank.to_le_bytes());
        b.extend_from_slice(&r.observer.to_le_bytes());
        b.extend_from_slice(&[r.state.code(), 0, 0, 0]);
    }
    let mac = key.mac(Use::Heartbeat, &[nonce, &b]);
    b.extend_from_slice(&mac);
    b
}

/// Reads one beat from the start of `buf`: `Ok(None)` while it is incomplete, else the
/// beat and the bytes it took. The MAC is not checked here ([`verify`]).
pub fn decode(buf: &[u8]) -> Result<Option<(Beat, usize)>, BeatError> {
    if buf.len() < 8 {
        // Check what is there already, so garbage is refused early.
        let n = buf.len().min(4);
        if buf[..n] != MAGIC[..n] {
            let mut m = [0u8; 4];
            m[..n].copy_from_slice(&buf[..n]);
            return Err(BeatError::Magic(m));
        }
        return Ok(None);
    }
    let magic = [buf[0], buf[1], buf[2], buf[3]];
    if magic != MAGIC {
        return Err(BeatError::Magic(magic));
    }
    if buf[4] != VERSION {
        return Err(BeatError::Version(buf[4]));
    }
    let (flags, n) = (buf[5], buf[6]);
    if n as usize > MAX_REPORTS {
        return Err(BeatError::TooManyReports(n));
    }
    if flags & !(IN_CALL | WAITING | GOODBYE) != 0 || buf[7] != 0 {
        return Err(BeatError::Reserved);
    }
    let len = HEAD_LEN + REPORT_LEN * n as usize + MAC_LEN;
    if buf.len() < len {
        return Ok(None);
    }
    // Without a call in flight its fields are zero, so one beat has one encoding.
    if flags & IN_CALL == 0 && buf[32..44].iter().any(|&b| b != 0) {
        return Err(BeatError::Reserved);
    }
    let in_call = (flags & IN_CALL != 0).then(|| CallId {
        comm: u32_at(buf, 32),
        seq: u64_at(buf, 36),
    });
    let mut reports = Vec::with_capacity(n as usize);
    for index in 0..n as usize {
        let at = HEAD_LEN + REPORT_LEN * index;
        if buf[at + 9..at + 12] != [0, 0, 0] {
            return Err(BeatError::Reserved);
        }
        let code = buf[at + 8];
        let state = PeerState::from_code(code, 0).ok_or(BeatError::StateCode { index, code })?;
        reports.push(Report {
            rank: u32_at(buf, at),
            observer: u32_at(buf, at + 4),
            state,
        });
    }
    let beat = Beat {
        from: u32_at(buf, 8),
        to: u32_at(buf, 12),
        number: u64_at(buf, 16),
        progress: Progress {
            calls_completed: u64_at(buf, 24),
            in_call,
            bytes: u64_at(buf, 44),
            waiting_on_you: flags & WAITING != 0,
        },
        goodbye: flags & GOODBYE != 0,
        reports,
    };
    Ok(Some((beat, len)))
}

/// Whether `bytes` (one whole beat as [`decode`] measured it) carries the MAC of the
/// job's `key` for the receiver's `nonce`.
pub fn verify(bytes: &[u8], key: &JobKey, nonce: &[u8; NONCE_LEN]) -> bool {
    if bytes.len() < MAC_LEN {
        return false;
    }
    let (body, mac) = bytes.split_at(bytes.len() - MAC_LEN);
    key.verify(Use::Heartbeat, &[nonce, body], mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Beat {
        Beat {
            from: 3,
            to: 1,
            number: 77,
            progress: Progress {
                calls_completed: 12,
                in_call: Some(CallId {
                    comm: 0xdead,
                    seq: 13,
                }),
                bytes: 1 << 40,
                waiting_on_you: true,
            },
            goodbye: false,
            reports: vec![Report {
                rank: 5,
                observer: 4,
                state: PeerState::DeadExited,
            }],
        }
    }

    #[test]
    fn a_beat_round_trips_and_its_mac_proves_key_and_receiver() {
        let key = JobKey::from_secret(b"s");
        let nonce = [7u8; NONCE_LEN];
        let b = encode(&sample(), &key, &nonce);
        assert_eq!(b.len(), HEAD_LEN + REPORT_LEN + MAC_LEN);
        let (back, used) = decode(&b).unwrap().unwrap();
        assert_eq!((back, used), (sample(), b.len()));
        assert!(verify(&b, &key, &nonce));
        assert!(!verify(&b, &JobKey::from_secret(b"t"), &nonce));
        assert!(!verify(&b, &key, &[8u8; NONCE_LEN]));
        let mut forged = b.clone();
        forged[44] ^= 1; // more bytes moved
        assert!(!verify(&forged, &key, &nonce));
        // Every prefix is incomplete, never an error.
        for n in 0..b.len() {
            assert_eq!(decode(&b[..n]), Ok(None), "{n}");
        }
    }

    #[test]
    fn bad_layouts_are_named() {
        let key = JobKey::from_secret(b"s");
        let b = encode(&sample(), &key, &[0; NONCE_LEN]);
        let mut x = b.clone();
        x[0] = b'X';
        assert!(matches!(decode(&x), Err(BeatError::Magic(_))));
        assert!(matches!(
            decode(b"GET / HTTP/1.0"),
            Err(BeatError::Magic(_))
        ));
        assert!(matches!(decode(b"XY"), Err(BeatError::Magic(_))));
        let mut x = b.clone();
        x[4] = 9;
        assert_eq!(decode(&x), Err(BeatError::Version(9)));
        let mut x = b.clone();
        x[6] = 17;
        assert_eq!(decode(&x), Err(BeatError::TooManyReports(17)));
        let mut x = b.clone();
        x[5] |= 0x80;
        assert_eq!(decode(&x), Err(BeatError::Reserved));
        let mut x = b.clone();
        x[HEAD_LEN + 8] = 6;
        assert_eq!(decode(&x), Err(BeatError::StateCode { index: 0, code: 6 }));
        assert!(BeatError::Version(9).to_string().contains("version 9"));
    }

    proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            crate::fuzzing::heartbeat(&bytes);
        }

        #[test]
        fn any_beat_round_trips(from: u32, to: u32, number: u64, done: u64, bytes: u64,
                                call in proptest::option::of((any::<u32>(), any::<u64>())),
                                waiting: bool, goodbye: bool,
                                reports in proptest::collection::vec((any::<u32>(), any::<u32>(), 0u8..6), 0..16)) {
            let beat = Beat {
                from, to, number, goodbye,
                progress: Progress {
                    calls_completed: done,
                    in_call: call.map(|(comm, seq)| CallId { comm, seq }),
                    bytes,
                    waiting_on_you: waiting,
                },
                reports: reports.into_iter().map(|(rank, observer, code)| Report {
                    rank, observer, state: PeerState::from_code(code, 0).expect("valid code"),
                }).collect(),
            };
            let key = JobKey::from_secret(b"k");
            let b = encode(&beat, &key, &[1; NONCE_LEN]);
            prop_assert!(b.len() <= MAX_BEAT);
            let (back, used) = decode(&b).unwrap().unwrap();
            prop_assert_eq!(used, b.len());
            prop_assert_eq!(back, beat);
        }
    }
}
