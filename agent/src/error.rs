//! The agent's one error type. Messages are lowercase, say what failed, and where there is an
//! operator fix, name it; sources are chained with `#[source]`, not repeated in the message.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} needs {needs}; run as root or grant it (in Kubernetes: securityContext.capabilities.add)")]
    MissingPrivilege { what: &'static str, needs: String },

    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot write {}; check that the directory exists, is writable and has free space", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("malformed {what} at {}: {detail}", path.display())]
    Parse { what: &'static str, path: PathBuf, detail: String },

    #[error("kernel BTF has no {0}; this kernel's block layer is not supported in BTF mode, try --attach tracepoint")]
    BtfMissing(String),

    #[error(
        "no kernel BTF at {} and no tracefs at {}: mount tracefs with `mount -t tracefs tracefs /sys/kernel/tracing` (or give the agent CAP_SYS_ADMIN so it can mount it)",
        btf.display(),
        tracefs.display()
    )]
    NoBtfNoTracefs { btf: PathBuf, tracefs: PathBuf },

    #[error("tracepoint {0} does not exist in this kernel")]
    TracepointMissing(String),

    #[error("{what}")]
    Bpf {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("invalid {what} `{value}`: {reason}")]
    Config { what: &'static str, value: String, reason: String },

    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn read(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Read { path: path.into(), source }
    }

    pub fn write(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Write { path: path.into(), source }
    }

    pub fn bpf(what: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Bpf { what: what.into(), source: Box::new(source) }
    }
}

/// `error: its source: its source's source` on one line, for logs and the final message.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
