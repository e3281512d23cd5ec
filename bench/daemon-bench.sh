#!/bin/sh
# Daemon benchmarks for issue 4: cairn daemon against nix-daemon 2.8.
#
#   1. loadgen, QueryPathInfo only, 16 clients, 20 s   (target: cairn ≥ 50,000 ops/s)
#   2. loadgen, mixed, 64 clients, 60 s                 (target: zero errors, bounded RSS)
#   4. metrics: loadgen as in 1 (8 s), cairn daemon without and with --metrics-listen,
#      alternating ROUNDS times: what counting every operation costs (not in the default STEPS)
#   3. sbs.py --only add-tree,add-2000-small,query-4000,add-1GiB-file
#      (targets: add-2000-small and query-4000 ≤ 0.5 × nix-daemon; add-tree and
#      add-1GiB-file ≤ 1 ×; cairn daemon peak RSS while adding 1 GiB ≤ 64 MB)
#
# Usage: bench/daemon-bench.sh [ROUNDS] [STEPS]   STEPS is any of "query mixed sbs" (default all)
# Needs nix-daemon, nix-store (Debian nix-bin), go, python3, unshare. Run as root (sbs.py's
# clients bind-mount the daemon's store at /nix in a private mount namespace).
set -eu
ROUNDS=${1:-3}
STEPS=${2:-"query mixed sbs"}
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=$(mktemp -d /tmp/cairn-daemon-bench.XXXXXX)
trap 'rm -rf "$BIN"' EXIT
(cd "$HERE/.." && go build -o "$BIN/cairn" ./cmd/cairn && go build -o "$BIN/loadgen" ./bench/loadgen)
SBS=${SBS:-$HERE/../../shared/bench/sbs.py}
for step in $STEPS; do
  case $step in
  query)
    for d in nix-daemon "$BIN/cairn daemon"; do
      "$BIN/loadgen" -daemon "$d" -mix query -clients 16 -duration 20s
    done ;;
  mixed)
    for d in nix-daemon "$BIN/cairn daemon"; do
      "$BIN/loadgen" -daemon "$d" -mix mixed -clients 64 -duration 60s || true
    done ;;
  metrics)
    i=0
    while [ $i -lt "$ROUNDS" ]; do
      for d in "$BIN/cairn daemon" "$BIN/cairn daemon --metrics-listen 127.0.0.1:0"; do
        echo "== $d"
        "$BIN/loadgen" -daemon "$d" -mix query -clients 16 -duration 8s
      done
      i=$((i+1))
    done ;;
  sbs)
    python3 "$SBS" --a nix-daemon --b "$BIN/cairn daemon" --rounds "$ROUNDS" \
      --only add-tree,add-2000-small,query-4000,add-1GiB-file ;;
  esac
done
