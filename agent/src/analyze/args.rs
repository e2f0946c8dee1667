//! `blkio-agent analyze` flags and their value parsers (errors name the accepted form).

use std::path::PathBuf;

use clap::ValueEnum;

#[derive(Debug, Clone, clap::Args)]
pub struct AnalyzeArgs {
    /// JSONL inputs: files (plain or gzip), globs, or segment directories (every sealed `*.jsonl`
    /// and `*.jsonl.gz` below them). Several nodes' files can be mixed.
    #[arg(long, required = true, num_args = 1.., value_name = "PATH")]
    pub input: Vec<String>,

    /// Where charts, summary.json and report.html are written (created if missing).
    #[arg(long, value_name = "DIR")]
    pub output_dir: PathBuf,

    /// Keep only the N busiest devices (by completed requests).
    #[arg(long, value_name = "N", value_parser = parse_top)]
    pub top: Option<usize>,

    /// Percentiles to report, comma-separated, each in (0, 100].
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "50,90,99", value_parser = parse_percentile)]
    pub percentiles: Vec<f64>,

    /// Device filter: comma-separated glob patterns on the device name; `!pattern` excludes.
    /// Example: `nvme*,sd*` or `!loop*`.
    #[arg(long, value_name = "PATTERN", value_delimiter = ',', value_parser = parse_device_pattern)]
    pub device: Vec<String>,

    /// Ignore snapshots that end before this time: epoch seconds or ISO 8601
    /// (`2025-10-02T14:20:00Z`; no offset means UTC).
    #[arg(long, value_name = "T", value_parser = parse_time)]
    pub from: Option<f64>,

    /// Ignore snapshots that end after this time (same forms as --from).
    #[arg(long, value_name = "T", value_parser = parse_time)]
    pub to: Option<f64>,

    /// JSONL of application events (`{"timestamp": .., "label": ..}`), drawn as markers on every
    /// chart.
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,

    /// What to print on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// An interval is anomalous when its p99 is at least this many times the device's baseline.
    #[arg(long, value_name = "FACTOR", default_value_t = 4.0, value_parser = parse_factor)]
    pub anomaly_factor: f64,

    /// Intervals with fewer completions than this are not judged for anomalies (their p99 is
    /// the slowest handful of requests, which is noise).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub anomaly_min_requests: u64,

    /// Anomalies shorter than this many seconds are not reported (one noisy short interval is
    /// not a fault).
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0, value_parser = parse_duration)]
    pub anomaly_min_duration: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

