//! Units on the command line: the parsers live in the core, shared with the runtime; and
//! counts of things, spelled for people.

pub use topoccl_plan::units::{parse_bandwidth, parse_bytes, parse_duration};

/// `n` things: "1 rule", "3 rules" (`what` takes an s).
pub fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// A byte count for people, in binary units as `--size` takes them: `64 MiB`, `1 GiB`,
/// `100 B` when exact, else with two decimals (`1.50 KiB`, `1.00 MiB` for 1 MiB + 1 B).
pub fn human_bytes(bytes: u64) -> String {
    let units = [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    match units.into_iter().find(|&(_, scale)| bytes >= scale) {
        Some((unit, scale)) if bytes % scale == 0 => format!("{} {unit}", bytes / scale),
        Some((unit, scale)) => format!("{:.2} {unit}", bytes as f64 / scale as f64),
        None => format!("{bytes} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::{human_bytes, parse_bytes, plural};

    #[test]
    fn byte_counts_for_people() {
        assert_eq!(human_bytes(67108864), "64 MiB");
        assert_eq!(human_bytes(1 << 30), "1 GiB");
        assert_eq!(human_bytes(16 << 30), "16 GiB");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes((1 << 20) + 1), "1.00 MiB");
        assert_eq!(human_bytes(u64::MAX), "17179869184.00 GiB");
        // What is printed reads back as --size where it is exact.
        for b in [8u64, 1536, 4096, 3 << 20, 5 << 30] {
            let text = human_bytes(b).replace(' ', "");
            assert_eq!(parse_bytes(&text), Ok(b), "{text}");
        }
    }

    #[test]
    fn one_thing_is_singular_and_other_counts_plural() {
        assert_eq!(plural(1, "rule"), "1 rule");
        assert_eq!(plural(0, "rule"), "0 rules");
        assert_eq!(plural(12, "run"), "12 runs");
    }
}
