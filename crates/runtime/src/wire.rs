//! What goes over the sockets. All integers are little-endian.
//!
//! A connection starts with a **hello** from the lower rank (the one that connects) and an
//! **ack** from the higher one. The hello's MAC proves the dialler knows the job's secret
//! and the ack's MAC proves the same of the acceptor (`crate::auth`); the secret itself
//! never travels. Then it carries **frames**: a fixed 56-byte header and
//! `len` payload bytes. Data frames carry one message of a plan; the header names the
//! collective call (sequence number, and a fingerprint of spec, algorithm and parameters)
//! so a rank that entered a different collective is detected, not silently mixed in.
//!
//! ```text
//! hello (72 B): magic "TOCH" u32 | version u16 | purpose u8 | 0 u8 | stream u16 | 0 u16 |
//!               world u32 | rank u32 | target u32 | job u64 | comm u64 | mac [32]
//! ack:          magic "TOCA" u32 | status u8 | length u16 | accepted: mac [32];
//!               refused: reason (UTF-8, ≤ 512 B)
//! frame (56 B): magic "TOCL" u32 | version u8 | kind u8 | collective u8 | dtype u8 |
//!               op u8 | flags u8 | channel u16 | link seq u32 | call seq u64 | count u64 |
//!               len u64 | fingerprint u64 | root u32 | 0 u32
//! ```
//!
//! **Flags** travel with the data: a rank ORs the flags of every frame it receives into
//! every frame it sends later in the same call. In a call where every rank's output
//! depends on every rank's input (all-reduce, all-gather, reduce-scatter, all-to-all,
//! barrier), a flag set by any rank on entry has therefore reached every rank when the
//! call ends — an agreement at a call boundary that costs no message ([`FLAG_REPLAN`]:
//! `crate::replan`). Unknown flag bits are refused.

use topoccl_plan::{Collective, DType, Rank, ReduceOp};

/// 2: MACs in the hello and the ack instead of the secret in the hello.
pub const VERSION: u8 = 2;
pub const HELLO_LEN: usize = 72;
/// Where a hello's MAC starts: it covers the bytes before.
pub const HELLO_MAC_AT: usize = 40;
pub const HEADER_LEN: usize = 56;
pub const ACK_FIXED_LEN: usize = 7;
pub const MAX_REASON_LEN: usize = 512;
/// The longest reason an abort notice carries, in bytes.
pub const MAX_NOTICE_REASON: usize = 1024;
/// Abort notices are small; anything larger is garbage.
pub const MAX_ABORT_LEN: u64 = 4096;
/// Frame flag: a rank asks for a re-plan at the end of this call (`crate::replan`).
pub const FLAG_REPLAN: u8 = 1;
/// Every flag a frame may carry.
pub const FLAGS_KNOWN: u8 = FLAG_REPLAN;

const HELLO_MAGIC: u32 = u32::from_le_bytes(*b"TOCH");
const ACK_MAGIC: u32 = u32::from_le_bytes(*b"TOCA");
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"TOCL");

/// What a connection is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Plan messages; `stream` of the peer's data streams.
    Data,
    /// Abort notices.
    Control,
}

/// The first bytes on a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub purpose: Purpose,
    pub stream: u16,
    pub world: u32,
    /// The connecting rank.
    pub rank: Rank,
    /// The rank it means to reach.
    pub target: Rank,
    pub job: u64,
    pub comm: u64,
    /// `auth::Use::PeerHello` over the bytes before it and the acceptor's instance nonce.
    pub mac: [u8; 32],
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..4].copy_from_slice(&HELLO_MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&(VERSION as u16).to_le_bytes());
        b[6] = match self.purpose {
            Purpose::Data => 0,
            Purpose::Control => 1,
        };
        b[8..10].copy_from_slice(&self.stream.to_le_bytes());
        b[12..16].copy_from_slice(&self.world.to_le_bytes());
        b[16..20].copy_from_slice(&self.rank.to_le_bytes());
        b[20..24].copy_from_slice(&self.target.to_le_bytes());
        b[24..32].copy_from_slice(&self.job.to_le_bytes());
        b[32..40].copy_from_slice(&self.comm.to_le_bytes());
        b[HELLO_MAC_AT..].copy_from_slice(&self.mac);
        b
    }

    pub fn decode(b: &[u8; HELLO_LEN]) -> Result<Hello, String> {
        if u32_at(b, 0) != HELLO_MAGIC {
            return Err(format!(
                "not a topoccl connection (first bytes {:02x?})",
                &b[0..4]
            ));
        }
        let version = u16_at(b, 4);
        if version != VERSION as u16 {
            return Err(format!(
                "protocol version {version}, expected {VERSION}: mixed topoccl versions"
            ));
        }
        let purpose = match b[6] {
            0 => Purpose::Data,
            1 => Purpose::Control,
            x => return Err(format!("unknown connection purpose {x}")),
        };
        let mut mac = [0u8; 32];
        mac.copy_from_slice(&b[HELLO_MAC_AT..]);
        Ok(Hello {
            purpose,
            stream: u16_at(b, 8),
            world: u32_at(b, 12),
            rank: u32_at(b, 16),
            target: u32_at(b, 20),
            job: u64_at(b, 24),
            comm: u64_at(b, 32),
            mac,
        })
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
pub fn clip(text: &str, max: usize) -> &str {
    let mut cut = text.len().min(max);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}

/// The reply to a hello: accepted (with the acceptor's MAC), or refused with the reason.
pub fn encode_ack(result: &Result<[u8; 32], String>) -> Vec<u8> {
    let body: &[u8] = match result {
        Ok(mac) => mac,
        Err(r) => clip(r, MAX_REASON_LEN).as_bytes(),
    };
    let mut b = Vec::with_capacity(ACK_FIXED_LEN + body.len());
    b.extend_from_slice(&ACK_MAGIC.to_le_bytes());
    b.push(u8::from(result.is_err()));
    b.extend_from_slice(&(body.len() as u16).to_le_bytes());
    b.extend_from_slice(body);
    b
}

/// Parses the fixed part of an ack: (refused?, reason length).
pub fn decode_ack_head(b: &[u8; ACK_FIXED_LEN]) -> Result<(bool, usize), String> {
    if u32_at(b, 0) != ACK_MAGIC {
        return Err("the peer answered the handshake with something that is not topoccl".into());
    }
    let len = u16_at(b, 5) as usize;
    if len > MAX_REASON_LEN {
        return Err(format!("handshake reply reason of {len} bytes is too long"));
    }
    Ok((b[4] != 0, len))
}

/// Frame kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A message of a collective's plan.
    Data,
    /// A point-to-point message (`send` / `recv`).
    P2p,
    /// An abort notice (payload: [`AbortNotice`]).
    Abort,
    /// The sender closed the communicator normally; its connections end next.
    Bye,
}

