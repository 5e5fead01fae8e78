//! Fault injection at the transport boundary (`TOPOCCL_FAULTS`): delay, cut, corrupt, stall
//! or slow the links between ranks, whatever transport carries them. Tests of timeouts and
//! error naming use it instead of sleeps, and fault drills build on it.
//!
//! Faults act where a rank writes to a peer: every byte any transport sends passes through
//! [`LinkFaults::gate`] first. This module parses the rules and keeps each link's state; it
//! reads no clock (the caller passes `now`) and does no I/O.
//!
//! # Grammar
//!
//! ```text
//! TOPOCCL_FAULTS = rule *( ";" rule )
//! rule           = effect "@" link *( ":" option )
//! effect         = "delay=" DURATION     each frame waits this long before its first byte
//!                | "rate=" BANDWIDTH      bytes leave at most this fast (50MB/s, 1Gbps)
//!                | "drop"                 the connection is cut (the peer sees it close)
//!                | "corrupt"              a frame's header is garbled (the peer refuses it)
//!                | "stall"                nothing more leaves (the peer waits, then times out)
//!                | "loss=" PERCENT "%"    packet loss as TCP shows it: each frame hit is held
//!                                         for a retransmission timeout before it leaves
//! link           = end [ "->" end ]       from -> to; a single end is "from that rank to any"
//! end            = "*" | "rank" N | N     ranks of the launcher's world
//! option         = "after=" SIZE          act once this many bytes have left on the link
//!                | "once"                 act on one frame only (delay, corrupt)
//!                | "seed=" N              the seed of a loss rule's draws (default 0)
//! ```
//!
//! Examples: `delay=5ms@rank1->rank2`, `drop@rank3:after=10MB`, `corrupt@rank0->rank1:once`,
//! `rate=50MB/s@*`. Whitespace around tokens is ignored. A bad spec is refused with the
//! position (1-based character) of the error. Ranks are world ranks (those of `topoccl run`,
//! torchrun, …): a rule applies to every communicator, splits included, on that link.
//!
//! Limits: at most [`MAX_RULES`] rules; durations up to an hour; the first rule that
//! matches a link and effect applies.
//!
//! # Loss
//!
//! TCP (and a ring in shared memory) never loses bytes: a lost packet shows up as a frame
//! that arrives one retransmission timeout late. `loss=P%` models exactly that: each frame
//! on the link is hit with probability P/100 and then waits [`RETRANSMIT_TIMEOUT`] (Linux's
//! minimum RTO, 200 ms) before its first byte leaves. The draws are seeded, not random:
//! frame k of link `from -> to` is hit when `splitmix64(seed ^ (from << 32 | to) + k)`,
//! as a fraction of 2^64, is below P/100 — the same spec, link and traffic give the same
//! frames hit on every run.
//!
//! # Reporting
//!
//! [`LinkFaults::take_started`] says once per rule when it starts acting on a link (its
//! `after=` threshold reached), so the transport can log the moment a fault is injected:
//! fault drills measure detection times from it.

use std::fmt;
use std::time::{Duration, Instant};

use topoccl_plan::units::{parse_bandwidth, parse_bytes, parse_duration};
use topoccl_plan::Rank;

/// The most rules a spec may hold.
pub const MAX_RULES: usize = 64;
/// The longest delay a rule may ask for.
const MAX_DELAY: Duration = Duration::from_secs(3600);
/// How long a frame hit by `loss=` is held: Linux's minimum TCP retransmission timeout
/// (`TCP_RTO_MIN`), the least a lost segment costs on a quiet connection.
pub const RETRANSMIT_TIMEOUT: Duration = Duration::from_millis(200);

/// What a rule does to a link.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Effect {
    Delay(Duration),
    /// Bytes per second.
    Rate(f64),
    Drop,
    Corrupt,
    Stall,
    /// Probability (0 < p ≤ 1) that a frame is lost once and resent after
    /// [`RETRANSMIT_TIMEOUT`].
    Loss(f64),
}

/// One end of a link: a rank or any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Any,
    Rank(Rank),
}

