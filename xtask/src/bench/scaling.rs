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
        "`DENSE_INFLIGHT[device].lines[hardware queue mod 64]`: one atomic add each (+1, −1), the line's peak when \
         a new high is set",
        "the CPUs blk-mq maps to that queue (and to the queues 64 apart): one or a few on a multi-queue NVMe, every \
         CPU on a single-queue device such as loop",
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
        "`CGROUPS[(cgroup, device, op, hardware queue mod 8)]`: 6 atomic adds",
        "the CPUs completing that pod's I/O on an eighth of the device's queues",
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
         measurement). Linux gives such a device one hardware queue per CPU, or as many as the controller has (often \
         64–128), and completes each queue's requests on that queue's CPUs (managed interrupt affinity). The depth \
         line of a queue is then written by the {NODE_CPUS} / min(queues, 64) CPUs that share it: 3 CPUs with 64 or \
         more queues, 6 with 32. Issue and completion of one request mostly run on the same CPU, so the line is \
         usually in that core's cache already; it moves only when another CPU of the same line does I/O in between, \
         at most 2 transfers per I/O, {:.0}–{:.0} ns (at {lo:.0}–{hi:.0} ns per transfer, same socket to other \
         socket). A line changes owner at most once per transfer time, so one line serializes at {:.0}–{:.0} M \
         writes/s, and the device's 64 lines at {:.0}–{:.0} M writes/s, {:.0}–{:.0} M IOPS: far beyond any device, \
         where the former single line per device stopped at {:.1}–{:.0} M IOPS (a 3 M IOPS device needs 6 M \
         writes/s, beyond the cross-socket figure). A single-queue device (loop, a virtio-blk with one queue) still \
         has one line, written by every CPU doing its I/O, as its own queue is. The outstanding table's line moves \
         once per I/O between the issue and the completion CPU, like the request itself, and also when a \
         neighbouring request on the same line is handled on another CPU at the same time. With attribution, one \
         pod doing all of a device's I/O writes 8 lines, one per eighth of the queues, instead of one.\n",
        2.0 * lo,
        2.0 * hi,
        1e3 / hi,
        1e3 / lo,
        64.0 * 1e3 / hi,
        64.0 * 1e3 / lo,
        64.0 * 1e3 / hi / 2.0,
        64.0 * 1e3 / lo / 2.0,
        1e3 / hi / 2.0,
        1e3 / lo / 2.0,
    );
    s += "\n### Depth per hardware queue\n\n\
          The depth is counted per hardware queue (`rq->mq_hctx->queue_num` mod 64, `QUEUE_LINES` in \
          agent-ebpf/common), each queue's line on a cache line of its own, and the device's depth is the sum of its \
          lines. A per-CPU counter, as the kernel's `part_in_flight` keeps for bio-based devices, gives the depth \
          but no peak: one CPU's counter goes up at issue and another's down at completion, and no CPU sees the sum \
          without reading every other CPU's line, which is the sharing this removes. A queue's line, in contrast, \
          is a gauge of its own (a request keeps its queue from allocation to completion), with an exact peak per \
          interval like the former device line. The device's interval peak is then bounded: at least the highest \
          queue's peak (that queue alone held that many at that moment: `peak` in the JSONL, \
          `blkio.inflight.peak`), at most the sum of each queue's highest value in the interval (`peak_upper`, \
          `blkio.inflight.peak.upper`; a queue with no issue in the interval is counted at the larger of its depth \
          at the previous read and now). When one line moved, as on every single-queue device, the two are equal \
          and the peak is exact, and the JSONL has no `peak_upper`. The alternative the issue names, one fetch-add \
          returning the exact depth plus a compare-and-swap for a new high, keeps one line per device written by \
          every CPU and needs BPF atomics with fetch (5.12+, and an object built for ISA v3), which 5.10 does not \
          have. Tests: `collector::depth` and `a_device_on_several_queues_reports_its_peak_bounds` (unit), and the \
          kernel matrix, whose guests have 2 CPUs and so 2 queues on the emulated NVMe and virtio-blk (each \
          snapshot's `peak_upper` there must be above `peak` and at most twice the depth bound). How wide the range \
          is depends on the load (kernel matrix, docs/kernels.md, all four kernels): one fio process (`nvme-fio`) \
          keeps its requests on the queue of the CPU it runs on, and `peak` itself reached 32 at QD32 and 4 at QD4, \
          the phase bounds, on every kernel; but fio moved between the two CPUs within most 0.5 s intervals, so \
          both queues reached their full depth in them and `peak_upper` was up to 64, twice the truth. 32 threads \
          on both CPUs (`nvme-qd32`) split the depth between the queues: `peak` 17–31 and `peak_upper` at most \
          36–44, and the scenario holds the range's top to at least half of 32 (its `peak` to at most 32). So \
          `peak` is what to alert on (a depth the device really had), and `peak_upper` says how much higher it \
          may have been.\n";
    s
}
