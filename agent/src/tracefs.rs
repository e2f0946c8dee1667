//! tracefs: record layouts of classic tracepoints (`events/<cat>/<name>/format`) and mounting
//! tracefs when it is missing. Only the classic-tracepoint attach mode needs it; `tp_btf` does not.

use std::{
    collections::HashMap,
    ffi::CString,
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

/// Where aya looks for tracefs (it needs the event id from `events/<cat>/<name>/id`).
pub const TRACEFS_MOUNTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// A field of a tracepoint record: byte offset and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u64,
    pub size: u64,
}

/// Parsed `format` file: field name -> layout.
#[derive(Debug, Clone, Default)]
pub struct Format {
    pub fields: HashMap<String, Field>,
}

impl Format {
    pub fn parse(text: &str) -> Format {
        let mut fields = HashMap::new();
        for line in text.lines() {
            // "\tfield:dev_t dev;\toffset:8;\tsize:4;\tsigned:0;"
            let mut decl = None;
            let mut offset = None;
            let mut size = None;
            for part in line.split(';') {
                let part = part.trim();
                if let Some(d) = part.strip_prefix("field:") {
                    decl = Some(d.trim());
                } else if let Some(o) = part.strip_prefix("offset:") {
                    offset = o.trim().parse().ok();
                } else if let Some(s) = part.strip_prefix("size:") {
                    size = s.trim().parse().ok();
                }
            }
            if let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) {
                // The name is the last word, without an array suffix: "char rwbs[8]" -> "rwbs".
                let name = decl.rsplit(' ').next().unwrap_or(decl);
                let name = name.split('[').next().unwrap_or(name);
                fields.insert(name.to_string(), Field { offset, size });
            }
        }
        Format { fields }
    }

    pub fn field(&self, tracepoint: &str, name: &str) -> Result<Field> {
        self.fields
            .get(name)
            .copied()
            .ok_or_else(|| Error::Other(format!("tracepoint {tracepoint} has no field {name} in its format file")))
    }
}

/// The first of [`TRACEFS_MOUNTS`] that has the block events.
pub fn find() -> Option<PathBuf> {
    TRACEFS_MOUNTS.iter().map(PathBuf::from).find(|p| p.join("events/block").is_dir())
}

/// Finds tracefs, mounting it at `/sys/kernel/tracing` when it is not mounted and we may.
pub fn find_or_mount() -> Result<PathBuf> {
    if let Some(p) = find() {
        return Ok(p);
    }
    let target = Path::new(TRACEFS_MOUNTS[0]);
    let src = CString::new("tracefs").expect("no NUL");
    let dst = CString::new(TRACEFS_MOUNTS[0]).expect("no NUL");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), src.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        tracing::debug!(%err, "cannot mount tracefs");
        return Err(Error::NoBtfNoTracefs {
            btf: PathBuf::from("/sys/kernel/btf/vmlinux"),
            tracefs: target.to_path_buf(),
        });
    }
    tracing::info!(path = %target.display(), "mounted tracefs");
    find().ok_or_else(|| Error::TracepointMissing("block/block_rq_issue (tracefs has no block events)".into()))
}

/// Reads and parses `events/<category>/<name>/format` under `tracefs`.
pub fn format(tracefs: &Path, category: &str, name: &str) -> Result<Format> {
    let path = tracefs.join("events").join(category).join(name).join("format");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Format::parse(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::TracepointMissing(format!("{category}/{name}")))
        }
        Err(e) => Err(Error::read(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `block_rq_issue` format of a 6.x kernel, including the 2025 `ioprio` field that broke
    /// hand-written record structs in other tools.
    const ISSUE_FORMAT: &str = "name: block_rq_issue
ID: 1234
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:dev_t dev;\toffset:8;\tsize:4;\tsigned:0;
\tfield:sector_t sector;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned int nr_sector;\toffset:24;\tsize:4;\tsigned:0;
\tfield:unsigned int bytes;\toffset:28;\tsize:4;\tsigned:0;
\tfield:unsigned short ioprio;\toffset:32;\tsize:2;\tsigned:0;
\tfield:char rwbs[10];\toffset:34;\tsize:10;\tsigned:0;
\tfield:char comm[16];\toffset:44;\tsize:16;\tsigned:0;
\tfield:__data_loc char[] cmd;\toffset:60;\tsize:4;\tsigned:0;

print fmt: \"%d,%d %s %u (%s) %llu + %u %s,%u,%u [%s]\", ...
";

    #[test]
    fn parses_fields_with_arrays_and_data_loc() {
        let f = Format::parse(ISSUE_FORMAT);
        assert_eq!(f.field("block_rq_issue", "dev").unwrap(), Field { offset: 8, size: 4 });
        assert_eq!(f.field("block_rq_issue", "sector").unwrap(), Field { offset: 16, size: 8 });
        assert_eq!(f.field("block_rq_issue", "bytes").unwrap().offset, 28);
        assert_eq!(f.field("block_rq_issue", "rwbs").unwrap(), Field { offset: 34, size: 10 });
        assert_eq!(f.field("block_rq_issue", "cmd").unwrap().offset, 60);
        assert!(f.field("block_rq_issue", "nope").unwrap_err().to_string().contains("no field nope"));
    }

    #[test]
    fn missing_tracepoint_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = format(dir.path(), "block", "block_rq_issue").unwrap_err();
        assert!(matches!(err, Error::TracepointMissing(ref n) if n == "block/block_rq_issue"), "{err}");
    }
}
