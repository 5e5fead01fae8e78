//! Every limit of the stores, named in one place, and the checks of keys and values
//! against them that every store makes before doing anything.
//!
//! Sizes are in bytes, durations say their unit in their type. The TCP store's limits
//! bound what one client can make a server hold or do (frames, keys, connections,
//! waits); the file store's bound its file names and its polling.

use std::time::Duration;

use super::{shown, StoreError};

// ---------------------------------------------------------------------------------------
// Keys and values (every store)

/// Largest key, in bytes.
pub const MAX_KEY_LEN: usize = 4096;
/// Largest value, in bytes.
pub const MAX_VALUE_LEN: usize = 16 << 20;

/// Characters of a key that error messages show (longer keys are cut).
pub(super) const SHOWN_KEY_CHARS: usize = 60;

// ---------------------------------------------------------------------------------------
// TCP store: the wire

/// Largest frame body: a SET of the largest key and value, with room for the headers.
pub(super) const MAX_FRAME: usize = MAX_VALUE_LEN + MAX_KEY_LEN + 64;
// A frame holds the largest SET (opcode, key length, key, value length, value), and its
// length fits the u32 in front of it.
const _: () = assert!(1 + 4 + MAX_KEY_LEN + 4 + MAX_VALUE_LEN <= MAX_FRAME);
const _: () = assert!(MAX_FRAME <= u32::MAX as usize);
/// Largest refusal or error message a server sends, and a client reads in a refusal.
pub(super) const MAX_MESSAGE_LEN: usize = 4096;
/// Keys per WAIT request; the client splits longer lists.
pub(super) const MAX_WAIT_KEYS: usize = 65_536;

// ---------------------------------------------------------------------------------------
// TCP store: the server (and the in-memory store, which shares its state)

/// Connections the server serves at once.
pub(super) const MAX_CONNECTIONS: usize = 4096;
/// Connections from one address that have not finished their hello; more are refused, so
/// that idle connections from one stranger cannot take every slot.
pub(super) const MAX_UNWELCOMED_PER_ADDRESS: usize = 256;
/// How long a new connection has to send its hello before it is closed.
pub(super) const HELLO_DEADLINE: Duration = Duration::from_secs(5);
/// Keys the store holds, all jobs together.
pub(super) const MAX_ENTRIES: usize = 4 << 20;
/// Bytes of keys and values the store holds, all jobs together.
pub(super) const MAX_STORE_BYTES: usize = 1 << 30;
/// Keys one job holds by default (`topoccl store --job-max-keys`): 8 per rank of a
/// 131,072-rank job (its world and splits each publish one endpoint per rank).
pub const JOB_MAX_KEYS: usize = 1 << 20;
/// Bytes of keys and values one job holds by default (`topoccl store --job-max-bytes`):
/// 4 KiB per rank of a 131,072-rank job (an endpoint is under 512 bytes; with its world,
/// three splits, metrics and a report the rendezvous takes under 2,800 per rank).
pub const JOB_MAX_BYTES: usize = 512 << 20;
/// How long a proven client may leave its connection without a request before the server
/// closes it (`topoccl store --idle-timeout`). A client waiting for keys (GET, WAIT) is
/// not idle: the clock runs only between a reply and the next request. Clients reopen a
/// closed connection on their next call.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest wait the server honours (a longer timeout is cut to this).
pub(super) const MAX_SERVER_WAIT: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often a server thread waiting for keys checks that its client is still there.
pub(super) const LIVENESS_PERIOD: Duration = Duration::from_millis(250);
/// Connection threads keep frames on the heap; a small stack lets thousands coexist.
pub(super) const CONN_THREAD_STACK: usize = 256 << 10;
/// How long a refusal may take to send before the connection is closed anyway.
pub(super) const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// TCP keepalive on server connections: idle time before the first probe, and between
/// probes.
pub(super) const KEEPALIVE_TIME: Duration = Duration::from_secs(30);
pub(super) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Pause after a failed accept or poll before trying again.
pub(super) const ACCEPT_RETRY: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------
// TCP store: the client (and the server's bound on its own socket I/O)

