//! Installs what building and testing need, idempotently: Debian packages (fio, bpftool,
//! libbpf-tools, docker.io, qemu and busybox-static for the kernel matrix, prometheus for
//! promtool), PyPI packages for tests (duckdb), the nightly's rust-src (eBPF build-std), the musl
//! target (image), and bpf-linker linked against the nightly's own LLVM.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Debian packages: fio (workloads), bpftool (program stats), libbpf-tools (biolatency for the
/// overhead comparison), docker.io (image and docker-level e2e), e2fsprogs (mkfs for tests),
/// musl-tools (`musl-gcc` for `ring` in the static image build); for the kernel matrix
/// (`cargo xtask kernels`): qemu-system-x86 (the guests), busybox-static (their userland),
/// xz-utils and zstd (compressed modules); prometheus for `promtool check metrics` over a real
/// `/metrics` scrape (agent/tests/export_prometheus.rs; the package also ships the server, which
/// the tests do not use).
const APT_PACKAGES: &[&str] = &[
    "fio",
    "bpftool",
    "libbpf-tools",
    "docker.io",
    "e2fsprogs",
    "musl-tools",
    "qemu-system-x86",
    "busybox-static",
    "xz-utils",
    "zstd",
    "prometheus",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
/// PyPI packages for tests: duckdb runs the fleet query of docs/analyzer.md
/// (agent/tests/analyze_duckdb.rs). Pinned so CI machines get the version the test was run with.
const PIP_PACKAGES: &[(&str, &str)] = &[("duckdb", "2.0.1")];

pub fn setup() -> anyhow::Result<()> {
    apt_packages()?;
    pip_packages()?;
    rustup()?;
    bpf_linker()?;
    Ok(())
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: $ {}", display(cmd));
    let status = cmd.status().with_context(|| format!("cannot start {}", display(cmd)))?;
    if !status.success() {
        bail!("{} failed with {status}", display(cmd));
    }
    Ok(())
}

fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("missing Debian packages {missing:?}; install them with `sudo apt-get install {}`", missing.join(" "));
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn pip_packages() -> anyhow::Result<()> {
    for (module, version) in PIP_PACKAGES {
        let have = Command::new("python3")
            .args(["-c", &format!("import {module}; assert {module}.__version__ == '{version}'")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !have {
            run(Command::new("python3").args(["-m", "pip", "install", "--quiet", &format!("{module}=={version}")]))
                .with_context(|| format!("installing {module} for the tests; needs python3 with pip"))?;
        }
    }
    Ok(())
}

fn rustup() -> anyhow::Result<()> {
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    run(Command::new("rustup").args(["target", "add", "x86_64-unknown-linux-musl"]))
}

/// bpf-linker must use the LLVM of the nightly that compiles the eBPF crate. The nightly ships
/// `libLLVM.so.<ver>-rust-<ver>-nightly`; bpf-linker's build wants `<prefix>/lib/libLLVM.so`, so
/// a prefix directory with that one symlink is kept where it persists (its path is baked into
/// the binary's rpath).
fn bpf_linker() -> anyhow::Result<()> {
    if Command::new("bpf-linker").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    let sysroot = String::from_utf8(
        Command::new("rustc").args(["+nightly", "--print", "sysroot"]).output().context("rustc +nightly")?.stdout,
    )?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libLLVM.so.")))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let major = llvm
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("libLLVM.so."))
        .and_then(|v| v.split('.').next())
        .context("cannot tell LLVM's major version")?
        .to_string();
    let home = env::var("HOME").context("HOME is not set")?;
    let prefix = Path::new(&home).join(".local/share/blkio-agent/llvm-nightly");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)?;
    run(Command::new("cargo")
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix))
}

/// The first `tool` on `PATH`, then in /usr/sbin and /sbin (root's tools, e.g. libbpf-tools, when
/// `PATH` lacks them).
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]).map(|d| d.join(tool)).find(|p| p.is_file())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

pub fn run_agent(args: &[String]) -> anyhow::Result<()> {
    let root = workspace_root();
    run(Command::new("cargo").current_dir(&root).args(["build", "--release", "-p", "blkio-agent"]))?;
    let bin = root.join("target/release/blkio-agent");
    let mut cmd = Command::new(bin);
    cmd.arg("run").args(args);
    if !is_root() {
        bail!("the agent attaches eBPF programs and must run as root (sudo cargo xtask run)");
    }
    use std::os::unix::process::CommandExt as _;
    // Replace this process so Ctrl-C and SIGTERM reach the agent directly.
    Err(cmd.exec()).context("cannot start the agent")
}
