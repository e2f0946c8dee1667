//! Lines the guest prints on the serial console and the host parses. Kernel messages can share
//! the console, so every line starts with a marker and carries one event; fields are separated
//! by a tab and the last field (free text) never contains a newline.

pub const KERNEL: &str = "BLKIO-KERNEL";
pub const CELL: &str = "BLKIO-CELL";
pub const AGENT_LOG: &str = "BLKIO-AGENT";
pub const RESULT: &str = "BLKIO-RESULT";
pub const DONE: &str = "BLKIO-DONE";

/// One cell's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellResult {
    pub mode: String,
    pub device: String,
    pub pass: bool,
    /// On a pass: what ran (attach mode and path reported, counts). On a failure: the first
    /// failing check, or the agent's error line.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `uname -r` of the guest, whether it has `/sys/kernel/btf/vmlinux`, and which of the names
    /// the agent cares about its BTF has (`name=yes|no`, space-separated).
    Kernel {
        release: String,
        btf: bool,
        facts: String,
    },
    /// A cell starts.
    Cell {
        mode: String,
        device: String,
    },
    /// A line of the agent's stderr.
    AgentLog {
        mode: String,
        device: String,
        line: String,
    },
    Result(CellResult),
    /// Every cell ran; the guest powers off.
    Done,
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r', '\t'], " ")
}

impl Event {
    pub fn to_line(&self) -> String {
        match self {
            Event::Kernel { release, btf, facts } => {
                format!("{KERNEL}\t{}\t{}\t{}", one_line(release), if *btf { "btf" } else { "no-btf" }, one_line(facts))
            }
            Event::Cell { mode, device } => format!("{CELL}\t{mode}\t{device}"),
            Event::AgentLog { mode, device, line } => format!("{AGENT_LOG}\t{mode}\t{device}\t{}", one_line(line)),
            Event::Result(r) => format!(
                "{RESULT}\t{}\t{}\t{}\t{}",
                r.mode,
                r.device,
                if r.pass { "pass" } else { "fail" },
                one_line(&r.detail)
            ),
            Event::Done => DONE.to_string(),
        }
    }

    /// Parses a console line; kernel messages and anything else give `None`. A marker may be
    /// preceded by console noise on the same line (a printk without a newline), so it is searched.
    pub fn parse(line: &str) -> Option<Event> {
        let line = line.trim_end_matches(['\r', '\n']);
        let start = line.find("BLKIO-")?;
        let mut f = line[start..].split('\t');
        let tag = f.next()?;
        let mut next = || f.next().map(str::to_string);
        Some(match tag {
            KERNEL => Event::Kernel { release: next()?, btf: next()? == "btf", facts: next().unwrap_or_default() },
            CELL => Event::Cell { mode: next()?, device: next()? },
            AGENT_LOG => Event::AgentLog { mode: next()?, device: next()?, line: next().unwrap_or_default() },
            RESULT => {
                let (mode, device, verdict) = (next()?, next()?, next()?);
                let pass = match verdict.as_str() {
                    "pass" => true,
                    "fail" => false,
                    _ => return None,
                };
                Event::Result(CellResult { mode, device, pass, detail: next().unwrap_or_default() })
            }
            DONE => Event::Done,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_noise_is_ignored() {
        let events = [
            Event::Kernel { release: "6.1.0-40-cloud-amd64".into(), btf: true, facts: "rq_disk=no".into() },
            Event::Cell { mode: "btf".into(), device: "nvme".into() },
            Event::AgentLog { mode: "auto".into(), device: "virtio".into(), line: "a\tb\nc".into() },
            Event::Result(CellResult {
                mode: "tracepoint".into(),
                device: "null_blk".into(),
                pass: false,
                detail: "write count 3 != diskstats 4".into(),
            }),
            Event::Done,
        ];
        for e in events {
            let line = e.to_line();
            assert!(!line.contains('\n'));
            let back = Event::parse(&format!("[    1.2] noise{line}\r\n")).unwrap();
            match (&e, &back) {
                (Event::AgentLog { line: l, .. }, Event::AgentLog { line: b, .. }) => assert_eq!(b, &one_line(l)),
                _ => assert_eq!(back, e),
            }
        }
        assert_eq!(Event::parse("[    0.000] Linux version 6.1"), None);
        assert_eq!(Event::parse("BLKIO-RESULT\tauto\tnvme\tmaybe\tx"), None);
    }
}
