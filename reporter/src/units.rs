//! Units for people, in one place for the terminal tables and the pages: durations,
//! sizes and percentages.

/// A duration for people: 850 ns, 12.3 µs, 1.20 ms, 2.50 s.
pub fn fmt_ns(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e4 {
        format!("{:.2} µs", ns / 1e3)
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// Bytes for people: 512 B, 4.0 KiB, 1.5 GiB.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// A round duration as an axis label: 50 µs, 1.5 ms (no trailing zeros).
pub fn fmt_axis(ns: f64) -> String {
    let (v, unit) = if ns == 0.0 {
        (0.0, "")
    } else if ns < 1e3 {
        (ns, " ns")
    } else if ns < 1e6 {
        (ns / 1e3, " µs")
    } else if ns < 1e9 {
        (ns / 1e6, " ms")
    } else {
        (ns / 1e9, " s")
    };
    // Ticks are 1, 2 or 5 × 10^k: three significant digits say them exactly.
    let r = format!("{v:.2}");
    let r = r.trim_end_matches('0').trim_end_matches('.');
    format!("{r}{unit}")
}

/// A power of ten of nanoseconds as an axis label: 100 ns, 1 µs, 10 ms.
pub fn fmt_decade(ns: f64) -> String {
    let (v, unit) = if ns < 1e3 {
        (ns, "ns")
    } else if ns < 1e6 {
        (ns / 1e3, "µs")
    } else if ns < 1e9 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
    };
    format!("{v:.0} {unit}")
}

/// A part of a whole as a percentage: 12.5%.
pub fn share(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// A relative change as a signed percentage: +12.5%, -3.0%.
pub fn pct(x: f64) -> String {
    format!("{:+.1}%", x * 100.0)
}

/// Nanoseconds as microseconds with one decimal, no unit (the tables' µs columns).
pub fn us(ns: f64) -> String {
    format!("{:.1}", ns / 1000.0)
}

/// `65536` → `64 KiB`; exact values only get a unit.
pub fn human(n: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{} {unit}", n >> shift);
        }
    }
    if n >= 1 << 20 {
        return format!("{:.1} MiB", n as f64 / (1 << 20) as f64);
    }
    format!("{n} B")
}
