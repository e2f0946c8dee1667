//! The matrix table: one summary row per (kernel, device) with a column per attach mode, then
//! one row per cell with what ran or the first failure (the loader's error when it did not load).

use super::{Cell, fetch::Kernel};

fn esc(s: &str) -> String {
    s.replace('|', "\\|")
}

pub fn render(kernels: &[Kernel], cells: &[Cell], modes: &[String], devices: &[String]) -> String {
    let mut t = String::new();
    t += &format!("| kernel (Debian cloud) | device | {} |\n", modes.join(" | "));
    t += &format!("|---|---|{}\n", "---|".repeat(modes.len()));
    for k in kernels {
        for d in devices {
            let marks: Vec<&str> = modes
                .iter()
                .map(|m| match cells.iter().find(|c| c.kernel == k.release && &c.mode == m && &c.device == d) {
                    Some(c) if c.pass => "✓",
                    Some(_) => "✗",
                    None => "-",
                })
                .collect();
            t += &format!("| {} ({} {}) | {d} | {} |\n", k.release, k.series, k.suite, marks.join(" | "));
        }
    }
    t += "\n| kernel | mode | device | result | detail |\n|---|---|---|---|---|\n";
    for c in cells {
        t += &format!(
            "| {} | {} | {} | {} | {} |\n",
            c.kernel,
            c.mode,
            c.device,
            if c.pass { "pass" } else { "FAIL" },
            esc(&c.detail)
        );
    }
    let notes: Vec<String> =
        kernels.iter().filter_map(|k| k.note.as_ref().map(|n| format!("- {}: {n}", k.series))).collect();
    if !notes.is_empty() {
        t += &format!("\n{}\n", notes.join("\n"));
    }
    t
}
