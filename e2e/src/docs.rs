//! The install steps of `docs/kubernetes.md`, read from the document itself, so the tests run
//! what a reader runs: the image step (`cargo xtask image --tag ...`), the node import step
//! (`docker save ... | ctr -n k8s.io images import -`) and the first `helm install` command.

use anyhow::{Context as _, bail};

/// The first shell block under `## Install with Helm`, as commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallSteps {
    /// The image step, verbatim.
    pub build: String,
    /// The tag it gives the image.
    pub built_image: String,
    /// The node import step, verbatim.
    pub import: String,
    /// The image it imports.
    pub imported_image: String,
    /// The install command, split into words (`helm install ...`).
    pub install: Vec<String>,
}

/// Commands of the first ```sh block after the heading `section`: continuation lines joined,
/// comments and blank lines dropped.
pub fn shell_block(markdown: &str, section: &str) -> anyhow::Result<Vec<String>> {
    let start = markdown.lines().position(|l| l.trim() == section).with_context(|| format!("no `{section}`"))?;
    let mut lines = markdown.lines().skip(start + 1).skip_while(|l| l.trim() != "```sh");
    lines.next().with_context(|| format!("no sh block under `{section}`"))?;
    let mut out = Vec::new();
    let mut current = String::new();
    for line in lines.take_while(|l| l.trim() != "```") {
        let line = match line.find(" #") {
            Some(i) if !line[..i].contains('\'') && !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head.trim());
                current.push(' ');
            }
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    Ok(out)
}

/// Words of a command line; single and double quotes group, nothing else is interpreted.
pub fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote = None;
    let mut any = false;
    for c in line.chars() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (_, c) => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

pub fn install_steps(markdown: &str) -> anyhow::Result<InstallSteps> {
    let cmds = shell_block(markdown, "## Install with Helm")?;
    let find = |prefix: &str| cmds.iter().find(|c| c.starts_with(prefix)).cloned();
    let build = find("cargo xtask image").context("the install block has no `cargo xtask image` step")?;
    let bw = words(&build);
    let built_image = bw
        .iter()
        .position(|w| w == "--tag")
        .and_then(|i| bw.get(i + 1))
        .cloned()
        .context("the image step must name its tag (`--tag`): the install command refers to it")?;
    let import = find("docker save").context("the install block has no `docker save | ctr ... import` step")?;
    if !import.contains("| ctr -n k8s.io images import -") {
        bail!("the import step must pipe into `ctr -n k8s.io images import -` (kubelet's namespace): {import}");
    }
    let imported_image = words(&import).get(2).cloned().context("docker save names no image")?;
    let install = words(&find("helm install").context("the install block has no `helm install`")?);
    Ok(InstallSteps { build, built_image, import, imported_image, install })
}

impl InstallSteps {
    /// The install command as `helm template` arguments (same release, chart, namespace and
    /// values; the flags only `install` has dropped).
    pub fn template_args(&self) -> Vec<String> {
        let mut out = vec!["template".to_string()];
        let mut it = self.install.iter().skip(2);
        while let Some(w) = it.next() {
            match w.as_str() {
                "--wait" | "--atomic" | "--create-namespace" => {}
                "--timeout" => {
                    it.next();
                }
                _ if w.starts_with("--timeout=") || w.starts_with("--wait=") => {}
                _ => out.push(w.clone()),
            }
        }
        out
    }
}

/// An image reference as containerd and kubelet resolve it: `docker.io/library/` for bare names.
pub fn normalize_image(r: &str) -> String {
    let first = r.split('/').next().unwrap_or("");
    let has_registry = r.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    match (has_registry, r.contains('/')) {
        (true, _) => r.to_string(),
        (false, true) => format!("docker.io/{r}"),
        (false, false) => format!("docker.io/library/{r}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "# x\n\n## Install with Helm\n\ntext\n\n```sh\n# comment\ncargo xtask image --tag blkio-agent:dev   # build\n\
        docker save blkio-agent:dev | ctr -n k8s.io images import -\nhelm install r charts/c -n ns --wait --timeout 5m \\\n  --set image.repository=blkio-agent --set 'image.tag=dev'\n```\n\n```sh\nhelm install other\n```\n";

    #[test]
    fn reads_the_three_steps_of_the_first_block() {
        let s = install_steps(DOC).unwrap();
        assert_eq!(s.build, "cargo xtask image --tag blkio-agent:dev");
        assert_eq!((s.built_image.as_str(), s.imported_image.as_str()), ("blkio-agent:dev", "blkio-agent:dev"));
        assert_eq!(s.install[..3], ["helm", "install", "r"]);
        assert_eq!(
            s.template_args(),
            [
                "template",
                "r",
                "charts/c",
                "-n",
                "ns",
                "--set",
                "image.repository=blkio-agent",
                "--set",
                "image.tag=dev"
            ]
        );
        assert!(install_steps("## Install with Helm\n```sh\nhelm install x\n```\n").is_err(), "no image step");
        let no_tag = DOC.replace(" --tag blkio-agent:dev", "");
        assert!(install_steps(&no_tag).unwrap_err().to_string().contains("--tag"));
    }

    #[test]
    fn image_references_normalize_like_containerd() {
        assert_eq!(normalize_image("blkio-agent:dev"), "docker.io/library/blkio-agent:dev");
        assert_eq!(normalize_image("me/blkio-agent:1"), "docker.io/me/blkio-agent:1");
        assert_eq!(normalize_image("ghcr.io/a/b:1"), "ghcr.io/a/b:1");
        assert_eq!(normalize_image("localhost:5000/b:1"), "localhost:5000/b:1");
        assert_eq!(words("a 'b c' \"d\" e"), ["a", "b c", "d", "e"]);
    }
}
