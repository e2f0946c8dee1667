//! The matrix table: one summary row per (kernel, device) with a column per attach mode, the BTF
//! facts each guest reported, then one row per cell with what ran or the first failure (the
//! loader's error when it did not load), and the timings.

use std::time::Duration;

use super::{KernelRun, fetch::Kernel};

fn esc(s: &str) -> String {
    s.replace('|', "\\|")
}

pub fn render(
    kernels: &[Kernel],
    runs: &[KernelRun],
    modes: &[String],
    devices: &[String],
    fetched: Duration,
    total: Duration,
    jobs: usize,
) -> String {
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
