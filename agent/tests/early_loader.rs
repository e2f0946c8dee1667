//! `loader::early`: with the address-space limit lowered, kernel BTF cannot be read into memory,
//! so aya's `Btf::from_sys_fs()` (what `EbpfLoader::new()` calls) fails cheaply, and the limit
//! comes back afterwards. No libtest harness: the guard refuses to act in a process with more than
//! one thread, and libtest runs tests on threads.

#[cfg(feature = "ebpf")]
fn main() {
    use std::path::Path;

    use blkio_agent::loader::early::without_readable_file;

    let vmlinux = Path::new("/sys/kernel/btf/vmlinux");
    if !blkio_agent::prereq::require("early_loader", &prereqs(vmlinux)) {
        return;
    }
    let limit = || {
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut l) }, 0);
        (l.rlim_cur, l.rlim_max)
    };
    let before = limit();

    // Under the guard aya finds no BTF; the closure ran exactly once.
    let mut runs = 0;
    let aya_parse = without_readable_file(vmlinux, || {
        runs += 1;
        aya::Btf::from_sys_fs().map(|_| ()).map_err(|e| e.to_string())
    });
    assert_eq!(runs, 1, "the closure runs once when the file is unreadable");
    let err = aya_parse.expect("guard applied").expect_err("aya must not parse vmlinux under the guard");
    assert!(err.contains("vmlinux"), "aya's error names the file: {err}");
    assert_eq!(limit(), before, "RLIMIT_AS restored");
    assert!(std::fs::read(vmlinux).is_ok_and(|b| b.len() > 1 << 20), "readable again afterwards");
    assert!(aya::Btf::from_sys_fs().is_ok(), "aya parses it again afterwards");

    // A file that still fits under the limit is refused (the guard would not protect a parse of
    // it): `f` is not run, the limit is restored.
    let small = std::env::temp_dir().join(format!("early-loader-{}", std::process::id()));
    std::fs::write(&small, b"small").unwrap();
    let ran = without_readable_file(&small, || ());
    std::fs::remove_file(&small).unwrap();
    assert_eq!(ran, None, "a readable file: closure not run");
    assert_eq!(limit(), before, "RLIMIT_AS restored");

    // With a second thread alive the guard does nothing.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || rx.recv().ok());
    assert_eq!(without_readable_file(vmlinux, || ()), None, "refused with two threads");
    drop(tx);
    t.join().unwrap();
    eprintln!("early_loader: ok");
}

#[cfg(feature = "ebpf")]
fn prereqs(vmlinux: &std::path::Path) -> Vec<String> {
    if vmlinux.exists() { vec![] } else { vec![format!("kernel BTF at {}", vmlinux.display())] }
}

#[cfg(not(feature = "ebpf"))]
fn main() {}