/// What every frame says about itself and the call it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub collective: Option<Collective>,
    pub dtype: DType,
    pub op: ReduceOp,
    pub channel: u16,
    pub link_seq: u32,
    /// Sequence number of the collective call on the communicator (point-to-point: of the
    /// message between the two ranks).
    pub seq: u64,
    /// Elements per rank of the call.
    pub count: u64,
    /// Payload bytes.
    pub len: u64,
    pub fingerprint: u64,
    pub root: u32,
    /// `FLAG_*` bits (see the module doc): carried, never matched.
    pub flags: u8,
}

fn collective_code(c: Option<Collective>) -> u8 {
    c.map(|c| {
        Collective::ALL
            .iter()
            .position(|x| *x == c)
            .expect("listed") as u8
            + 1
    })
    .unwrap_or(0)
}

fn collective_from(code: u8) -> Result<Option<Collective>, String> {
    match code {
        0 => Ok(None),
        c => Collective::ALL
            .get(c as usize - 1)
            .copied()
            .map(Some)
            .ok_or_else(|| format!("unknown collective code {c}")),
    }
}

fn dtype_code(d: DType) -> u8 {
    DType::ALL.iter().position(|x| *x == d).expect("listed") as u8
}

fn op_code(o: ReduceOp) -> u8 {
    ReduceOp::ALL.iter().position(|x| *x == o).expect("listed") as u8
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        b[4] = VERSION;
        b[5] = match self.kind {
            Kind::Data => 1,
            Kind::P2p => 2,
            Kind::Abort => 3,
            Kind::Bye => 4,
        };
        b[6] = collective_code(self.collective);
        b[7] = dtype_code(self.dtype);
        b[8] = op_code(self.op);
        b[9] = self.flags;
        b[10..12].copy_from_slice(&self.channel.to_le_bytes());
        b[12..16].copy_from_slice(&self.link_seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.count.to_le_bytes());
        b[32..40].copy_from_slice(&self.len.to_le_bytes());
        b[40..48].copy_from_slice(&self.fingerprint.to_le_bytes());
        b[48..52].copy_from_slice(&self.root.to_le_bytes());
        b
    }

    /// Decodes a header; any malformed field is an error describing it.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, String> {
        if u32_at(b, 0) != FRAME_MAGIC {
            return Err(format!("malformed frame (bad magic {:02x?})", &b[0..4]));
        }
        if b[4] != VERSION {
            return Err(format!("frame version {}, expected {VERSION}", b[4]));
        }
        let kind = match b[5] {
            1 => Kind::Data,
            2 => Kind::P2p,
            3 => Kind::Abort,
            4 => Kind::Bye,
            k => return Err(format!("malformed frame (unknown kind {k})")),
        };
        let dtype = *DType::ALL
            .get(b[7] as usize)
            .ok_or_else(|| format!("malformed frame (unknown data type {})", b[7]))?;
        let op = *ReduceOp::ALL
            .get(b[8] as usize)
            .ok_or_else(|| format!("malformed frame (unknown reduction {})", b[8]))?;
        if b[9] & !FLAGS_KNOWN != 0 {
            return Err(format!("malformed frame (unknown flags {:#04x})", b[9]));
        }
        let h = Header {
            kind,
            collective: collective_from(b[6])?,
            dtype,
            op,
            channel: u16_at(b, 10),
            link_seq: u32_at(b, 12),
            seq: u64_at(b, 16),
            count: u64_at(b, 24),
            len: u64_at(b, 32),
            fingerprint: u64_at(b, 40),
            root: u32_at(b, 48),
            flags: b[9],
        };
        if matches!(h.kind, Kind::Abort | Kind::Bye) && h.len > MAX_ABORT_LEN {
            return Err(format!("control frame of {} bytes is too long", h.len));
        }
        Ok(h)
    }

    /// "allreduce #17 f32×1048576 sum" — how a peer's call is named in mismatch errors.
    pub fn describe_call(&self) -> String {
        match self.collective {
            Some(c) => describe_call(c, self.seq, self.dtype, self.count, self.op, self.root),
            None => format!("point-to-point message #{}", self.seq),
        }
    }
}