impl End {
    fn matches(self, r: Rank) -> bool {
        match self {
            End::Any => true,
            End::Rank(x) => x == r,
        }
    }
}

/// A parsed rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub effect: Effect,
    pub from: End,
    pub to: End,
    /// Bytes that must have left on the link before the rule acts.
    pub after: u64,
    pub once: bool,
    /// Seed of a loss rule's draws (`seed=`).
    pub seed: u64,
    /// The rule as written, for error messages.
    pub text: String,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A bad spec: what is wrong and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    /// 1-based character position in the spec.
    pub at: usize,
    pub what: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at character {}: {}", self.at, self.what)
    }
}

/// Parses a `TOPOCCL_FAULTS` spec.
pub fn parse(spec: &str) -> Result<Vec<Rule>, SpecError> {
    let mut rules = Vec::new();
    let mut start = 0;
    for part in spec.split(';') {
        let at = start;
        start += part.len() + 1;
        if part.trim().is_empty() {
            continue;
        }
        if rules.len() == MAX_RULES {
            return Err(SpecError {
                at: at + 1,
                what: format!("more than {MAX_RULES} rules"),
            });
        }
        rules.push(parse_rule(part, at)?);
    }
    Ok(rules)
}

/// `text` is one rule; `base` its offset in the whole spec.
fn parse_rule(text: &str, base: usize) -> Result<Rule, SpecError> {
    let err = |off: usize, what: String| SpecError {
        at: base + off + 1,
        what,
    };
    // Offsets of the pieces, so errors point into the spec.
    let (effect_s, rest, at_off) = match text.find('@') {
        Some(i) => (&text[..i], &text[i + 1..], i + 1),
        None => {
            return Err(err(
                text.len(),
                format!(
                    "'{}' has no '@LINK' (for example delay=5ms@rank1->rank2)",
                    text.trim()
                ),
            ))
        }
    };
    let lead = effect_s.len() - effect_s.trim_start().len();
    let effect = parse_effect(effect_s.trim()).map_err(|w| err(lead, w))?;
    let mut pieces = rest.split(':');
    let link_s = pieces.next().unwrap_or_default();
    let (from, to) = parse_link(link_s).map_err(|(o, w)| err(at_off + o, w))?;
    let mut after = 0;
    let mut once = false;
    let mut seed = 0;
    let mut off = at_off + link_s.len() + 1;
    for opt in pieces {
        let o = opt.trim();
        let lead = opt.len() - opt.trim_start().len();
        if o == "once" {
            if !matches!(effect, Effect::Delay(_) | Effect::Corrupt) {
                return Err(err(
                    off + lead,
                    "'once' applies to delay and corrupt only".into(),
                ));
            }
            once = true;
        } else if let Some(v) = o.strip_prefix("seed=") {
            if !matches!(effect, Effect::Loss(_)) {
                return Err(err(off + lead, "'seed=' applies to loss only".into()));
            }
            seed = v.trim().parse::<u64>().map_err(|_| {
                err(
                    off + lead + 5,
                    format!("seed '{}' is not a whole number (0 to 2^64-1)", v.trim()),
                )
            })?;
        } else if let Some(v) = o.strip_prefix("after=") {
            after = if v.trim() == "0" {
                0
            } else {
                parse_bytes(v).map_err(|w| err(off + lead + 6, w))?
            };
        } else {
            return Err(err(
                off + lead,
                format!("unknown option '{o}'; use after=SIZE, once or seed=N"),
            ));
        }
        off += opt.len() + 1;
    }
    Ok(Rule {
        effect,
        from,
        to,
        after,
        once,
        seed,
        text: text.trim().to_string(),
    })
}

fn parse_effect(s: &str) -> Result<Effect, String> {
    if let Some(v) = s.strip_prefix("delay=") {
        let secs = parse_duration(v)?;
        let d = Duration::from_secs_f64(secs);
        if d > MAX_DELAY {
            return Err(format!("delay '{v}' is more than an hour"));
        }
        return Ok(Effect::Delay(d));
    }
    if let Some(v) = s.strip_prefix("rate=") {
        return parse_bandwidth(v).map(Effect::Rate);
    }
    if let Some(v) = s.strip_prefix("loss=") {
        return parse_loss(v).map(Effect::Loss);
    }
    match s {
        "drop" => Ok(Effect::Drop),
        "corrupt" => Ok(Effect::Corrupt),
        "stall" => Ok(Effect::Stall),
        "" => Err("missing effect before '@'".into()),
        _ => Err(format!(
            "unknown effect '{s}'; use delay=DURATION, rate=BANDWIDTH, loss=PERCENT%, drop, \
             corrupt or stall"
        )),
    }
}

