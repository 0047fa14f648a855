#!/usr/bin/env python3
"""What allocating a journal segment ahead saves per fsync, on this machine's disk.

Appends 120-byte records, each followed by fdatasync (as the journal's writer does with
fsync = "always" and one record per batch), to a file in target/ three ways, in interleaved
rounds: a file that grows with each append (as the journal wrote before session 15), a file
allocated ahead with fallocate (as it writes now), and a file written full of zeros first.
Prints the medians of: fsyncs per second, this process's CPU per fsync, the whole machine's
CPU per fsync (the kernel's journal thread and interrupts included; noisy on a shared VM),
and the disk's write requests per fsync (/sys/block/<disk>/stat).

    python3 benches/fsync_prealloc.py [N=4000] [ROUNDS=5]
"""
import os
import resource
import statistics
import sys
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target")
SIZE = 4 << 20


def disk_of(path):
    """The block device holding `path` (its whole-disk name in /sys/block), or None."""
    dev = os.stat(path).st_dev
    name = f"{os.major(dev)}:{os.minor(dev)}"
    for disk in os.listdir("/sys/block"):
        base = f"/sys/block/{disk}"
        try:
            if open(f"{base}/dev").read().strip() == name:
                return disk
            for part in os.listdir(base):
                if open(f"{base}/{part}/dev").read().strip() == name:
                    return disk
        except OSError:
            continue
    return None


def machine_cpu():
    with open("/proc/stat") as f:
        v = list(map(int, f.readline().split()[1:]))
    return sum(v) - v[3] - v[4]  # ticks not idle and not waiting for I/O


def writes(disk):
    if disk is None:
        return 0
    return int(open(f"/sys/block/{disk}/stat").read().split()[4])


def run(mode, disk):
    path = os.path.join(DIR, f"fsync_prealloc_{mode}")
    if os.path.exists(path):
        os.remove(path)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY)
    if mode == "zeroed":
        os.write(fd, b"\0" * SIZE)
        os.fsync(fd)
    elif mode == "allocated":
        os.posix_fallocate(fd, 0, SIZE)
        os.fsync(fd)
    record = b"x" * 120
    tick = 1e6 / os.sysconf("SC_CLK_TCK")
    c0, w0, r0, i0 = machine_cpu(), time.monotonic(), resource.getrusage(resource.RUSAGE_SELF), writes(disk)
    at = 0
    for _ in range(N):
        os.pwrite(fd, record, at)
        at += len(record)
        os.fdatasync(fd)
    c1, w1, r1, i1 = machine_cpu(), time.monotonic(), resource.getrusage(resource.RUSAGE_SELF), writes(disk)
    os.close(fd)
    os.remove(path)
    own = (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) * 1e6
    return N / (w1 - w0), own / N, (c1 - c0) * tick / N, (i1 - i0) / N


def main():
    os.makedirs(DIR, exist_ok=True)
    disk = disk_of(DIR)
    modes = ["grows", "allocated", "zeroed"]
    results = {m: [] for m in modes}
    for _ in range(ROUNDS):
        for m in modes:
            results[m].append(run(m, disk))
    print(f"{N} fsyncs per cell, {ROUNDS} interleaved rounds, disk {disk}; medians:")
    print(f"{'file':10} {'fsyncs/s':>9} {'own CPU/fsync':>14} {'machine CPU/fsync':>18} {'disk writes/fsync':>18}")
    for m in modes:
        med = [statistics.median(r[i] for r in results[m]) for i in range(4)]
        print(f"{m:10} {med[0]:9.0f} {med[1]:11.1f} µs {med[2]:15.0f} µs {med[3]:18.2f}")


if __name__ == "__main__":
    main()
