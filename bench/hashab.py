#!/usr/bin/env python3
"""Run several commands alternately on one tree and compare them with the first.

Usage: hashab.py ROUNDS TREE CMD...   (each CMD is split on spaces, its first word an absolute path;
the tree is appended to every CMD). Example:
  hashab.py 31 $(go env GOROOT)/src '/usr/bin/nix-hash --type sha256' '/tmp/cairn hash path'

The order of the commands is reversed every other round. Per command it prints the median wall time,
the median over rounds of the ratio to the first command's run in the same round (adjacent runs see
the same load, so this is steadier than a ratio of medians on a busy machine), the median CPU time
(user + system) and the fastest run.
"""
import os
import statistics
import sys
import time


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    rounds, tree, cmds = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    wall = {c: [] for c in cmds}
    cpu = {c: [] for c in cmds}
    devnull = os.open(os.devnull, os.O_WRONLY)
    for r in range(rounds):
        for c in (cmds if r % 2 == 0 else cmds[::-1]):
            argv = c.split() + [tree]
            t0 = time.perf_counter()
            pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 1)])
            _, status, usage = os.wait4(pid, 0)
            elapsed = time.perf_counter() - t0
            if status != 0:
                sys.exit("failed: " + c)
            wall[c].append(elapsed * 1000)
            cpu[c].append((usage.ru_utime + usage.ru_stime) * 1000)
    first = wall[cmds[0]]
    for c in cmds:
        paired = statistics.median(x / y for x, y in zip(wall[c], first))
        print(f"{c:50s} wall {statistics.median(wall[c]):6.1f} ms  paired {paired:.3f}  "
              f"cpu {statistics.median(cpu[c]):6.1f} ms  min {min(wall[c]):.1f} ms")


if __name__ == "__main__":
    main()
