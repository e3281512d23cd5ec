#!/usr/bin/env python3
"""Run two commands alternately on the same input and report medians and the B/A ratio.

Usage: sidebyside.py [--rounds N] [--warmup N] [--setup CMD] [--order abba|ab] --name NAME -- A_CMD ::: B_CMD

A and B are shell commands; --setup runs before every run of either (e.g. to make a fresh store).
The output is one line per command and the ratio of medians (below 1 means B is faster).

Rounds run A,B then B,A, alternately (as ../shared/bench/sbs.py does), so each command
follows itself as often as it follows the other: on a file system where one run's
leftovers (freed inodes, dirty pages) slow down the next, neither command always pays
for the other's. --order ab keeps the old fixed A,B order.
"""
import argparse
import statistics
import subprocess
import sys
import time


def run(cmd, setup):
    if setup:
        subprocess.run(setup, shell=True, check=True, stdout=subprocess.DEVNULL)
    t0 = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


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
    ta, tb = [], []
    for r in range(args.rounds):
        if args.order == "abba" and r % 2 == 1:
            tb.append(run(b, args.setup))
            ta.append(run(a, args.setup))
        else:
            ta.append(run(a, args.setup))
            tb.append(run(b, args.setup))
    ma, mb = statistics.median(ta), statistics.median(tb)
    print(f"{args.name}: A median {ma*1000:.1f} ms, B median {mb*1000:.1f} ms, "
          f"B/A {mb/ma:.2f} ({args.rounds} rounds, order {args.order})")
    print(f"  A: {a}\n  B: {b}")
    print("  runs (ms, in order): A " + " ".join(f"{t*1000:.0f}" for t in ta) +
          " | B " + " ".join(f"{t*1000:.0f}" for t in tb))


if __name__ == "__main__":
    main()
