//! Reading the launcher's merged metrics (Prometheus text 0.0.4): samples of the families
//! the console shows, nothing else. Pure: takes the text.
//!
//! Limits: at most [`MAX_SAMPLES`] samples are kept (later ones are counted in
//! [`Scrape::dropped`]); lines that do not parse are counted in [`Scrape::bad_lines`],
//! never an error (a rank's exporter may be newer than this console).

use std::collections::BTreeMap;

/// Samples kept per scrape.
pub const MAX_SAMPLES: usize = 200_000;

/// One sample: a family's name, its labels, its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// A label's value parsed as a rank number.
    pub fn rank_label(&self, key: &str) -> Option<u32> {
        self.labels.get(key)?.parse().ok()
    }
}

/// The samples of one scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    pub dropped: usize,
    pub bad_lines: usize,
}

/// Parses exposition text, keeping the samples whose name `keep` accepts.
pub fn parse(text: &str, keep: impl Fn(&str) -> bool) -> Scrape {
    let mut out = Scrape::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Some(s) if keep(&s.name) => {
                if out.samples.len() < MAX_SAMPLES {
                    out.samples.push(s);
                } else {
                    out.dropped += 1;
                }
            }
            Some(_) => {}
            None => out.bad_lines += 1,
        }
    }
    out
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        let close;
        loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => {
                    close = i;
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    let (_, q) = chars.next()?;
                    if q != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        let (_, c) = chars.next()?;
                        match c {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                other => key.push(other),
            }
        }
        rest = &body[close + 1..];
    }
    let value_text = rest.split_whitespace().next()?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_labels_values_and_skips_comments() {
        let text = "# HELP x X.\n# TYPE x gauge\n\
                    topoccl_link_latency_seconds{rank=\"0\",peer=\"1\"} 2.5e-5\n\
                    topoccl_rank_up{rank=\"3\"} 0\nother 1\nbroken{rank=\"0\" 1\n";
        let s = parse(text, |n| n.starts_with("topoccl_") || n == "broken");
        assert_eq!(s.samples.len(), 2);
        assert_eq!(s.samples[0].rank_label("peer"), Some(1));
        assert_eq!(s.samples[0].value, 2.5e-5);
        assert_eq!(s.samples[1].rank_label("rank"), Some(3));
        assert_eq!(s.bad_lines, 1);
    }

    proptest! {
        #[test]
        fn written_samples_read_back(rank in 0u32..100_000, peer in "[a-z0-9]{1,8}", v in -1e12f64..1e12) {
            let line = format!("m{{rank=\"{rank}\",peer=\"{peer}\"}} {v:e}\n");
            let s = parse(&line, |_| true);
            prop_assert_eq!(s.samples.len(), 1);
            prop_assert_eq!(s.samples[0].rank_label("rank"), Some(rank));
            prop_assert_eq!(s.samples[0].labels.get("peer").map(String::as_str), Some(peer.as_str()));
            prop_assert_eq!(s.samples[0].value, v);
        }

        #[test]
        fn never_panics(text in ".{0,200}") {
            let _ = parse(&text, |_| true);
        }
    }
}
