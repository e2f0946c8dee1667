//! The matrix table: one summary row per (kernel, device) with a column per attach mode, the BTF
//! facts each guest reported, then one row per cell with what ran or the first failure (the
//! loader's error when it did not load), and the timings.

use std::time::Duration;

use super::{KernelRun, fetch::Kernel};

fn esc(s: &str) -> String {
    s.replace('|', "\\|")
}

/// The summary: one row per (kernel, device), a ✓/✗ column per mode.
pub fn summary(kernels: &[Kernel], runs: &[KernelRun], modes: &[String], devices: &[String]) -> String {
    let mut t = String::new();
    t += &format!("| kernel (Debian cloud) | device | {} |\n", modes.join(" | "));
    t += &format!("|---|---|{}\n", "---|".repeat(modes.len()));
    for r in runs {
        let k = &kernels[r.index];
        for d in devices {
            let marks: Vec<&str> = modes
                .iter()
                .map(|m| match r.cells.iter().find(|c| &c.mode == m && &c.device == d) {
                    Some(c) if c.pass => "✓",
                    Some(_) => "✗",
                    None => "-",
                })
                .collect();
            t += &format!("| {} ({} {}) | {d} | {} |\n", k.release, k.series, k.suite, marks.join(" | "));
        }
    }
    t
}

/// Everything the command prints: the summary, the BTF facts, every cell, the timings.
pub fn render(
    kernels: &[Kernel],
    runs: &[KernelRun],
    modes: &[String],
    devices: &[String],
    fetched: Duration,
    total: Duration,
    jobs: usize,
) -> String {
    let mut t = summary(kernels, runs, modes, devices);
    t += "\n| kernel | BTF has (from the guest's /sys/kernel/btf/vmlinux) |\n|---|---|\n";
    for r in runs {
        t +=
            &format!("| {} | {} |\n", kernels[r.index].release, r.facts.as_deref().unwrap_or("(guest did not report)"));
    }
    t += "\n| kernel | mode | device | result | detail |\n|---|---|---|---|---|\n";
    for r in runs {
        for c in &r.cells {
            t += &format!(
                "| {} | {} | {} | {} | {} |\n",
                c.kernel,
                c.mode,
                c.device,
                if c.pass { "pass" } else { "FAIL" },
                esc(&c.detail)
            );
        }
    }
    t += "\n";
    for r in runs {
        let k = &kernels[r.index];
        t += &format!(
            "- {} ({} {}): booted and ran in {:.0} s\n",
            k.release,
            k.series,
            k.version,
            r.elapsed.as_secs_f64()
        );
        if let Some(n) = &k.note {
            t += &format!("  - {n}\n");
        }
    }
    t += &format!(
        "- builds and fetch {:.0} s; whole run {:.0} s with {jobs} guest(s) at a time\n",
        fetched.as_secs_f64(),
        total.as_secs_f64()
    );
    t
}

/// Replaces the text between `<!-- {tag}:begin -->` and `<!-- {tag}:end -->` in `path`.
pub fn replace_marked(path: &std::path::Path, tag: &str, body: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (begin, end) = (format!("<!-- {tag}:begin -->"), format!("<!-- {tag}:end -->"));
    let (Some(b), Some(e)) = (text.find(&begin), text.find(&end)) else {
        anyhow::bail!("{} has no {begin} ... {end} markers", path.display());
    };
    let new = format!("{}{begin}\n{body}{}", &text[..b], &text[e..]);
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marked_section_is_replaced_and_missing_markers_fail() {
        let p = std::env::temp_dir().join(format!("xtask-marked-{}.md", std::process::id()));
        std::fs::write(&p, "intro\n<!-- m:begin -->\nold\n<!-- m:end -->\noutro\n").unwrap();
        replace_marked(&p, "m", "new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "intro\n<!-- m:begin -->\nnew\n<!-- m:end -->\noutro\n");
        assert!(replace_marked(&p, "other", "x").unwrap_err().to_string().contains("markers"));
        std::fs::remove_file(&p).unwrap();
    }
}
