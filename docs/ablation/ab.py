#!/usr/bin/env python3
"""Where the agent's kernel time goes: interleaved ablation of the fast path, next to biolatency -D.

Usage (root, with fio, bpftool and /usr/sbin/biolatency installed):

    git apply docs/ablation/ablation.patch && cargo build --release -p blkio-agent
    python3 docs/ablation/ab.py target/release/blkio-agent [--pin] [--phases N]
    git apply -R docs/ablation/ablation.patch

The patch (an experiment build, never shipped) adds a fourth `CONTROL` slot whose bits make the
fast path stop early at chosen points (see VARIANTS). This script starts that agent and
biolatency -D with `kernel.bpf_stats_enabled=1`, runs one fio randrw 4k QD16 job on a tmpfs-backed
loop device, and switches the slot between the variants every second, round-robin, so that every
variant sees the same host (steal, frequency and cache state drift far more between separate
runs than the differences measured). It prints ns per program run for each variant, the agent's
sum, biolatency's sum and their ratio.

--pin puts fio and the loop device's workers on CPU 0 (the workqueue cpumask, restored after), so
issue and completion share a CPU; without it they spread over the machine's CPUs as in
`cargo xtask bench-overhead`.
"""
import argparse
import json
import os
import subprocess
import time

# (slot value, what the fast path still does). Bits 1-512 act on the issue program, 16-8192 on
# the completion program; ablation.patch defines them.
VARIANTS = [
    (0, "everything (the shipped programs)"),
    (8, "issue: stop after the fast-path test (passthrough, queue flags, FAST_SINCE)"),
    (512, "issue: ... + ARMED test + device lookup (device_of)"),
    (6, "issue: ... everything but the outstanding mark and the depth gauge"),
    (2, "issue: ... everything but the outstanding mark"),
    (4, "issue: ... everything but the depth gauge"),
    (16, "completion: stop at once (the floor)"),
    (1024, "completion: ... + op, passthrough, self-test"),
    (2048, "completion: ... + device lookup (device_of)"),
    (8192, "completion: ... + stamps read, partial test"),
    (4096, "completion: ... + bpf_ktime_get_ns()"),
    (256, "completion: ... + outstanding clear and depth gauge (all but the histograms)"),
]
AGENT = ("rq_issue_btf", "rq_complete_btf")
BIO = ("block_rq_issue_btf", "block_rq_complete_btf")


def sh(cmd):
    return subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True).stdout


def snap():
    runs = {}
    for p in json.loads(sh("bpftool prog show -j")):
        if p.get("name") in AGENT + BIO:
            runs[p["name"]] = (p.get("run_cnt", 0), p.get("run_time_ns", 0))
    return runs


def set_variant(v):
    value = " ".join(str(b) for b in v.to_bytes(8, "little"))
    sh(f"bpftool map update name CONTROL key 3 0 0 0 value {value}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("agent", help="blkio-agent built with ablation.patch applied")
    ap.add_argument("--pin", action="store_true", help="fio and the loop workers on CPU 0")
    ap.add_argument("--phases", type=int, default=6, help="rounds over all variants (1 s each)")
    args = ap.parse_args()

    wq = "/sys/devices/virtual/workqueue/cpumask"
    saved_mask = open(wq).read().strip()
    img = "/dev/shm/blkio-ablation.img"
    sh(f"fallocate -l 512M {img}")
    dev = sh(f"losetup -f --show {img}").strip()
    procs = []
    try:
        sh(f"echo none > /sys/block/{os.path.basename(dev)}/queue/scheduler")
        if args.pin:
            sh(f"echo 1 > {wq}")
        sh("sysctl -q kernel.bpf_stats_enabled=1")
        quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out = "/tmp/blkio-ablation-out"
        procs.append(subprocess.Popen([args.agent, "run", "--interval", "1", "--metrics-addr", "off",
                                       "--live", "log", "--output-dir", out], **quiet))
        procs.append(subprocess.Popen(["/usr/sbin/biolatency", "-D"], **quiet))
        time.sleep(6)
        if not all(n in snap() for n in AGENT + BIO):
            raise SystemExit("agent or biolatency programs not loaded: is the agent built with ablation.patch?")
        cpus = "0" if args.pin else f"0-{os.cpu_count() - 1}"
        runtime = int(args.phases * len(VARIANTS) * 1.25) + 5
        fio = subprocess.Popen(
            f"taskset -c {cpus} fio --name=ablation --rw=randrw --bs=4k --direct=1 --ioengine=libaio "
            f"--iodepth=16 --time_based --runtime={runtime} --norandommap --randrepeat=0 "
            f"--filename={dev}", shell=True, **quiet)
        procs.append(fio)
        time.sleep(2)
        acc = {v: {} for v, _ in VARIANTS}
        for _ in range(args.phases):
            for v, _ in VARIANTS:
                set_variant(v)
                time.sleep(0.1)
                s0 = snap()
                time.sleep(1)
                s1 = snap()
                for name, (cnt, ns) in s1.items():
                    o = acc[v].setdefault(name, [0, 0])
                    o[0] += cnt - s0[name][0]
                    o[1] += ns - s0[name][1]
        fio.wait()
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait()
        sh(f"echo {saved_mask} > {wq}")
        sh("sysctl -q kernel.bpf_stats_enabled=0")
        sh(f"losetup -d {dev}; rm -f {img}")

    print(f"host: {cpu_model()}, {'fio and loop workers on CPU 0' if args.pin else 'all CPUs'}, "
          f"{args.phases} s per variant")
    print("| variant | what runs | issue ns | completion ns | agent ns | biolatency ns | ratio |")
    print("|---|---|---|---|---|---|---|")
    for v, what in VARIANTS:
        ns = {n: t / max(c, 1) for n, (c, t) in acc[v].items()}
        agent = ns[AGENT[0]] + ns[AGENT[1]]
        bio = ns[BIO[0]] + ns[BIO[1]]
        print(f"| {v} | {what} | {ns[AGENT[0]]:.0f} | {ns[AGENT[1]]:.0f} | {agent:.0f} | {bio:.0f} | "
              f"{agent / bio:.2f} |")


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    main()