/// Connections one client opens at once (one per call in flight).
pub(super) const MAX_CLIENT_CONNECTIONS: usize = 256;
/// Connections a client keeps open between calls.
pub(super) const MAX_IDLE_CONNECTIONS: usize = 8;
/// Default bound on any I/O that is not a wait for keys.
pub(super) const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long past its deadline a client waits for the server's TIMEOUT reply.
pub(super) const REPLY_GRACE: Duration = Duration::from_secs(5);
/// Connect retries: first pause and largest pause.
pub(super) const RETRY_FIRST: Duration = Duration::from_millis(10);
pub(super) const RETRY_MAX: Duration = Duration::from_millis(500);
/// Shortest time one connection attempt is given, however close the deadline.
pub(super) const MIN_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------
// File store

/// Longest escaped key used directly as a file name (file names are limited to 255).
pub(super) const MAX_NAME_LEN: usize = 200;
/// Polling for keys: first pause and longest pause.
pub(super) const POLL_FIRST: Duration = Duration::from_millis(1);
pub(super) const POLL_MAX: Duration = Duration::from_millis(50);
/// A counter's lock is held for a read and a write only, so poll it more tightly.
pub(super) const LOCK_POLL_MAX: Duration = Duration::from_millis(10);
/// Default bound on waiting for a counter's lock.
pub(super) const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(30);
/// Reads that meet a stale NFS handle (the file was replaced under them) are retried.
pub(super) const STALE_RETRIES: usize = 5;

// ---------------------------------------------------------------------------------------
// etcd store

/// Lease TTL by default (`TOPOCCL_ETCD_LEASE_TTL`): a dead rank's keys vanish this long
/// after its last keepalive. Long enough to ride out a leader election (about a second)
/// and a busy host; short enough that a restarted job does not trip over its old keys.
pub const ETCD_LEASE_TTL: Duration = Duration::from_secs(10);
/// Shortest and longest lease TTL accepted, in seconds (etcd raises shorter ones to its
/// minimum, about 1.5 x its election timeout).
pub(super) const ETCD_MIN_LEASE_TTL_S: u64 = 2;
pub(super) const ETCD_MAX_LEASE_TTL_S: u64 = 3600;
/// Keepalives per TTL: a lease survives two lost keepalives in a row.
pub(super) const ETCD_KEEPALIVES_PER_TTL: u32 = 3;
/// Endpoints in one `etcd://` address.
pub(super) const ETCD_MAX_ENDPOINTS: usize = 16;
/// Largest reply read from etcd: the largest value and key in base64, and room for a
/// transaction's worth of keys and the headers.
pub(super) const ETCD_MAX_REPLY: usize = (MAX_VALUE_LEN + MAX_KEY_LEN).div_ceil(3) * 4 + (4 << 20);
/// Polling for keys: first pause and longest pause.
pub(super) const ETCD_POLL_FIRST: Duration = Duration::from_millis(2);
pub(super) const ETCD_POLL_MAX: Duration = Duration::from_millis(50);
/// Lost compare-and-puts of a counter in a row before `add` pauses (a random part of
/// [`ETCD_ADD_PAUSE`]) between tries; it keeps trying until the I/O timeout.
pub(super) const ETCD_ADD_EAGER_TRIES: u32 = 4;
pub(super) const ETCD_ADD_PAUSE: Duration = Duration::from_millis(2);

// ---------------------------------------------------------------------------------------
// Checks

/// Refuses a key longer than [`MAX_KEY_LEN`].
pub(super) fn check_key(key: &str) -> Result<(), StoreError> {
    if key.len() > MAX_KEY_LEN {
        return Err(StoreError::Protocol(format!(
            "key '{}' is {} bytes, more than the limit of {MAX_KEY_LEN}; use a shorter key",
            shown(key),
            key.len()
        )));
    }
    Ok(())
}

/// Refuses a value longer than [`MAX_VALUE_LEN`].
pub(super) fn check_value(key: &str, value: &[u8]) -> Result<(), StoreError> {
    if value.len() > MAX_VALUE_LEN {
        return Err(StoreError::Protocol(format!(
            "value for key '{key}' is {} bytes, more than the limit of {MAX_VALUE_LEN}; \
             store large data elsewhere and publish its location",
            value.len(),
            key = shown(key)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_name_the_limit_and_accept_the_largest() {
        check_key(&"k".repeat(MAX_KEY_LEN)).unwrap();
        let e = check_key(&"k".repeat(MAX_KEY_LEN + 1)).unwrap_err();
        assert!(e.to_string().contains("limit of 4096"), "{e}");
        check_value("v", &vec![0; MAX_VALUE_LEN]).unwrap();
        let e = check_value("v", &vec![0; MAX_VALUE_LEN + 1]).unwrap_err();
        assert!(e.to_string().contains("'v'"), "{e}");
    }
}