/// Names a collective call for error messages.
pub fn describe_call(
    c: Collective,
    seq: u64,
    dtype: DType,
    count: u64,
    op: ReduceOp,
    root: u32,
) -> String {
    let mut s = format!("{c} #{seq} {dtype}×{count}");
    if c.reduces() {
        s.push(' ');
        s.push_str(op.name());
    }
    if c.rooted() {
        s.push_str(&format!(" root {root}"));
    }
    s
}

/// Payload of an abort frame: who aborts, whom it blames, why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AbortNotice {
    pub origin: Rank,
    pub culprit: Option<Rank>,
    pub reason: String,
}

impl AbortNotice {
    /// The notice as JSON, its reason cut to [`MAX_NOTICE_REASON`] bytes (on a character
    /// boundary: a reason may quote anything, a peer's words included).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&self.clipped()).expect("notice serialises")
    }

    /// The notice as [`AbortNotice::encode`] sends it.
    pub fn clipped(&self) -> AbortNotice {
        AbortNotice {
            reason: clip(&self.reason, MAX_NOTICE_REASON).to_string(),
            ..self.clone()
        }
    }

    pub fn decode(b: &[u8]) -> Result<AbortNotice, String> {
        serde_json::from_slice(b).map_err(|e| format!("unreadable abort notice: {e}"))
    }
}

/// FNV-1a, for fingerprints of collective calls (agreement checks, not security).
pub fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

pub const FNV_OFFSET: u64 = 0xcbf29ce484222325;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> Header {
        Header {
            kind: Kind::Data,
            collective: Some(Collective::AllReduce),
            dtype: DType::BF16,
            op: ReduceOp::Max,
            channel: 3,
            link_seq: 9,
            seq: 17,
            count: 1 << 20,
            len: 4096,
            fingerprint: 0xdead_beef,
            root: 0,
            flags: 0,
        }
    }

    #[test]
    fn round_trips() {
        let h = header();
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        let flagged = Header {
            flags: FLAG_REPLAN,
            ..header()
        };
        assert_eq!(Header::decode(&flagged.encode()).unwrap(), flagged);
        let hello = Hello {
            purpose: Purpose::Control,
            stream: 2,
            world: 8,
            rank: 1,
            target: 5,
            job: 42,
            comm: 7,
            mac: [9; 32],
        };
        assert_eq!(Hello::decode(&hello.encode()).unwrap(), hello);
        let ack = encode_ack(&Err("wrong secret".into()));
        let (refused, len) = decode_ack_head(ack[..7].try_into().unwrap()).unwrap();
        assert!(refused);
        assert_eq!(&ack[7..7 + len], b"wrong secret");
        let ack = encode_ack(&Ok([3; 32]));
        let (refused, len) = decode_ack_head(ack[..7].try_into().unwrap()).unwrap();
        assert!(!refused);
        assert_eq!(&ack[7..7 + len], &[3; 32]);
        let n = AbortNotice {
            origin: 1,
            culprit: Some(2),
            reason: "connection closed".into(),
        };
        assert_eq!(AbortNotice::decode(&n.encode()).unwrap(), n);
        assert_eq!(h.describe_call(), "allreduce #17 bf16×1048576 max");
    }

    #[test]
    fn garbage_is_described() {
        let mut b = header().encode();
        b[0] = b'X';
        assert!(Header::decode(&b).unwrap_err().contains("bad magic"));
        let mut b = header().encode();
        b[5] = 77;
        assert!(Header::decode(&b).unwrap_err().contains("unknown kind"));
        let mut b = header().encode();
        b[9] = 0x80;
        assert!(Header::decode(&b)
            .unwrap_err()
            .contains("unknown flags 0x80"));
        let hello = [0u8; HELLO_LEN];
        assert!(Hello::decode(&hello).unwrap_err().contains("not a topoccl"));
    }

    #[test]
    fn a_long_abort_reason_is_cut_on_a_character_boundary() {
        let n = AbortNotice {
            origin: 0,
            culprit: None,
            reason: "€".repeat(400),
        };
        let back = AbortNotice::decode(&n.encode()).unwrap();
        assert_eq!(back.reason, "€".repeat(MAX_NOTICE_REASON / 3));
    }

    proptest! {
        /// Decoders take any bytes without panicking (the fuzz target's checks).
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2 * HELLO_LEN)) {
            crate::fuzzing::wire(&bytes);
        }
    }
}
