//! The guest's initramfs: an uncompressed cpio "newc" archive (the kernel's initramfs format,
//! Documentation/driver-api/early-userspace/buffer-format.rst) holding busybox-static, the static
//! agent, the test driver, the plan, the modules, fio with its shared libraries (for the
//! `nvme-fio` scenario) and an `/init` script.

use std::{fs, io::Write as _, path::Path, process::Command};

use anyhow::Context as _;

use super::modules::Module;

/// Where Debian's busybox-static puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Mounts what the agent reads, loads the modules in order, runs the driver, powers off.
/// Kernel messages go to the console at loglevel 4 and above only (warnings stay visible).
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /bin
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox mount -t tmpfs tmpfs /tmp
/bin/busybox --install -s /bin
echo 4 > /proc/sys/kernel/printk
while read -r name args; do
  insmod "/lib/modules/$name.ko" $args || echo "BLKIO-MODULE-FAIL	$name"
done < /etc/modules
/bin/blkio-guest
sync
poweroff -f
"#;

struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields =
            [self.ino, mode, 0, 0, nlink, 0, data.len() as u32, 0, 0, rdev.0, rdev.1, name.len() as u32 + 1, 0];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            write!(self.out, "{f:08x}").expect("writing to a Vec");
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[], (0, 0));
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100000 | mode, data, (0, 0));
    }
}

pub struct Contents<'a> {
    pub agent: &'a Path,
    pub guest: &'a Path,
    pub plan_json: String,
    pub modules: &'a [Module],
    /// A dynamically linked program (fio) and its libraries, from [`dynamic_program`].
    pub program: Option<&'a Program>,
}

/// The directories every guest has.
const BASE_DIRS: [&str; 8] = ["bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp"];

/// Where the guest driver finds fio and its libraries (`xtask/guest/src/fio.rs`).
const PROGRAM_DIR: &str = "bin";
const LIBRARY_DIR: &str = "usr/lib/fio";

/// A host program with the shared libraries it loads, to run in the guest: the guest kernel runs
/// the host's glibc binaries unchanged, given the loader at its `PT_INTERP` path and the
/// libraries on `LD_LIBRARY_PATH`.
pub struct Program {
    pub name: String,
    pub bytes: Vec<u8>,
    /// The dynamic loader's path without the leading `/` (e.g. `lib64/ld-linux-x86-64.so.2`).
    pub interpreter: (String, Vec<u8>),
    /// File name and bytes of each library (symlinks followed).
    pub libraries: Vec<(String, Vec<u8>)>,
}

/// Reads `bin` and everything `ldd` says it loads.
pub fn dynamic_program(bin: &Path) -> anyhow::Result<Program> {
    let out = Command::new("ldd").arg(bin).output().context("running ldd")?;
    if !out.status.success() {
        anyhow::bail!("ldd {}: {}", bin.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let read = |p: &str| fs::read(p).with_context(|| format!("reading {p} (loaded by {})", bin.display()));
    let listing = String::from_utf8_lossy(&out.stdout);
    let (loader, libraries) = parse_ldd(&listing);
    let loader = loader.with_context(|| format!("ldd named no loader for {}", bin.display()))?;
    let mut libs = Vec::new();
    for path in libraries {
        let name = Path::new(path).file_name().context("a library path without a file name")?;
        libs.push((name.to_string_lossy().into_owned(), read(path)?));
    }
    Ok(Program {
        name: bin.file_name().context("a program path without a file name")?.to_string_lossy().into_owned(),
        bytes: fs::read(bin).with_context(|| format!("reading {}", bin.display()))?,
        interpreter: (loader.trim_start_matches('/').to_string(), read(loader)?),
        libraries: libs,
    })
}

/// The loader's path and the libraries' paths in `ldd` output.
fn parse_ldd(out: &str) -> (Option<&str>, Vec<&str>) {
    let (mut loader, mut libraries) = (None, Vec::new());
    for line in out.lines().map(str::trim) {
        if let Some((_, lib)) = line.split_once(" => ") {
            // `libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)`
            libraries.push(lib.split(" (").next().unwrap_or(lib));
        } else if line.starts_with('/') {
            // `/lib64/ld-linux-x86-64.so.2 (0x...)`: the loader, at its absolute path.
            loader = line.split(" (").next();
        }
    }
    (loader, libraries)
}

pub fn write(path: &Path, c: &Contents) -> anyhow::Result<()> {
    let read = |p: &Path| fs::read(p).with_context(|| format!("reading {}", p.display()));
    let mut cpio = Cpio { out: Vec::with_capacity(64 << 20), ino: 0 };
    for d in BASE_DIRS {
        cpio.dir(d);
    }
    // The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
    cpio.entry("dev/console", 0o020600, &[], (5, 1));
    cpio.file("init", 0o755, INIT.as_bytes());
    cpio.file("bin/busybox", 0o755, &read(Path::new(BUSYBOX))?);
    cpio.file("bin/blkio-agent", 0o755, &read(c.agent)?);
    cpio.file("bin/blkio-guest", 0o755, &read(c.guest)?);
    cpio.file("etc/blkio-plan.json", 0o644, c.plan_json.as_bytes());
    let mut order = String::new();
    for m in c.modules {
        cpio.file(&format!("lib/modules/{}.ko", m.name), 0o644, &m.bytes);
        order += &format!("{} {}\n", m.name, m.params);
    }
    cpio.file("etc/modules", 0o644, order.as_bytes());
    if let Some(p) = c.program {
        cpio.file(&format!("{PROGRAM_DIR}/{}", p.name), 0o755, &p.bytes);
        let (loader, bytes) = &p.interpreter;
        // The loader's directories (`lib64`), unless the base layout above has them.
        for (i, _) in loader.match_indices('/') {
            if !BASE_DIRS.contains(&&loader[..i]) {
                cpio.dir(&loader[..i]);
            }
        }
        cpio.file(loader, 0o755, bytes);
        for d in ["usr", "usr/lib", LIBRARY_DIR] {
            cpio.dir(d);
        }
        for (name, bytes) in &p.libraries {
            cpio.file(&format!("{LIBRARY_DIR}/{name}"), 0o755, bytes);
        }
    }
    cpio.entry("TRAILER!!!", 0, &[], (0, 0));
    fs::write(path, &cpio.out).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_names_the_loader_and_libraries() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f5a)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f5b)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f5c)\n";
        let (loader, libs) = parse_ldd(out);
        assert_eq!(loader, Some("/lib64/ld-linux-x86-64.so.2"));
        assert_eq!(libs, ["/lib/x86_64-linux-gnu/libz.so.1", "/lib/x86_64-linux-gnu/libc.so.6"]);
        assert_eq!(parse_ldd("\tnot a dynamic executable\n"), (None, vec![]));
    }

    #[test]
    fn newc_headers_are_aligned() {
        let mut c = Cpio { out: Vec::new(), ino: 0 };
        c.file("init", 0o755, b"abcde");
        assert_eq!(&c.out[..6], b"070701");
        // 110-byte header + "init\0" padded to 116, then 5 data bytes padded to 124.
        assert_eq!(c.out.len(), 124);
        assert_eq!(&c.out[116..121], b"abcde");
        let mode = u32::from_str_radix(std::str::from_utf8(&c.out[14..22]).unwrap(), 16).unwrap();
        assert_eq!(mode, 0o100755);
    }
}
