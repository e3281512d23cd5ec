#!/bin/bash
# Adds a tree through a daemon right after a garbage collection, side by side
# for nix-daemon (A) and cairn daemon (B). Each round, for each daemon in
# turn, on a fresh chroot store: add one copy of the Go source tree, sync,
# `nix-store --gc` (deletes it), then add a second copy (timed).
#
# Usage: bench/gc-then-add.sh [ROUNDS]   (as root; needs nix-daemon, nix-store, go, unshare)
set -eu
ROUNDS=${1:-3}
HERE=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d /var/tmp/gc-then-add.XXXXXX)
trap 'chmod -R u+w "$W" 2>/dev/null; rm -rf "$W"' EXIT
(cd "$HERE/.." && go build -o "$W/cairn" ./cmd/cairn)
GOSRC=$(go env GOROOT)/src

one() { # one LABEL DAEMON... -> prints the timed add in ms
  local d=$W/run.$1.$RANDOM
  mkdir -p "$d/root/nix/store"
  cp -r "$GOSRC" "$d/t1"; cp -r "$GOSRC" "$d/t2"; echo "$d 1" > "$d/t1/SALT"; echo "$d 2" > "$d/t2/SALT"
  local sock=$d/sock
  shift
  NIX_DAEMON_SOCKET_PATH=$sock setsid "$@" --store "local?root=$d/root" --option substituters '' >"$d/daemon.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
  client() { NIX_REMOTE=unix://$sock NIX_CONFIG=$'substituters =\nwarn-dirty = false' \
    unshare -m --propagation private sh -c 'mkdir -p /nix && mount --bind "$0" /nix && exec "$@"' "$d/root/nix" "$@"; }
  client nix-store --add "$d/t1" >/dev/null
  sync
  client nix-store --gc >/dev/null 2>&1
  local s e
  s=$(date +%s%N); client nix-store --add "$d/t2" >/dev/null; e=$(date +%s%N)
  kill -TERM -- -$pid; wait $pid 2>/dev/null || true
  echo $(( (e - s) / 1000000 ))
}

A=(); B=()
for r in $(seq "$ROUNDS"); do
  A+=("$(one A nix-daemon)"); sleep 35   # let the freed inodes age, as between real collections
  B+=("$(one B "$W/cairn" daemon)"); sleep 35
done
python3 - "${A[*]}" "${B[*]}" <<'PY'
import statistics, sys
a = [int(x) for x in sys.argv[1].split()]; b = [int(x) for x in sys.argv[2].split()]
ma, mb = statistics.median(a), statistics.median(b)
print(f"add tree after gc: A (nix-daemon) {a} ms, B (cairn) {b} ms; medians {ma:.0f} / {mb:.0f} ms, B/A {mb/ma:.2f}")
PY
