//! Quantities with units, as people write them in flags, environment variables and
//! topology files: durations (`5us`, `2.8ms`), bandwidths (`100Gbps`, `12.5GB/s`) and sizes
//! (`4MiB`).

/// Seconds from a duration such as `5us`, `0.3ms`, `20ms`, `1s`, `250ns`, `10m`, `2min`,
/// `1h`.
pub fn parse_duration(s: &str) -> Result<f64, String> {
    let (num, unit) = split_number(s)?;
    let scale = match unit {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" | "" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "unknown time unit '{unit}' in '{s}'; use ns, us, ms, s, m or h"
            ))
        }
    };
    Ok(num * scale)
}

/// Bytes per second from a bandwidth such as `100Gbps`, `12.5GB/s`, `800MB/s`.
pub fn parse_bandwidth(s: &str) -> Result<f64, String> {
    let (num, unit) = split_number(s)?;
    let scale = match unit {
        "bps" => 1.0 / 8.0,
        "Kbps" | "kbps" => 1e3 / 8.0,
        "Mbps" => 1e6 / 8.0,
        "Gbps" => 1e9 / 8.0,
        "Tbps" => 1e12 / 8.0,
        "B/s" => 1.0,
        "KB/s" | "kB/s" => 1e3,
        "MB/s" => 1e6,
        "GB/s" => 1e9,
        "TB/s" => 1e12,
        _ => {
            return Err(format!(
                "unknown bandwidth unit '{unit}' in '{s}'; use Gbps, Mbps, GB/s, MB/s, B/s"
            ))
        }
    };
    if num <= 0.0 {
        return Err(format!("bandwidth '{s}' must be positive"));
    }
    Ok(num * scale)
}

/// Bytes from a size such as `4096`, `512KiB`, `4MiB`, `1GB`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let (num, unit) = split_number(s)?;
    let scale: f64 = match unit {
        "" | "B" => 1.0,
        "K" | "KiB" => 1024.0,
        "M" | "MiB" => 1024.0 * 1024.0,
        "G" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        _ => {
            return Err(format!(
                "unknown size unit '{unit}' in '{s}'; use K, M or G (binary: 1K = 1024 B, also \
                 spelled KiB, MiB, GiB), KB, MB or GB (decimal), or B"
            ))
        }
    };
    let bytes = num * scale;
    if bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("size '{s}' must be at least one byte"));
    }
    Ok(bytes as u64)
}

fn split_number(s: &str) -> Result<(f64, &str), String> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '-' || c == '+'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(end);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' does not start with a number"))?;
    if !num.is_finite() || num < 0.0 {
        return Err(format!("'{s}' is not a non-negative finite number"));
    }
    Ok((num, unit.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs()
    }

    #[test]
    fn units() {
        assert!(close(parse_duration("5us").unwrap(), 5e-6));
        assert!(close(parse_duration("2.8ms").unwrap(), 2.8e-3));
        assert!(close(parse_duration("10m").unwrap(), 600.0));
        assert!(close(parse_duration("2min").unwrap(), 120.0));
        assert!(close(parse_duration("1h").unwrap(), 3600.0));
        assert!(close(parse_bandwidth("100Gbps").unwrap(), 12.5e9));
        assert!(close(parse_bandwidth("12.5GB/s").unwrap(), 12.5e9));
        assert_eq!(parse_bytes("4MiB").unwrap(), 4 << 20);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert!(parse_bytes("0").is_err());
        assert!(parse_bandwidth("10 furlongs")
            .unwrap_err()
            .contains("unknown"));
        assert!(parse_duration("fast").unwrap_err().contains("number"));
    }
}
