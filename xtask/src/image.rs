//! `cargo xtask image [--tag T]`: the container image from a binary built here.
//!
//! The static musl binary is built on the host and the Dockerfile's `prebuilt` target copies it
//! onto `scratch`, so no base image is pulled: this works on machines whose Docker engine cannot
//! reach a registry (like this project's). The Dockerfile's default target builds the same image
//! from source for CI with BuildKit (see the Dockerfile's header).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};

use crate::setup::{is_root, run, workspace_root};

pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
/// The limit for the image; the build fails past it.
pub const MAX_IMAGE_BYTES: u64 = 40 << 20;
/// The CA bundle copied into the image (OTLP over https); Debian's `ca-certificates` path.
const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

pub fn build_image(tag: &str) -> anyhow::Result<()> {
    let root = workspace_root();
    ensure_docker()?;
    let binary = build_static("blkio-agent", "blkio-agent")?;
    let stage = stage_context(&root, &binary)?;

    let version = env!("CARGO_PKG_VERSION");
    let revision = git_revision(&root).unwrap_or_else(|| "unknown".into());
    let build = |buildkit: &str| {
        let mut c = Command::new("docker");
        c.current_dir(&root)
            .args(["build", "--target", "prebuilt", "--tag", tag])
            .arg(format!("--build-arg=VERSION={version}"))
            .arg(format!("--build-arg=REVISION={revision}"))
            .arg(format!("--build-arg=CREATED={}", rfc3339_now()))
            .args(["--file", "Dockerfile", "."])
            .env("DOCKER_BUILDKIT", buildkit);
        c
    };
    // The legacy builder needs nothing but the engine (BuildKit needs the buildx plugin, which
    // Debian's docker.io lacks) and builds only the stages up to `prebuilt`. Where an engine no
    // longer has it, BuildKit skips the unused stages just the same: nothing is pulled either way.
    if let Err(legacy) = run(&mut build("0")) {
        eprintln!("xtask: the legacy builder failed ({legacy:#}); trying BuildKit");
        run(&mut build("1"))?;
    }

    let size = image_size(tag)?;
    eprintln!(
        "xtask: image {tag}: {:.1} MiB (binary {:.1} MiB, staged in {})",
        size as f64 / (1 << 20) as f64,
        fs::metadata(&binary)?.len() as f64 / (1 << 20) as f64,
        stage.display()
    );
    if size > MAX_IMAGE_BYTES {
        bail!("image {tag} is {size} bytes, over the {MAX_IMAGE_BYTES}-byte limit");
    }
    // The image must run as is: entrypoint found, static binary starts without a libc.
    run(Command::new("docker").args(["run", "--rm", "--network=none", tag, "--version"]))?;
    Ok(())
}

/// Builds `package` for the musl target (a static binary: the image, the kernel-matrix guests)
/// and returns the path of its binary `bin`.
pub fn build_static(package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    ensure_musl_cc()?;
    run(Command::new("cargo").current_dir(&root).args(["build", "--release", "-p", package, "--target", MUSL_TARGET]))
        .context("building the static binary (the musl target is installed by `cargo xtask setup`)")?;
    Ok(root.join("target").join(MUSL_TARGET).join("release").join(bin))
}

/// Copies what the `prebuilt` stage reads to `target/image/` (the only part of target/ that
/// .dockerignore lets into the build context).
fn stage_context(root: &Path, binary: &Path) -> anyhow::Result<PathBuf> {
    let stage = root.join("target/image");
    fs::create_dir_all(&stage)?;
    fs::copy(binary, stage.join("blkio-agent")).with_context(|| format!("copying {}", binary.display()))?;
    if !Path::new(HOST_CA_BUNDLE).is_file() {
        bail!("{HOST_CA_BUNDLE} is missing (needed in the image for OTLP over https): apt-get install ca-certificates");
    }
    fs::copy(HOST_CA_BUNDLE, stage.join("ca-certificates.crt"))?;
    Ok(stage)
}

/// Size of the image as Docker reports it (the sum of its layers, uncompressed).
pub fn image_size(tag: &str) -> anyhow::Result<u64> {
    let out = Command::new("docker").args(["image", "inspect", "--format", "{{.Size}}", tag]).output()?;
    if !out.status.success() {
        bail!("docker image inspect {tag}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    String::from_utf8(out.stdout)?.trim().parse().context("image size")
}

fn on_path(tool: &str) -> bool {
    crate::setup::which(tool).is_some()
}

/// C code in the agent's dependencies (ring, for OTLP over TLS) is compiled for the musl target
/// by cc-rs, which looks for `x86_64-linux-musl-gcc` or `musl-gcc` (Debian's musl-tools).
fn ensure_musl_cc() -> anyhow::Result<()> {
    if on_path("x86_64-linux-musl-gcc")
        || on_path("musl-gcc")
        || std::env::var_os("CC_x86_64_unknown_linux_musl").is_some()
    {
        return Ok(());
    }
    if !is_root() {
        bail!("no C compiler for the musl target: `sudo apt-get install musl-tools`");
    }
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends", "musl-tools"])
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn docker_reachable() -> bool {
    Command::new("docker").arg("info").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// The Docker engine must answer. As root on a machine where it is installed but not running
/// (this project's machines and CI start no services), start it, logging to a file.
pub fn ensure_docker() -> anyhow::Result<()> {
    if docker_reachable() {
        return Ok(());
    }
    let has_dockerd = Command::new("dockerd").arg("--version").output().is_ok_and(|o| o.status.success());
    if !has_dockerd || !is_root() {
        bail!(
            "the Docker engine does not answer (`docker info` fails); start it (e.g. `sudo dockerd &`) \
             or install docker.io with `cargo xtask setup`"
        );
    }
    let log_path = std::env::temp_dir().join("blkio-agent-dockerd.log");
    let log = fs::File::create(&log_path)?;
    eprintln!("xtask: starting dockerd (log: {})", log_path.display());
    // Left running on purpose: later builds and the docker e2e reuse it.
    Command::new("dockerd")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start dockerd")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if docker_reachable() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(500));
    }
    bail!("dockerd did not answer within 60 s; see {}", log_path.display())
}

fn git_revision(root: &Path) -> Option<String> {
    let out = Command::new("git").current_dir(root).args(["rev-parse", "HEAD"]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Now as RFC 3339 UTC (`org.opencontainers.image.created`), without a date crate.
pub fn rfc3339_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", sod / 3600, (sod / 60) % 60, sod % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_label_is_rfc3339_utc() {
        let now = rfc3339_now();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.ends_with('Z') && now.as_bytes()[10] == b'T', "{now}");
        let year: i32 = now[..4].parse().unwrap();
        assert!(year >= 2024, "{now}");
    }
}
