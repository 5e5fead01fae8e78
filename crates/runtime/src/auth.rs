//! The job secret, and the MACs that prove knowledge of it without sending it.
//!
//! A job's ranks (and its store, when it has the secret) share one [`JobKey`], derived
//! from the secret with BLAKE3's key derivation. What travels are MACs (keyed BLAKE3 over
//! a context label and length-prefixed parts), each over something fresh, so that one
//! seen on the wire proves nothing later:
//!
//! | MAC          | over                                                        | checked by   |
//! |--------------|-------------------------------------------------------------|--------------|
//! | peer hello   | the hello's fields, the acceptor's instance nonce, and under TLS the session's exporter value | the acceptor |
//! | peer ack     | the hello's MAC (so the session's binding too)              | the dialler  |
//! | store client | the store server's nonce for this connection, and under TLS the session's exporter value | the server   |
//! | heartbeat    | the beat's bytes and the receiver's heartbeat nonce (`crate::beat`)   | the receiver |
//!
//! Under `TOPOCCL_TLS` the exporter value (`transport::tls`) binds each proof to its TLS
//! session: a proof relayed by a man in the middle into a session of its own is refused.
//!
//! An instance nonce is drawn by every rank when its transports open and published with
//! its endpoint: a hello made for one communicator cannot open a connection to another,
//! nor to a later run of the same job. Connections are made once per communicator, so a
//! replayed hello finds its lane taken. Comparisons are in constant time.
//!
//! No I/O, no clock: nonces and secrets come from the caller, who draws them with
//! [`fresh`] (the OS's random source).

use std::fmt;

/// Bytes of a key and of a MAC.
pub const MAC_LEN: usize = 32;
/// Bytes of a nonce.
pub const NONCE_LEN: usize = 16;

/// `N` bytes from the OS's random source (secrets, nonces, job ids); the error says what
/// they were for.
pub fn fresh<const N: usize>(what: &str) -> Result<[u8; N], String> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| format!("no randomness for {what}: {e}"))?;
    Ok(b)
}

/// What a MAC is for: its label keeps a MAC made for one use from passing for another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    PeerHello,
    PeerAck,
    StoreClient,
    Heartbeat,
    /// A replacement asking to join a running job (`crate::elastic`).
    Join,
}

impl Use {
    fn label(self) -> &'static [u8] {
        match self {
            Use::PeerHello => b"topoccl/1 peer hello",
            Use::PeerAck => b"topoccl/1 peer ack",
            Use::StoreClient => b"topoccl/1 store client",
            Use::Heartbeat => b"topoccl/1 heartbeat",
            Use::Join => b"topoccl/1 join request",
        }
    }
}

/// The key every party of a job derives from its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JobKey([u8; MAC_LEN]);

impl fmt::Debug for JobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JobKey(…)")
    }
}

impl JobKey {
    /// The key of a secret (`TOPOCCL_SECRET`'s text, or random bytes).
    pub fn from_secret(secret: &[u8]) -> JobKey {
        JobKey(blake3::derive_key("topoccl 2026-12-04 job secret", secret))
    }

    /// The MAC of `parts` for `what`.
    pub fn mac(&self, what: Use, parts: &[&[u8]]) -> [u8; MAC_LEN] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(what.label());
        for p in parts {
            h.update(&(p.len() as u64).to_le_bytes());
            h.update(p);
        }
        *h.finalize().as_bytes()
    }

    /// Whether `mac` is the MAC of `parts` for `what` (in constant time).
    pub fn verify(&self, what: Use, parts: &[&[u8]], mac: &[u8]) -> bool {
        let Ok(mac) = <[u8; MAC_LEN]>::try_from(mac) else {
            return false;
        };
        blake3::Hash::from(self.mac(what, parts)) == blake3::Hash::from(mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mac_proves_the_key_the_use_and_every_part() {
        let k = JobKey::from_secret(b"alpha");
        let m = k.mac(Use::PeerHello, &[b"ab", b"c"]);
        assert!(k.verify(Use::PeerHello, &[b"ab", b"c"], &m));
        // Another key, use, split of the parts or part fails.
        assert!(!JobKey::from_secret(b"beta").verify(Use::PeerHello, &[b"ab", b"c"], &m));
        assert!(!k.verify(Use::PeerAck, &[b"ab", b"c"], &m));
        assert!(!k.verify(Use::PeerHello, &[b"a", b"bc"], &m));
        assert!(!k.verify(Use::PeerHello, &[b"ab", b"d"], &m));
        assert!(!k.verify(Use::PeerHello, &[b"ab", b"c"], &m[..31]));
    }

    #[test]
    fn the_key_never_prints() {
        assert_eq!(format!("{:?}", JobKey::from_secret(b"s")), "JobKey(…)");
    }
}