/// `loss=` value: a percentage above 0 and at most 100, written with `%` (`0.5%`, `2%`).
fn parse_loss(v: &str) -> Result<f64, String> {
    let t = v.trim();
    let Some(num) = t.strip_suffix('%') else {
        return Err(format!(
            "loss '{t}' needs a percentage with '%' (for example loss=1%)"
        ));
    };
    match num.trim().parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 100.0 => Ok(p / 100.0),
        _ => Err(format!(
            "loss '{t}' must be a percentage above 0% and at most 100%"
        )),
    }
}

/// splitmix64: the draw of a loss rule (a fixed, documented mixing function).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Whether frame `frame` of link `from -> to` is hit by a loss rule of probability `p`
/// and `seed` (the formula of the module doc).
pub fn loss_hits(seed: u64, from: Rank, to: Rank, frame: u64, p: f64) -> bool {
    let key = seed ^ ((u64::from(from) << 32) | u64::from(to));
    let draw = splitmix64(key.wrapping_add(frame));
    (draw as f64) < p * 18_446_744_073_709_551_616.0
}

fn parse_link(s: &str) -> Result<(End, End), (usize, String)> {
    let (from_s, to_s, to_off) = match s.find("->") {
        Some(i) => (&s[..i], Some(&s[i + 2..]), i + 2),
        None => (s, None, 0),
    };
    let from = parse_end(from_s).map_err(|w| (0, w))?;
    let to = match to_s {
        Some(t) => parse_end(t).map_err(|w| (to_off, w))?,
        None => End::Any,
    };
    Ok((from, to))
}

fn parse_end(s: &str) -> Result<End, String> {
    let t = s.trim();
    if t == "*" {
        return Ok(End::Any);
    }
    let n = t.strip_prefix("rank").unwrap_or(t);
    n.trim().parse::<Rank>().map(End::Rank).map_err(|_| {
        if t.is_empty() {
            "missing rank (use *, rankN or N)".to_string()
        } else {
            format!("'{t}' is not a rank (use *, rankN or N)")
        }
    })
}

/// What the link may do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Up to this many bytes may leave now (`usize::MAX`: no limit).
    Open(usize),
    /// Nothing may leave before this instant.
    Wait(Instant),
    /// Nothing will ever leave (stalled).
    Stalled,
    /// The rule cuts the link: the connection is to be closed.
    Cut(usize),
}

/// The faults of one link (this rank to one peer) and their state.
#[derive(Clone, Debug)]
pub struct LinkFaults {
    rules: Vec<(Rule, RuleState)>,
    /// Bytes that have left on the link.
    sent: u64,
    /// The link's world ranks (from, to), for messages.
    link: (Rank, Rank),
}

#[derive(Clone, Debug, Default)]
struct RuleState {
    /// Used up (`once`).
    spent: bool,
    /// Rate: when the rule started counting, and the bytes counted since.
    since: Option<Instant>,
    counted: u64,
    /// Delay, loss: when the current frame may start.
    hold: Option<Instant>,
    /// Loss: the current frame was drawn; frames drawn so far.
    drawn: bool,
    frames: u64,
    /// The rule has started acting on the link, and whether that was reported.
    acting: bool,
    reported: bool,
}

impl LinkFaults {
    /// The rules of `rules` that act on the link `from -> to`, or `None` when none does.
    pub fn for_link(rules: &[Rule], from: Rank, to: Rank) -> Option<LinkFaults> {
        let mine: Vec<_> = rules
            .iter()
            .filter(|r| r.from.matches(from) && r.to.matches(to))
            .map(|r| (r.clone(), RuleState::default()))
            .collect();
        (!mine.is_empty()).then_some(LinkFaults {
            rules: mine,
            sent: 0,
            link: (from, to),
        })
    }

