//! Fetching (not installing) Debian's cloud kernels: one apt state per suite under the cache
//! (its own sources list, `Dir::State::Lists`, `Dir::Cache` and an empty dpkg status), so the
//! host's apt state is never touched; `apt-get download` of the newest kernel of a series, as
//! resolved from that suite's package lists, then `dpkg-deb -x` into a cache reused by later runs.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};

/// A kernel series of the matrix and the Debian suite whose newest cloud kernel stands for it.
pub struct Series {
    pub name: &'static str,
    pub suite: &'static str,
    /// The kernel release must start with this (`None`: the suite's newest, whatever it is).
    pub prefix: Option<&'static str>,
    /// Stable suites get their `-updates` and `-security` suites too (that is where the newest
    /// point releases are).
    pub stable: bool,
}

pub const SERIES: &[Series] = &[
    Series { name: "5.10", suite: "bullseye", prefix: Some("5.10."), stable: true },
    Series { name: "6.1", suite: "bookworm", prefix: Some("6.1."), stable: true },
    Series { name: "6.12", suite: "trixie", prefix: Some("6.12."), stable: true },
    Series { name: "newest", suite: "sid", prefix: None, stable: false },
];

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const HOST_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";
/// Package lists younger than this are not refreshed.
const LISTS_MAX_AGE: Duration = Duration::from_secs(6 * 3600);
/// How many of the newest kernels of a series are tried when the mirror lacks the newest's .deb.
const CANDIDATES: usize = 6;

