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
            match serde_json::from_slice::<RawEvent>(text) {
                Ok(RawEvent { timestamp, label }) => {
                    let ts = match timestamp {
                        RawTime::Epoch(t) if t.is_finite() => Ok(t),
                        RawTime::Epoch(t) => Err(format!("timestamp {t} is not a time")),
                        RawTime::Text(s) => parse_time(&s),
                    };
                    match ts {
                        Ok(ts) => events.push(Event { ts, label }),
                        Err(e) => bad.push((n, format!("event timestamp: {e}"))),
                    }
                }
                Err(e) => bad.push((n, format!("not an event {{\"timestamp\": .., \"label\": ..}}: {e}"))),
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