    /// The sentence an error uses for `rule` doing `what` ("cut", "held") to this link.
    pub fn blame(&self, rule: &Rule, what: &str) -> String {
        format!(
            "TOPOCCL_FAULTS rule '{rule}' {what} the link from rank {} to rank {}",
            self.link.0, self.link.1
        )
    }

    /// Asks whether bytes may leave at `now`; `frame_start` says the next byte is the first
    /// of a frame. `want` is how many bytes the caller would write.
    pub fn gate(&mut self, now: Instant, frame_start: bool, want: usize) -> Gate {
        let mut allow = want;
        for (rule, st) in &mut self.rules {
            if st.spent {
                continue;
            }
            // Bytes until the rule starts acting.
            let until = rule.after.saturating_sub(self.sent);
            if until > 0 {
                allow = allow.min(until.min(usize::MAX as u64) as usize);
                continue;
            }
            st.acting = true;
            match rule.effect {
                Effect::Stall => return Gate::Stalled,
                Effect::Drop => return Gate::Cut(0),
                Effect::Delay(d) => {
                    if !frame_start {
                        continue;
                    }
                    let hold = *st.hold.get_or_insert(now + d);
                    if now < hold {
                        return Gate::Wait(hold);
                    }
                }
                Effect::Rate(bps) => {
                    let since = *st.since.get_or_insert(now);
                    let budget = (now.saturating_duration_since(since).as_secs_f64() * bps)
                        as u64
                        // A little credit up front so the first bytes need not wait.
                        + (bps / 1000.0).max(1.0) as u64;
                    let left = budget.saturating_sub(st.counted);
                    if left == 0 {
                        let need = (st.counted + 1) as f64 - (bps / 1000.0).max(1.0);
                        return Gate::Wait(since + Duration::from_secs_f64(need.max(0.0) / bps));
                    }
                    allow = allow.min(left.min(usize::MAX as u64) as usize);
                }
                Effect::Loss(p) => {
                    if !frame_start {
                        continue;
                    }
                    if !st.drawn {
                        st.drawn = true;
                        let (from, to) = self.link;
                        if loss_hits(rule.seed, from, to, st.frames, p) {
                            st.hold = Some(now + RETRANSMIT_TIMEOUT);
                        }
                        st.frames += 1;
                    }
                    if let Some(hold) = st.hold {
                        if now < hold {
                            return Gate::Wait(hold);
                        }
                    }
                }
                Effect::Corrupt => {}
            }
        }
        // A cut rule whose threshold lies inside this write: write up to it, then cut.
        for (rule, st) in &mut self.rules {
            if !st.spent && rule.effect == Effect::Drop && rule.after > self.sent {
                let until = rule.after - self.sent;
                if (allow as u64) >= until {
                    st.acting = true;
                    return Gate::Cut(until as usize);
                }
            }
        }
        Gate::Open(allow)
    }

    /// Whether the frame about to start is to be garbled (and marks `once` rules spent).
    pub fn corrupt_next(&mut self) -> bool {
        let sent = self.sent;
        let mut hit = false;
        for (rule, st) in &mut self.rules {
            if rule.effect == Effect::Corrupt && !st.spent && sent >= rule.after {
                hit = true;
                st.acting = true;
                st.spent |= rule.once;
            }
        }
        hit
    }

    /// Records that `n` bytes left; `frame_done` when they ended a frame.
    pub fn sent(&mut self, n: usize, frame_done: bool) {
        self.sent += n as u64;
        for (rule, st) in &mut self.rules {
            if let Effect::Rate(_) = rule.effect {
                if st.since.is_some() {
                    st.counted += n as u64;
                }
            }
            if frame_done {
                match rule.effect {
                    Effect::Delay(_) if st.hold.take().is_some() => {
                        st.spent |= rule.once;
                    }
                    Effect::Loss(_) => {
                        st.hold = None;
                        st.drawn = false;
                    }
                    _ => {}
                }
            }
        }
    }

