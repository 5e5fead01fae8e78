//! Units on the command line: the parsers live in the core, shared with the runtime; and
//! counts of things, spelled for people.

pub use topoccl_plan::units::{parse_bandwidth, parse_bytes, parse_duration};

/// `n` things: "1 rule", "3 rules" (`what` takes an s).
pub fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::plural;

    #[test]
    fn one_thing_is_singular_and_other_counts_plural() {
        assert_eq!(plural(1, "rule"), "1 rule");
        assert_eq!(plural(0, "rule"), "0 rules");
        assert_eq!(plural(12, "run"), "12 runs");
    }
}
