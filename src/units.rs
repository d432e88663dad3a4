//! Sizes, offsets and times on the command line. Their output form is
//! `viopath_reporter::units`, shared with the pages.

/// Parse `4096`, `0x1000`, `4k`, `4KiB`, `1M`, `2G`, `1T` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).map_err(|e| format!("'{s}': {e}"));
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (examples: 4096, 0x1000, 64k, 1G)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (use k, M, G, T)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{s}' does not fit in 64 bits"))
}

/// Parse a time: `250us` (or `µs`), `1.5ms`, `2s`, `3m`, `1h`, `500ns`; a bare number
/// is seconds. Zero is allowed; at most a year. Returns nanoseconds.
pub fn parse_time(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: f64 = n
        .parse()
        .map_err(|_| format!("'{s}' is not a time (examples: 250us, 1.5ms, 10s, 2m)"))?;
    let ns_per = match unit.trim() {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "" | "s" => 1e9,
        "m" => 60e9,
        "h" => 3600e9,
        other => {
            return Err(format!(
                "'{s}': unknown unit '{other}' (ns, us, ms, s, m, h)"
            ));
        }
    };
    let ns = n * ns_per;
    if !ns.is_finite() || ns > 366.0 * 86_400e9 {
        return Err(format!("'{s}' is too long: at most a year"));
    }
    Ok(ns.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use viopath_reporter::units::human;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0x1000"), Ok(4096));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("12q").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(human(65536), "64 KiB");
        assert_eq!(human(1 << 40), "1 TiB");
        assert_eq!(human(1000), "1000 B");
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("250us"), Ok(250_000));
        assert_eq!(parse_time("250µs"), Ok(250_000));
        assert_eq!(parse_time("1.5ms"), Ok(1_500_000));
        assert_eq!(parse_time("2"), Ok(2_000_000_000));
        assert_eq!(parse_time("0s"), Ok(0));
        assert_eq!(parse_time("3m"), Ok(180_000_000_000));
        assert!(parse_time("1x").is_err());
        assert!(parse_time("-1s").is_err());
        assert!(parse_time("99999999999999999999999h").is_err());
    }
}