    /// The first rule that started acting on this link since the last call, as a sentence
    /// naming the rule and the link ("… acts on the link from rank 1 to rank 2 from now"):
    /// each rule is reported once, so the caller can log the moment a fault is injected.
    pub fn take_started(&mut self) -> Option<String> {
        let i = self
            .rules
            .iter()
            .position(|(_, st)| st.acting && !st.reported)?;
        self.rules[i].1.reported = true;
        Some(format!(
            "{} from now",
            self.blame(&self.rules[i].0, "acts on")
        ))
    }

    /// The rule that cuts the link, for error messages.
    pub fn cutting_rule(&self) -> Option<&Rule> {
        self.rules
            .iter()
            .map(|(r, _)| r)
            .find(|r| r.effect == Effect::Drop)
    }

    /// The rule holding back the link's bytes now (stall, a delay or rate in force), for
    /// the message of a call that timed out while sending.
    pub fn holding_rule(&self) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|(r, st)| match r.effect {
                Effect::Stall => self.sent >= r.after,
                Effect::Delay(_) | Effect::Loss(_) => st.hold.is_some(),
                Effect::Rate(_) => st.since.is_some(),
                Effect::Drop | Effect::Corrupt => false,
            })
            .map(|(r, _)| r)
    }

    /// The rule that cuts or stalls the link, for error messages.
    pub fn blocking_rule(&self) -> Option<&Rule> {
        self.rules
            .iter()
            .map(|(r, _)| r)
            .find(|r| matches!(r.effect, Effect::Drop | Effect::Stall) && self.sent >= r.after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_examples_parse() {
        let rules = parse(
            "delay=5ms@rank1->rank2;drop@rank3:after=10MB;corrupt@rank0->rank1:once;rate=50MB/s@*",
        )
        .unwrap();
        assert_eq!(rules.len(), 4);
        assert_eq!(rules[0].effect, Effect::Delay(Duration::from_millis(5)));
        assert_eq!((rules[0].from, rules[0].to), (End::Rank(1), End::Rank(2)));
        assert_eq!(rules[1].effect, Effect::Drop);
        assert_eq!((rules[1].from, rules[1].to), (End::Rank(3), End::Any));
        assert_eq!(rules[1].after, 10_000_000);
        assert!(rules[2].once);
        assert_eq!(rules[3].effect, Effect::Rate(50e6));
        assert_eq!((rules[3].from, rules[3].to), (End::Any, End::Any));
        assert_eq!(rules[3].text, "rate=50MB/s@*");
        // Bare numbers and spaces.
        let r = parse(" stall @ 2 -> * : after=1KiB ").unwrap();
        assert_eq!(
            (r[0].from, r[0].to, r[0].after),
            (End::Rank(2), End::Any, 1024)
        );
    }

    #[test]
    fn bad_specs_say_where() {
        let cases = [
            ("delay=5ms", 10, "no '@LINK'"),
            ("delay=5ms@rank1;jitter@*", 17, "unknown effect 'jitter'"),
            ("delay=5xs@*", 1, "unknown time unit"),
            ("drop@rank1->rankX", 13, "'rankX' is not a rank"),
            ("drop@*:after=lots", 14, "does not start with a number"),
            ("drop@*:soon", 8, "unknown option 'soon'"),
            ("stall@*:once", 9, "'once' applies to delay and corrupt"),
            ("rate=-5MB/s@*", 1, "not a non-negative"),
            ("@*", 1, "missing effect"),
        ];
        for (spec, at, want) in cases {
            let e = parse(spec).unwrap_err();
            assert!(e.what.contains(want), "{spec}: {e}");
            assert_eq!(e.at, at, "{spec}: {e}");
        }
    }

    #[test]
    fn rules_pick_their_links() {
        let rules = parse("delay=1ms@1->2;stall@3").unwrap();
        assert!(LinkFaults::for_link(&rules, 1, 2).is_some());
        assert!(LinkFaults::for_link(&rules, 2, 1).is_none());
        assert!(LinkFaults::for_link(&rules, 3, 0).is_some());
        assert!(LinkFaults::for_link(&rules, 0, 3).is_none());
    }

    #[test]
    fn delay_holds_each_frame_and_once_only_the_first() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        for once in [false, true] {
            let spec = if once {
                "delay=5ms@*:once"
            } else {
                "delay=5ms@*"
            };
            let mut f = LinkFaults::for_link(&parse(spec).unwrap(), 0, 1).unwrap();
            assert_eq!(f.gate(t0, true, 100), Gate::Wait(t0 + ms(5)));
            assert_eq!(f.gate(t0 + ms(5), true, 100), Gate::Open(100));
            f.sent(100, true);
            let second = f.gate(t0 + ms(6), true, 100);
            if once {
                assert_eq!(second, Gate::Open(100));
            } else {
                assert_eq!(second, Gate::Wait(t0 + ms(11)));
            }
        }
    }

    #[test]
    fn drop_cuts_exactly_after_its_bytes_and_stall_stops() {
        let t = Instant::now();
        let mut f = LinkFaults::for_link(&parse("drop@*:after=1000").unwrap(), 0, 1).unwrap();
        assert_eq!(f.gate(t, true, 600), Gate::Open(600));
        f.sent(600, true);
        assert_eq!(f.gate(t, true, 600), Gate::Cut(400));
        f.sent(400, false);
        assert_eq!(f.gate(t, false, 600), Gate::Cut(0));
        assert_eq!(f.blocking_rule().unwrap().text, "drop@*:after=1000");
        let mut s = LinkFaults::for_link(&parse("stall@*:after=10").unwrap(), 0, 1).unwrap();
        assert_eq!(s.gate(t, true, 64), Gate::Open(10));
        s.sent(10, false);
        assert_eq!(s.gate(t, false, 64), Gate::Stalled);
    }

    #[test]
    fn corrupt_once_garbles_one_frame() {
        let mut f = LinkFaults::for_link(&parse("corrupt@*:once").unwrap(), 0, 1).unwrap();
        assert!(f.corrupt_next());
        assert!(!f.corrupt_next());
        let mut every = LinkFaults::for_link(&parse("corrupt@*:after=8").unwrap(), 0, 1).unwrap();
        assert!(!every.corrupt_next());
        every.sent(8, true);
        assert!(every.corrupt_next() && every.corrupt_next());
    }

    #[test]
    fn rate_limits_bytes_over_time() {
        let t0 = Instant::now();
        let mut f = LinkFaults::for_link(&parse("rate=1MB/s@*").unwrap(), 0, 1).unwrap();
        // A millisecond's credit up front.
        assert_eq!(f.gate(t0, true, 1 << 20), Gate::Open(1000));
        f.sent(1000, false);
        let Gate::Wait(at) = f.gate(t0, false, 1 << 20) else {
            panic!("must wait")
        };
        assert!(
            at > t0 && at <= t0 + Duration::from_micros(10),
            "{:?}",
            at - t0
        );
        // After 100 ms, about 100 kB more may leave.
        let Gate::Open(n) = f.gate(t0 + Duration::from_millis(100), false, 1 << 20) else {
            panic!("open")
        };
        assert!((99_000..=101_000).contains(&n), "{n}");
    }

    #[test]
    fn loss_parses_with_its_seed_and_refuses_bad_values() {
        let r = parse("loss=2.5%@rank1->rank2:after=1MB:seed=7").unwrap();
        assert_eq!(r[0].effect, Effect::Loss(0.025));
        assert_eq!((r[0].after, r[0].seed), (1_000_000, 7));
        assert_eq!(parse("loss=100%@*").unwrap()[0].effect, Effect::Loss(1.0));
        let cases = [
            ("loss=2@*", 1, "needs a percentage with '%'"),
            ("loss=0%@*", 1, "above 0% and at most 100%"),
            ("loss=101%@*", 1, "above 0% and at most 100%"),
            ("loss=x%@*", 1, "above 0% and at most 100%"),
            ("loss=1%@*:seed=-3", 16, "is not a whole number"),
            ("delay=1ms@*:seed=3", 13, "'seed=' applies to loss only"),
            ("loss=1%@*:once", 11, "'once' applies to delay and corrupt"),
        ];
        for (spec, at, want) in cases {
            let e = parse(spec).unwrap_err();
            assert!(e.what.contains(want), "{spec}: {e}");
            assert_eq!(e.at, at, "{spec}: {e}");
        }
    }

    /// Drives a link frame by frame: for each of `frames` frames, whether it was held.
    fn held_frames(spec: &str, frames: usize) -> Vec<bool> {
        let t0 = Instant::now();
        let mut f = LinkFaults::for_link(&parse(spec).unwrap(), 1, 2).unwrap();
        (0..frames)
            .map(|_| {
                let held = match f.gate(t0, true, 100) {
                    Gate::Wait(at) => {
                        assert_eq!(at, t0 + RETRANSMIT_TIMEOUT);
                        // Asking again while held does not draw again.
                        assert_eq!(f.gate(t0, true, 100), Gate::Wait(at));
                        assert!(f.holding_rule().is_some());
                        assert_eq!(f.gate(at, true, 100), Gate::Open(100));
                        true
                    }
                    Gate::Open(100) => false,
                    g => panic!("{g:?}"),
                };
                f.sent(100, true);
                held
            })
            .collect()
    }

    #[test]
    fn loss_holds_frames_for_a_retransmission_timeout_reproducibly() {
        let a = held_frames("loss=10%@*:seed=3", 2000);
        assert_eq!(a, held_frames("loss=10%@*:seed=3", 2000), "seeded");
        assert_ne!(a, held_frames("loss=10%@*:seed=4", 2000), "another seed");
        let hits = a.iter().filter(|h| **h).count();
        assert!((150..=250).contains(&hits), "{hits} of 2000 at 10%");
        assert!(held_frames("loss=100%@*", 5).iter().all(|h| *h));
        // Not before its threshold.
        let mut f = LinkFaults::for_link(&parse("loss=100%@*:after=500").unwrap(), 1, 2).unwrap();
        let t0 = Instant::now();
        assert_eq!(f.gate(t0, true, 400), Gate::Open(400));
        f.sent(400, true);
        assert_eq!(f.gate(t0, true, 400), Gate::Open(100));
        f.sent(100, false);
        f.sent(300, true);
        assert!(matches!(f.gate(t0, true, 400), Gate::Wait(_)));
    }

    #[test]
    fn a_rule_is_reported_once_when_it_starts_acting() {
        let t = Instant::now();
        let mut f = LinkFaults::for_link(&parse("drop@*:after=1000").unwrap(), 3, 1).unwrap();
        assert_eq!(f.gate(t, true, 600), Gate::Open(600));
        assert_eq!(f.take_started(), None, "not yet");
        f.sent(600, true);
        assert_eq!(f.gate(t, true, 600), Gate::Cut(400));
        assert_eq!(
            f.take_started().as_deref(),
            Some(
                "TOPOCCL_FAULTS rule 'drop@*:after=1000' acts on the link from rank 3 to rank 1 \
                 from now"
            )
        );
        assert_eq!(f.take_started(), None, "once");
        let mut d = LinkFaults::for_link(&parse("delay=50us@*").unwrap(), 0, 1).unwrap();
        d.gate(t, true, 10);
        assert!(d.take_started().unwrap().contains("'delay=50us@*'"));
        let mut c = LinkFaults::for_link(&parse("corrupt@*").unwrap(), 0, 1).unwrap();
        assert!(c.corrupt_next() && c.take_started().is_some());
    }

    proptest::proptest! {
        /// Over many frames the share hit is the rule's probability (within 5 standard
        /// deviations), for any seed and link.
        #[test]
        fn loss_share_matches_its_probability(
            seed in proptest::prelude::any::<u64>(),
            from in 0u32..64,
            to in 0u32..64,
            pct in 1u32..=60,
        ) {
            let p = f64::from(pct) / 100.0;
            let n = 4000u64;
            let hits = (0..n).filter(|&k| loss_hits(seed, from, to, k, p)).count() as f64;
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            proptest::prop_assert!((hits - n as f64 * p).abs() <= 5.0 * sd + 1.0,
                "{hits} hits of {n} at {p}");
        }
    }
}
