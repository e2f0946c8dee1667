//! Builds the eBPF programs of `agent-ebpf` (nightly toolchain + bpf-linker, via aya-build) when
//! the `ebpf` feature is on. The object is embedded with `include_bytes_aligned!` in the loader.

fn main() -> anyhow::Result<()> {
    #[cfg(feature = "ebpf")]
    build_ebpf()?;
    Ok(())
}

#[cfg(feature = "ebpf")]
fn build_ebpf() -> anyhow::Result<()> {
    use anyhow::{Context as _, anyhow};
    let cargo_metadata::Metadata { packages, .. } =
        cargo_metadata::MetadataCommand::new().no_deps().exec().context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|p| p.name.as_str() == "blkio-agent-ebpf")
        .ok_or_else(|| anyhow!("blkio-agent-ebpf package not found"))?;
    let root_dir =
        ebpf_package.manifest_path.parent().ok_or_else(|| anyhow!("no parent for {}", ebpf_package.manifest_path))?;
    let package =
        aya_build::Package { name: ebpf_package.name.as_str(), root_dir: root_dir.as_str(), ..Default::default() };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
