#!/bin/sh
# Side by side: substituting one closure from one file:// binary cache through
# nix-daemon 2.8 (A) and cairn daemon (B), each on its own chroot store, with
# Nix 2.8's `nix-store -r` as the client. Before every run both daemons delete
# the closure (nix-store --delete), so each run substitutes it all into a store
# that lacks it; the runs alternate (bench/sidebyside.py: medians, B/A below 1
# means Cairn is faster).
#
# Usage: bench/subst-sbs.sh [ROUNDS] [SMALL] [BIG_MIB] [COMPRESSION]
#   defaults: 5 rounds, a closure of 200 small paths + one BIG_MIB=32 MiB file, zstd
# Needs nix-daemon, nix-store, nix (Debian nix-bin), go, python3.
set -eu
ROUNDS=${1:-5}
SMALL=${2:-200}
BIG=${3:-32}
COMP=${4:-zstd}
HERE=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d /tmp/cairn-subst-sbs.XXXXXX)
PIDS=""
cleanup() {
  for p in $PIDS; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  chmod -R u+w "$W" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
(cd "$HERE/.." && go build -o "$W/cairn" ./cmd/cairn)
export NIX_CONF_DIR=/nonexistent
unset NIX_REMOTE NIX_STORE_DIR NIX_STATE_DIR NIX_LOG_DIR || true
export NIX_CONFIG="experimental-features = nix-command
substituters =
sandbox = false"

# The paths: SMALL small files and one big file (random: compresses to its
# size), each nix-store --add'ed, all asked for in one nix-store -r.
SRC="local?root=$W/src"
mkdir -p "$W/files"
i=0
while [ "$i" -lt "$SMALL" ]; do printf 'small file %s\n%0512d\n' "$i" "$i" > "$W/files/s$i"; i=$((i+1)); done
head -c $((BIG * 1048576)) /dev/urandom > "$W/files/big"
PATHS=$(nix-store --store "$SRC" --add "$W"/files/*)
nix-store --generate-binary-cache-key bench-1 "$W/key.sec" "$W/key.pub"
CACHE="file://$W/cache"
# shellcheck disable=SC2086
nix copy --store "$SRC" --to "$CACHE?compression=$COMP&secret-key=$W/key.sec" $PATHS >/dev/null 2>&1
PUB=$(cat "$W/key.pub")
echo "$PATHS" | tr ' ' '\n' > "$W/paths"
echo "closure: $(wc -l < "$W/paths") paths, $(du -sh "$W/cache" | cut -f1) in the cache ($COMP)"

start() { # name argv...
  name=$1; shift
  mkdir -p "$W/$name"
  NIX_DAEMON_SOCKET_PATH="$W/$name/socket" "$@" --store "local?root=$W/$name/root" \
    --option substituters "$CACHE" --option trusted-public-keys "$PUB" \
    --option sandbox false --option build-users-group "" > "$W/$name/log" 2>&1 &
  PIDS="$PIDS $!"
  for _ in $(seq 100); do [ -S "$W/$name/socket" ] && return; sleep 0.1; done
  echo "$name did not start"; cat "$W/$name/log"; exit 1
}
start d-nix nix-daemon
start d-cairn "$W/cairn" daemon
A="unix://$W/d-nix/socket?root=$W/d-nix/root"
B="unix://$W/d-cairn/socket?root=$W/d-cairn/root"
CLIENT="NIX_CONFIG='substituters = $CACHE' nix-store -r"
DEL="for s in '$A' '$B'; do NIX_REMOTE=\$s xargs nix-store --delete < $W/paths >/dev/null 2>&1 || true; done; sync"
python3 "$HERE/sidebyside.py" --rounds "$ROUNDS" --warmup 1 --setup "$DEL" \
  --name "substitute $SMALL small + ${BIG} MiB ($COMP)" -- \
  "NIX_REMOTE='$A' $CLIENT \$(cat $W/paths)" ::: "NIX_REMOTE='$B' $CLIENT \$(cat $W/paths)"
# The cairn daemon's peak resident memory over all the runs.
CPID=$(echo $PIDS | cut -d' ' -f2)
echo "cairn daemon: $(grep VmHWM /proc/"$CPID"/status)"
# Both stores hold the same closure, checked by Nix.
for s in d-nix d-cairn; do
  nix-store --store "local?root=$W/$s/root" --verify --check-contents
done
