//! The guest's initramfs: an uncompressed cpio "newc" archive (the kernel's initramfs format,
//! Documentation/driver-api/early-userspace/buffer-format.rst) holding busybox-static, the static
//! agent, the test driver, the plan, the modules and an `/init` script.

use std::{fs, io::Write as _, path::Path};

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
}

pub fn write(path: &Path, c: &Contents) -> anyhow::Result<()> {
    let read = |p: &Path| fs::read(p).with_context(|| format!("reading {}", p.display()));
    let mut cpio = Cpio { out: Vec::with_capacity(64 << 20), ino: 0 };
    for d in ["bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp"] {
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
    cpio.entry("TRAILER!!!", 0, &[], (0, 0));
    fs::write(path, &cpio.out).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
