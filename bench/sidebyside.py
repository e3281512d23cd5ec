#!/usr/bin/env python3
"""Run two commands alternately on the same input and report medians and the B/A ratio.

Usage: sidebyside.py [--rounds N] [--warmup N] [--setup CMD] [--order abba|ab] --name NAME -- A_CMD ::: B_CMD

A and B are shell commands; --setup runs before every run of either (e.g. to make a fresh store).
The output is one line per command and the ratio of medians (below 1 means B is faster), and
the medians of the CPU time (user and system) each command's processes took.

Rounds run A,B then B,A, alternately (as ../shared/bench/sbs.py does), so each command
follows itself as often as it follows the other: on a file system where one run's
leftovers (freed inodes, dirty pages) slow down the next, neither command always pays
for the other's. --order ab keeps the old fixed A,B order.
"""
import argparse
import resource
import statistics
import subprocess
import sys
import time


def run(cmd, setup, cpu=None):
    if setup:
        subprocess.run(setup, shell=True, check=True, stdout=subprocess.DEVNULL)
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL)
    t = time.perf_counter() - t0
    if cpu is not None:
        # The command's processes that were waited for (a process it left
        # running in the background is not counted).
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime))
    return t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--setup", default="")
    ap.add_argument("--name", default="workload")
    ap.add_argument("--order", choices=["abba", "ab"], default="abba")
    ap.add_argument("cmds", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    words = args.cmds[1:] if args.cmds and args.cmds[0] == "--" else args.cmds
    try:
        i = words.index(":::")
    except ValueError:
        sys.exit("need A_CMD ::: B_CMD")
    a, b = " ".join(words[:i]), " ".join(words[i + 1:])
    for _ in range(args.warmup):
        run(a, args.setup)
        run(b, args.setup)
    ta, tb, ca, cb = [], [], [], []
    for r in range(args.rounds):
        if args.order == "abba" and r % 2 == 1:
            tb.append(run(b, args.setup, cb))
            ta.append(run(a, args.setup, ca))
        else:
            ta.append(run(a, args.setup, ca))
            tb.append(run(b, args.setup, cb))
    ma, mb = statistics.median(ta), statistics.median(tb)
    print(f"{args.name}: A median {ma*1000:.1f} ms, B median {mb*1000:.1f} ms, "
          f"B/A {mb/ma:.2f} ({args.rounds} rounds, order {args.order})")
    print(f"  A: {a}\n  B: {b}")
    print("  runs (ms, in order): A " + " ".join(f"{t*1000:.0f}" for t in ta) +
          " | B " + " ".join(f"{t*1000:.0f}" for t in tb))
    pa, pb = statistics.median(ca), statistics.median(cb)
    if pa > 0:
        print(f"  CPU (user+sys, median): A {pa*1000:.0f} ms, B {pb*1000:.0f} ms, B/A {pb/pa:.2f}")


if __name__ == "__main__":
    main()
