//! How the doctor writes sizes, durations and rank lists for people.

/// Bytes in binary units: `64 MiB`, `1.5 KiB`, `12 B` (one decimal unless whole).
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    if v.fract() == 0.0 {
        format!("{v:.0} {unit}")
    } else {
        format!("{v:.1} {unit}")
    }
}

/// Nanoseconds as `30.2 s`, `52.0 ms`, `3.1 µs` or `12 ns`; negative values keep their sign.
pub(crate) fn duration(ns: f64) -> String {
    let a = ns.abs();
    if a >= 1e9 {
        format!("{:.1} s", ns / 1e9)
    } else if a >= 1e6 {
        format!("{:.1} ms", ns / 1e6)
    } else if a >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// `rank 2` or `ranks 0,1,3` or `ranks 0-5,7`.
pub(crate) fn ranks(list: &[u32]) -> String {
    let word = if list.len() == 1 { "rank" } else { "ranks" };
    format!("{word} {}", rank_ranges(list))
}

/// Sorted ranks with runs of three or more written `a-b`: `0-5,7`.
pub(crate) fn rank_ranges(list: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < list.len() {
        let mut j = i;
        while j + 1 < list.len() && list[j + 1] == list[j] + 1 {
            j += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if j >= i + 2 {
            out.push_str(&format!("{}-{}", list[i], list[j]));
        } else {
            out.push_str(
                &list[i..=j]
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        i = j + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(bytes(12), "12 B");
        assert_eq!(bytes(4096), "4 KiB");
        assert_eq!(bytes(64 << 20), "64 MiB");
        assert_eq!(bytes(1536), "1.5 KiB");
    }

    #[test]
    fn durations_pick_a_unit() {
        assert_eq!(duration(30.2e9), "30.2 s");
        assert_eq!(duration(52.04e6), "52.0 ms");
        assert_eq!(duration(-2e9), "-2.0 s");
        assert_eq!(duration(12.0), "12 ns");
    }

    #[test]
    fn rank_lists_compress_runs() {
        assert_eq!(ranks(&[2]), "rank 2");
        assert_eq!(ranks(&[0, 1, 3]), "ranks 0,1,3");
        assert_eq!(ranks(&[0, 1, 2, 3, 4, 5, 7]), "ranks 0-5,7");
    }
}