/// A fetched kernel, extracted under the cache.
pub struct Kernel {
    pub series: &'static str,
    pub suite: &'static str,
    /// `uname -r`, e.g. `6.1.0-40-cloud-amd64`.
    pub release: String,
    /// The Debian package version, e.g. `6.1.153-1`.
    pub version: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` of the extracted packages.
    pub modules: PathBuf,
    /// Set when the series' newest kernel could not be fetched and an older one stands in.
    pub note: Option<String>,
}

/// `$BLKIO_KERNELS_CACHE`, else `~/.cache/blkio-agent/kernels` (reused by every later run).
pub fn cache_root() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("BLKIO_KERNELS_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    let base = match (std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME")) {
        (Some(d), _) => PathBuf::from(d),
        (None, Some(home)) => PathBuf::from(home).join(".cache"),
        // No home (some CI runners): keep the cache beside the build.
        (None, None) => return Ok(crate::setup::workspace_root().join("target/kernels-cache")),
    };
    Ok(base.join("blkio-agent/kernels"))
}

/// The archive and security URIs of the host's own Debian sources (deb822).
fn mirror_uris() -> anyhow::Result<(String, String)> {
    let text = fs::read_to_string(HOST_SOURCES).with_context(|| {
        format!(
            "cannot read {HOST_SOURCES} (the Debian mirror the kernels come from); fix: restore the Debian apt sources"
        )
    })?;
    let (mut archive, mut security) = (None, None);
    for stanza in text.split("\n\n") {
        let field = |k: &str| {
            stanza.lines().find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string())).filter(|v| !v.is_empty())
        };
        let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:")) else { continue };
        let uri = uris.split_whitespace().next().unwrap_or_default().to_string();
        if suites.split_whitespace().any(|s| s.ends_with("-security")) {
            security = Some(uri);
        } else {
            archive = Some(uri);
        }
    }
    match (archive, security) {
        (Some(a), Some(s)) => Ok((a, s)),
        _ => bail!("{HOST_SOURCES} has no archive and security URIs; fix: restore the Debian apt sources"),
    }
}

/// An apt error line without URLs and addresses: the mirror is the host's own, and a 404 just
/// means the mirror does not carry that package file.
fn apt_error(stderr: &str) -> String {
    let Some(line) = stderr.lines().find(|l| l.starts_with("E:") || l.starts_with("W:")) else {
        return "(apt printed no error)".into();
    };
    if line.contains(" 404 ") || line.contains("404  Not Found") {
        return "the mirror does not have that .deb (HTTP 404)".into();
    }
    let words: Vec<&str> = line.split_whitespace().filter(|w| !w.contains("://")).collect();
    let text = words.join(" ");
    match text.find("[IP:") {
        Some(i) => text[..i].trim_end().to_string(),
        None => text,
    }
}

struct Apt {
    dir: PathBuf,
}

impl Apt {
    fn new(cache: &Path, series: &Series) -> anyhow::Result<Apt> {
        let dir = cache.join("apt").join(series.suite);
        for d in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(d))?;
        }
        if !dir.join("status").exists() {
            fs::write(dir.join("status"), "")?;
        }
        if !Path::new(KEYRING).is_file() {
            bail!("{KEYRING} is missing (it verifies the Debian suites); fix: apt-get install debian-archive-keyring");
        }
        let (archive, security) = mirror_uris()?;
        let s = series.suite;
        let mut list = format!("deb [signed-by={KEYRING}] {archive} {s} main\n");
        if series.stable {
            list += &format!("deb [signed-by={KEYRING}] {archive} {s}-updates main\n");
            list += &format!("deb [signed-by={KEYRING}] {security} {s}-security main\n");
        }
        fs::write(dir.join("sources.list"), list)?;
        Ok(Apt { dir })
    }

    fn cmd(&self, tool: &str) -> Command {
        let d = &self.dir;
        let mut c = Command::new(tool);
        for (k, v) in [
            ("Dir::Etc::SourceList", d.join("sources.list")),
            ("Dir::Etc::SourceParts", d.join("no-parts")),
            ("Dir::State::Lists", d.join("lists")),
            ("Dir::Cache", d.join("cache")),
            ("Dir::State::status", d.join("status")),
        ] {
            c.arg("-o").arg(format!("{k}={}", v.display()));
        }
        // Only the Packages indices: no translations, no AppStream metadata.
        c.args(["-o", "Acquire::Languages=none", "-o", "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"]);
        // The cache is in root's home, which the `_apt` sandbox user cannot write (a non-root
        // apt drops no privileges anyway).
        if crate::setup::is_root() {
            c.args(["-o", "APT::Sandbox::User=root"]);
        }
        c.arg("-q");
        c
    }

    fn update(&self, suite: &str) -> anyhow::Result<()> {
        let stamp = self.dir.join("lists/.updated");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() < LISTS_MAX_AGE);
        if fresh {
            return Ok(());
        }
        eprintln!("xtask: kernels: apt-get update for {suite} (separate state in {})", self.dir.display());
        let out = self.cmd("apt-get").arg("update").output().context("cannot run apt-get (install apt)")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || stderr.lines().any(|l| l.starts_with("E:") || l.starts_with("W: GPG")) {
            bail!(
                "cannot fetch the {suite} package lists from the Debian mirror of {HOST_SOURCES} ({}); fix: check \
                 the network to that mirror (or set BLKIO_KERNELS_CACHE to a cache that already holds the kernels)",
                apt_error(&stderr)
            );
        }
        fs::write(stamp, "")?;
        Ok(())
    }

    fn pkgnames(&self) -> anyhow::Result<BTreeSet<String>> {
        let out = self.cmd("apt-cache").arg("pkgnames").output()?;
        if !out.status.success() {
            bail!("apt-cache pkgnames: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect())
    }

    /// `Package` -> `Version` (the candidate) for `pkgs`, in one `apt-cache show`.
    fn versions(&self, pkgs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
        if pkgs.is_empty() {
            return Ok(BTreeMap::new());
        }
        let out = self.cmd("apt-cache").args(["show", "--no-all-versions"]).args(pkgs).output()?;
        let mut map = BTreeMap::new();
        for stanza in String::from_utf8_lossy(&out.stdout).split("\n\n") {
            let field = |k: &str| stanza.lines().find_map(|l| l.strip_prefix(k).map(str::to_string));
            if let (Some(p), Some(v)) = (field("Package: "), field("Version: ")) {
                map.insert(p, v);
            }
        }
        Ok(map)
    }
}

fn version_gt(a: &str, b: &str) -> bool {
    Command::new("dpkg").args(["--compare-versions", a, "gt", b]).status().is_ok_and(|s| s.success())
}

/// The packages holding vmlinuz and the modules of `release`: one `-unsigned` image up to 6.12,
/// split into binary/modules/base packages in newer suites.
fn packages_of(release: &str, names: &BTreeSet<String>) -> Option<Vec<String>> {
    let image = format!("linux-image-{release}-unsigned");
    if names.contains(&image) {
        return Some(vec![image]);
    }
    let binary = [format!("linux-binary-unsigned-{release}"), format!("linux-binary-{release}")]
        .into_iter()
        .find(|p| names.contains(p))?;
    let mut pkgs = vec![binary, format!("linux-modules-{release}")];
    let base = format!("linux-base-{release}");
    if names.contains(&base) {
        pkgs.push(base);
    }
    pkgs.iter().all(|p| names.contains(p)).then_some(pkgs)
}

/// Resolves the newest cloud kernel of `series` and returns it extracted, downloading it first
/// unless the cache has it.
pub fn fetch(cache: &Path, series: &'static Series) -> anyhow::Result<Kernel> {
    let apt = Apt::new(cache, series)?;
    apt.update(series.suite)?;
    let names = apt.pkgnames()?;
    // Every cloud kernel has a (signed) `linux-image-<release>` package.
    let images: Vec<String> = names
        .iter()
        .filter_map(|n| n.strip_prefix("linux-image-"))
        .filter(|r| r.ends_with("-cloud-amd64") && r.starts_with(|c: char| c.is_ascii_digit()))
        .filter(|r| series.prefix.is_none_or(|p| r.starts_with(p)))
        .map(|r| format!("linux-image-{r}"))
        .collect();
    let versions = apt.versions(&images)?;
    let mut releases: Vec<(String, String)> = images
        .iter()
        .filter_map(|p| Some((p.strip_prefix("linux-image-")?.to_string(), versions.get(p)?.clone())))
        .collect();
    releases.sort_by(|a, b| {
        if version_gt(&a.1, &b.1) {
            std::cmp::Ordering::Less
        } else if version_gt(&b.1, &a.1) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    });
    let Some(newest) = releases.first().cloned() else {
        bail!("no {} cloud kernel in {}'s package lists", series.name, series.suite);
    };
    let mut skipped = Vec::new();
    for (release, version) in releases.into_iter().take(CANDIDATES) {
        let dir = cache.join(&release);
        let note = (!skipped.is_empty())
            .then(|| format!("newest {} ({}) could not be fetched: {}", newest.0, newest.1, skipped.join("; ")));
        if !dir.join("complete").exists() {
            let pkgs = packages_of(&release, &names)
                .with_context(|| format!("no unsigned image/modules packages for {release} in {}", series.suite))?;
            if let Err(e) = download_and_extract(&apt, &dir, &pkgs) {
                eprintln!("xtask: kernels: {release}: {e:#}; trying the next older {} kernel", series.name);
                skipped.push(format!("{release}: {e:#}"));
                continue;
            }
        }
        let root = dir.join("root");
        let modules = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|m| root.join(m).join(&release))
            .find(|p| p.is_dir())
            .with_context(|| format!("no lib/modules/{release} in the extracted packages ({})", root.display()))?;
        let vmlinuz =
            [root.join(format!("boot/vmlinuz-{release}")), modules.join("vmlinuz"), modules.join("vmlinuz.unsigned")]
                .into_iter()
                .find(|p| p.is_file())
                .with_context(|| format!("no vmlinuz for {release} under {}", root.display()))?;
        return Ok(Kernel { series: series.name, suite: series.suite, release, version, vmlinuz, modules, note });
    }
    bail!("none of the {CANDIDATES} newest {} kernels could be fetched: {}", series.name, skipped.join("; "))
}

fn download_and_extract(apt: &Apt, dir: &Path, pkgs: &[String]) -> anyhow::Result<()> {
    let mut dl = dir.as_os_str().to_owned();
    dl.push(".download");
    let dl = PathBuf::from(dl);
    let _ = fs::remove_dir_all(&dl);
    fs::create_dir_all(&dl)?;
    eprintln!("xtask: kernels: apt-get download {}", pkgs.join(" "));
    let out = apt.cmd("apt-get").current_dir(&dl).arg("download").args(pkgs).output()?;
    if !out.status.success() {
        let _ = fs::remove_dir_all(&dl);
        bail!("{}", apt_error(&String::from_utf8_lossy(&out.stderr)));
    }
    let root = dl.join("root");
    for deb in fs::read_dir(&dl)?.filter_map(|e| e.ok().map(|e| e.path())) {
        if deb.extension().is_some_and(|e| e == "deb") {
            crate::setup::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
            fs::remove_file(&deb)?;
        }
    }
    fs::write(dl.join("complete"), pkgs.join("\n") + "\n")?;
    let _ = fs::remove_dir_all(dir);
    fs::rename(&dl, dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_errors_name_no_host() {
        let e = "E: Failed to fetch http://m.example/debian/pool/x.deb  404  Not Found [IP: 192.0.2.1 80]\n";
        assert_eq!(apt_error(e), "the mirror does not have that .deb (HTTP 404)");
        let e =
            "W: Failed to fetch http://m.example/dists/sid/InRelease  Temporary failure resolving 'm.example' [IP: 1]";
        assert_eq!(apt_error(e), "W: Failed to fetch Temporary failure resolving 'm.example'");
    }
}