fn parse_top(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{s}` is not a device count; use a whole number >= 1")),
    }
}

/// One percentile in (0, 100].
pub fn parse_percentile(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number; use e.g. 50,90,99.9"))?;
    if v.is_finite() && v > 0.0 && v <= 100.0 {
        Ok(v)
    } else {
        Err(format!("percentile `{s}` is outside (0, 100]; use e.g. 50,90,99.9"))
    }
}

fn parse_factor(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 1.0 => Ok(v),
        _ => Err(format!("`{s}` is not a factor; use a number > 1, e.g. 4")),
    }
}

fn parse_duration(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a duration; use seconds >= 0, e.g. 1 or 0.5")),
    }
}

fn parse_device_pattern(s: &str) -> Result<String, String> {
    let pat = s.strip_prefix('!').unwrap_or(s);
    glob::Pattern::new(pat).map_err(|e| format!("`{s}` is not a glob pattern ({e}); use e.g. `nvme*` or `!loop*`"))?;
    Ok(s.to_string())
}

/// `summary.json` key of a percentile: `p50`, `p99.9` (shortest decimal form).
pub fn percentile_key(p: f64) -> String {
    format!("p{p}")
}

/// Epoch seconds, or ISO 8601 `YYYY-MM-DD[(T| )HH:MM[:SS[.frac]]][Z|±HH:MM|±HHMM]` (UTC when no
/// offset is given, which is what the JSONL's `iso_timestamp` uses).
pub fn parse_time(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let hint = "use epoch seconds (1759414800) or ISO 8601 (2025-10-02T14:20:00Z)";
    if let Ok(v) = s.parse::<f64>() {
        return if v.is_finite() { Ok(v) } else { Err(format!("`{s}` is not a time; {hint}")) };
    }
    parse_iso(s).ok_or_else(|| format!("`{s}` is not a time; {hint}"))
}

fn parse_iso(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(range)?;
        if part.is_empty() || !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let mut secs = days_from_civil(y, m as u32, d as u32) as f64 * 86_400.0;
    let mut rest = &s[10..];
    if rest.is_empty() {
        return Some(secs);
    }
    if !(rest.starts_with('T') || rest.starts_with('t') || rest.starts_with(' ')) {
        return None;
    }
    rest = &rest[1..];
    // Split the clock from the offset (`Z`, `+hh:mm`, `-hh:mm`).
    let off_at = rest.find(['Z', 'z', '+', '-']).unwrap_or(rest.len());
    let (clock, offset) = rest.split_at(off_at);
    let mut fields = clock.splitn(3, ':');
    let hh: i64 = two_digits(fields.next()?)?;
    let mm: i64 = two_digits(fields.next()?)?;
    let ss: f64 = match fields.next() {
        None => 0.0,
        Some(f) => {
            let (whole, frac) = f.split_once('.').unwrap_or((f, ""));
            let whole = two_digits(whole)? as f64;
            if !frac.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            whole + if frac.is_empty() { 0.0 } else { format!("0.{frac}").parse::<f64>().ok()? }
        }
    };
    if hh > 23 || mm > 59 || ss >= 61.0 {
        return None;
    }
    secs += (hh * 3600 + mm * 60) as f64 + ss;
    match offset {
        "" | "Z" | "z" => Some(secs),
        o => {
            let sign = if o.starts_with('-') { -1.0 } else { 1.0 };
            let digits: String = o[1..].chars().filter(|c| *c != ':').collect();
            // Digits only before slicing: a multi-byte character would split mid-character.
            if digits.len() != 4 || !digits.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let oh = two_digits(&digits[0..2])?;
            let om = two_digits(&digits[2..4])?;
            Some(secs - sign * (oh * 3600 + om * 60) as f64)
        }
    }
}

fn two_digits(s: &str) -> Option<i64> {
    if s.len() == 2 && s.bytes().all(|c| c.is_ascii_digit()) { s.parse().ok() } else { None }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm; the inverse of
/// the one `snapshot::iso_timestamp` uses).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::iso_timestamp;

    #[test]
    fn times_parse_as_epoch_or_iso() {
        assert_eq!(parse_time("1759414800.5"), Ok(1_759_414_800.5));
        assert_eq!(parse_time("2025-10-02T14:20:00Z"), Ok(1_759_414_800.0));
        assert_eq!(parse_time("2025-10-02 14:20"), Ok(1_759_414_800.0));
        assert_eq!(parse_time("2025-10-02T16:20:00+02:00"), Ok(1_759_414_800.0));
        assert_eq!(parse_time("2025-10-02T09:20:00-0500"), Ok(1_759_414_800.0));
        assert_eq!(parse_time("2025-10-02"), Ok(1_759_363_200.0));
        let t = parse_time("2025-10-02T14:20:00.250000+00:00").unwrap();
        assert!((t - 1_759_414_800.25).abs() < 1e-6);
        for bad in
            ["yesterday", "2025-13-01", "2025-10-02T25:00", "2025-10-02T14:20:00+2", "inf", "2025-10-02T14:20+1é1"]
        {
            let err = parse_time(bad).unwrap_err();
            assert!(err.contains("ISO 8601"), "{bad}: {err}");
        }
    }

    #[test]
    fn iso_parsing_inverts_iso_timestamp() {
        for t in [0.0, 951_782_400.5, 1_759_414_800.123, 4_102_444_799.0] {
            let back = parse_time(&iso_timestamp(t)).unwrap();
            assert!((back - t).abs() < 1e-6, "{t} -> {back}");
        }
    }

    #[test]
    fn percentiles_must_be_in_range() {
        assert_eq!(parse_percentile("99.9"), Ok(99.9));
        assert_eq!(parse_percentile("100"), Ok(100.0));
        assert!(parse_percentile("0").unwrap_err().contains("(0, 100]"));
        assert!(parse_percentile("100.1").is_err());
        assert!(parse_percentile("p99").unwrap_err().contains("not a number"));
        assert_eq!(percentile_key(50.0), "p50");
        assert_eq!(percentile_key(99.9), "p99.9");
    }

    #[test]
    fn device_patterns_are_validated() {
        assert_eq!(parse_device_pattern("!loop*"), Ok("!loop*".into()));
        assert!(parse_device_pattern("nvme[").unwrap_err().contains("glob"));
        assert!(parse_top("0").is_err());
        assert_eq!(parse_top("3"), Ok(3));
    }
}
