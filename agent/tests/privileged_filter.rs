//! Privileged: a device `--devices` excludes is skipped by the programs themselves (it takes no
//! fallback map entries and no start-map entries), on real loop devices in both attach modes,
//! while the devices it keeps are still counted exactly.

#![cfg(feature = "ebpf")] // the node agent; absent from the analyzer-only build

mod privileged_support;

use std::path::Path;

use blkio_agent::{
    cli::AttachMode,
    collector::{Collected, Collector},
    devices::{DeviceFilter, DeviceNames, device_id},
    loader::{LoadOptions, load},
};
use privileged_support::*;

/// The device number the programs see for `dev` (`/sys/block/<name>/dev`).
fn id_of(dev: &LoopDev) -> u32 {
    let text = std::fs::read_to_string(format!("/sys/block/{}/dev", dev.name)).unwrap();
    let (major, minor) = text.trim().split_once(':').unwrap();
    device_id(major.parse().unwrap(), minor.parse().unwrap())
}

/// `dev`'s writes in the interval, plus the completions of it the programs did not see.
fn writes_of(c: &Collected, dev: &LoopDev) -> (u64, u64) {
    let d = c.interval.devices.iter().find(|d| d.name == dev.name);
    let writes = d.map_or(0, |d| d.ops.iter().filter(|o| o.op == "write").map(|o| o.count).sum());
    (writes, d.and_then(|d| d.unseen).unwrap_or(0))
}

fn excluded_device_is_skipped_by_the_programs(mode: AttachMode, test: &str) {
    let Some(_p) = privileged(test) else { return };
    let (kept, skipped) = (LoopDev::new(16), LoopDev::new(16));
    let skipped_id = id_of(&skipped);
    let root = Path::new("/");
    let probes = load(&LoadOptions { mode, sys_root: root, attribution: None }).expect("load");
    let names = DeviceNames::new(root, root).unwrap();
    let filter = DeviceFilter::new(&[format!("!{}", skipped.name)]).unwrap();
    let mut c = Collector::new(probes, names, filter, "n".into(), false).unwrap();

    // Before the agent has seen it, a device's I/O lands in the fallback maps; the first
    // interval marks the excluded one.
    skipped.dd_write(20);
    kept.dd_write(20);
    let first = c.collect().unwrap();
    assert!(first.interval.devices.iter().all(|d| d.name != skipped.name), "{:?}", first.interval.devices);
    let (w, unseen) = writes_of(&first, &kept);
    assert_eq!(w + unseen, 20, "the kept device's writes");
    assert!(c.fallback_devices().unwrap().contains(&skipped_id), "its first I/O is in the fallback maps");
    // One interval later its fallback entries are removed...
    c.collect().unwrap();
    assert!(!c.fallback_devices().unwrap().contains(&skipped_id), "the excluded device's entries are reclaimed");
    // ...and its new I/O creates none: the programs skip it at issue and at completion (a
    // completion without a start would be counted as a loss).
    let without_start = c.collect().unwrap().interval.losses_total.get("complete_without_start");
    skipped.dd_write(50);
    kept.dd_write(30);
    let last = c.collect().unwrap();
    assert!(!c.fallback_devices().unwrap().contains(&skipped_id), "the programs took the excluded device's I/O");
    assert!(last.interval.devices.iter().all(|d| d.name != skipped.name));
    assert_eq!(last.interval.losses_total.get("complete_without_start"), without_start, "{:?}", last.interval.losses);
    let (w, unseen) = writes_of(&last, &kept);
    assert_eq!(w + unseen, 30, "the kept device's writes, on its dense slot");
}

#[test]
fn excluded_device_is_skipped_by_the_btf_programs() {
    excluded_device_is_skipped_by_the_programs(AttachMode::Btf, "excluded_device_is_skipped_by_the_btf_programs");
}

#[test]
fn excluded_device_is_skipped_by_the_tracepoint_programs() {
    excluded_device_is_skipped_by_the_programs(
        AttachMode::Tracepoint,
        "excluded_device_is_skipped_by_the_tracepoint_programs",
    );
}
