//! `--events FILE`: application events (`{"timestamp": .., "label": ..}` per line) to draw as
//! markers. The timestamp is epoch seconds or an ISO 8601 string; bad lines are reported like
//! bad snapshot lines.

use std::path::Path;

use serde::Deserialize;

use super::args::parse_time;
use super::charts::Event;
use super::dataset::Dataset;
use super::input::{Progress, lines, read_chunks};
use crate::error::Result;

#[derive(Deserialize)]
struct RawEvent {
    timestamp: RawTime,
    label: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawTime {
    Epoch(f64),
    Text(String),
}

/// One non-blank line of an events file, or why it is not an event.
pub fn parse_event(text: &[u8]) -> std::result::Result<Event, String> {
    match serde_json::from_slice::<RawEvent>(text) {
        Ok(RawEvent { timestamp, label }) => {
            let ts = match timestamp {
                RawTime::Epoch(t) if t.is_finite() => Ok(t),
                RawTime::Epoch(t) => Err(format!("timestamp {t} is not a time")),
                RawTime::Text(s) => parse_time(&s),
            };
            ts.map(|ts| Event { ts, label }).map_err(|e| format!("event timestamp: {e}"))
        }
        Err(e) => Err(format!("not an event {{\"timestamp\": .., \"label\": ..}}: {e}")),
    }
}

pub fn read_events(path: &Path, file: u32, ds: &mut Dataset) -> Result<Vec<Event>> {
    let mut events = Vec::new();
    let progress = Progress::new(0);
    let mut bad: Vec<(u64, String)> = Vec::new();
    let problems = read_chunks(path, file, &progress, |chunk| {
        for (n, line) in lines(&chunk) {
            let text = line.trim_ascii();
            if text.is_empty() {
                continue;
            }
            match parse_event(text) {
                Ok(e) => events.push(e),
                Err(reason) => bad.push((n, reason)),
            }
        }
    })?;
    bad.extend(problems);
    for (line, reason) in bad {
        ds.skip(file, line, reason);
    }
    events.sort_by(|a, b| a.ts.total_cmp(&b.ts));
    Ok(events)
}
