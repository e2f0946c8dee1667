//! The section of docs/performance.md on cache lines the programs share between CPUs, with the
//! 2-job measurement and the estimate for a large node.

use super::{
    WORKLOADS,
    results::{KernelSummary, NODE_CPUS},
};

/// Cache-to-cache transfer of a line another core holds modified: the range commonly published
/// for two-socket x86 servers (same socket, other socket). Not measurable on this 2-vCPU VM.
const TRANSFER_NS: (f64, f64) = (50.0, 200.0);

/// What the fast path writes per I/O, and which CPUs share each line.
const WRITES: [(&str, &str, &str); 6] = [
    (
        "issue and completion",
        "`DENSE_INFLIGHT[device]`: one atomic add each (+1, −1), the peak when a new high is set",
        "every CPU that issues or completes the device's I/O",
    ),
    (
        "issue and completion",
        "`OUTSTANDING[request's cache line mod 2^15]`: one load and one store each",
        "the request's issue and completion CPU, and those of its neighbours in memory (8 entries a line)",
    ),
    ("completion", "`DENSE_HISTS[device]`: sums, 3 buckets, the two frame counters", "none (per-CPU element)"),
    ("completion", "`COUNTERS`: one add", "none (per-CPU element)"),
    ("issue (slow path only)", "`REQUESTS` insert; completion: lookup and delete", "the hash bucket's CPUs"),
    (
        "completion, with attribution",
        "`CGROUPS[(cgroup, device, op)]`: 6 atomic adds",
        "every CPU completing that pod's I/O on that device",
    ),
];

pub fn section(ks: &[KernelSummary]) -> String {
    let mut s = String::from("\n## Cache lines shared between CPUs, and a large node\n\n");
    s += "What the agent's programs write per I/O on the fast path (the loop device here takes it):\n\n";
    s += "| when | what | shared by |\n| --- | --- | --- |\n";
    for (when, what, by) in WRITES {
        s += &format!("| {when} | {what} | {by} |\n");
    }
    let by_name = |name: &str| ks.iter().find(|k| k.workload == name);
    let (one, two) = (WORKLOADS[0], WORKLOADS[2]);
    match (by_name(one.name), by_name(two.name)) {
        (Some(a), Some(b)) => {
            let delta = b.agent_ns - a.agent_ns;
            s += &format!(
                "\nMeasured here: with one fio job ({}) the agent costs {:.1} ns/I/O; with {} jobs pinned one per CPU ({}, the \
                 same total depth of {}), so that both CPUs issue the device's I/O at once, {:.1} ns/I/O ({:+.1} ns){}. The \
                 difference does not isolate the lines above: with one job the loop device's worker already completes on \
                 either CPU, and the two vCPUs of this VM may share a physical core's caches. What a line costs on a large \
                 node is estimated below instead.\n",
                one.name,
                a.agent_ns,
                two.jobs,
                two.name,
                one.iodepth,
                b.agent_ns,
                delta,
                b.bio_ns.map_or(String::new(), |bio| format!("; biolatency -D {:.1} ns/I/O in the same runs", bio)),
            );
        }
        _ => s += "\nThe 2-job run was not measured in this run.\n",
    }
    let (lo, hi) = TRANSFER_NS;
    s += &format!(
        "\nEstimate for a {NODE_CPUS}-CPU node, one NVMe device whose I/O is spread over all CPUs (arithmetic, not a \
         measurement): the device's gauge line is written twice per I/O, and nearly every write finds it in another \
         core's cache, so each I/O pays about 2 transfers, {:.0}–{:.0} ns (at {lo:.0}–{hi:.0} ns per transfer, same \
         socket to other socket), on top of the per-I/O cost above. One line changes owner at most once per transfer \
         time, so the writes to it serialize at 1 / {lo:.0}–{hi:.0} ns = {:.0}–{:.0} M/s, that is {:.1}–{:.0} M IOPS per \
         device before the gauge itself becomes the bottleneck; a 3 M IOPS device needs 6 M writes/s, beyond the \
         cross-socket figure. The outstanding table's line moves once per I/O between the issue and the completion CPU, \
         like the request itself, and also when a neighbouring request on the same line is handled on another CPU \
         at the same time. With attribution, one pod doing all of a device's I/O puts a second such hot line on the completion \
         path. The kernel's own depth (`part_in_flight`) avoids this with per-CPU counters; issue 12 item 2 (per-CPU \
         depth with a bounded peak, sharded attribution) is what removes these lines, and is not built yet.\n",
        2.0 * lo,
        2.0 * hi,
        1e3 / lo,
        1e3 / hi,
        1e3 / hi / 2.0,
        1e3 / lo / 2.0,
    );
    s
}
