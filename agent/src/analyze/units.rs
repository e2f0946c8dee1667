//! Human-readable numbers and times shared by the charts, the text summary and the HTML page.

use crate::snapshot::iso_timestamp;

/// A latency in µs with a unit that keeps 3 significant digits: `45.2 µs`, `1.02 ms`, `2.10 s`.
pub fn human_us(us: f64) -> String {
    if !us.is_finite() {
        return "-".into();
    }
    let (v, unit) = if us < 1000.0 {
        (us, "µs")
    } else if us < 1e6 {
        (us / 1e3, "ms")
    } else {
        (us / 1e6, "s")
    };
    format!("{} {unit}", sig3(v))
}

/// A count with an SI suffix: `950`, `12.5k`, `3.2M`.
pub fn si(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{}G", sig3(v / 1e9))
    } else if a >= 1e6 {
        format!("{}M", sig3(v / 1e6))
    } else if a >= 1e4 {
        format!("{}k", sig3(v / 1e3))
    } else {
        sig3(v)
    }
}

/// Three significant digits without trailing zeros (integers stay integers).
fn sig3(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e4 {
        return format!("{v:.0}");
    }
    let digits = if v.abs() >= 100.0 {
        0
    } else if v.abs() >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{v:.digits$}");
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
}

/// `2025-10-02 14:20:00` (UTC).
pub fn utc(t: f64) -> String {
    if !t.is_finite() {
        return "-".into();
    }
    iso_timestamp(t)[..19].replace('T', " ")
}

/// Thousands separators for request counts: `1,234,567`.
pub fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Minimal escaping for text and attribute values in the HTML report.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(human_us(45.31), "45.3 µs");
        assert_eq!(human_us(3.456), "3.46 µs");
        assert_eq!(human_us(512.0), "512 µs");
        assert_eq!(human_us(1024.0), "1.02 ms");
        assert_eq!(human_us(131_072.0), "131 ms");
        assert_eq!(human_us(2_097_152.0), "2.1 s");
        assert_eq!(si(950.0), "950");
        assert_eq!(si(12_500.0), "12.5k");
        assert_eq!(si(3_200_000.0), "3.2M");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(grouped(12), "12");
        assert_eq!(utc(1_759_414_800.5), "2025-10-02 14:20:00");
        assert_eq!(html_escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
