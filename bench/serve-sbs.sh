#!/usr/bin/env bash
# Nix 2.8's `nix copy --to ssh://localhost` (Nix runs the remote program
# locally, without ssh, for localhost) of one source store's paths, with
# `nix-store --serve` and with `cairn store serve` as the remote program, each
# into a fresh chroot store; then `nix copy --from` back. Alternating rounds,
# medians in ms.
#
# usage: bench/serve-sbs.sh [ROUNDS] [SMALL] [TREE]
#   SMALL small files added as paths of their own (default 500), TREE a
#   directory added as one path (default the Go source tree)
set -euo pipefail
rounds=${1:-5}; small=${2:-500}; tree=${3:-$(go env GOROOT)/src}
w=$(mktemp -d /var/tmp/serve-sbs.XXXXXX)
trap 'chmod -R u+w "$w" 2>/dev/null; rm -rf "$w"' EXIT
(cd "$(dirname "$0")/.." && go build -o "$w/cairn" ./cmd/cairn)
export NIX_CONF_DIR=/nonexistent NIX_USER_CONF_FILES=/nonexistent
export NIX_CONFIG=$'experimental-features = nix-command\nsubstituters =\nsandbox = false'
mkdir -p "$w/in"
for i in $(seq "$small"); do echo "small file $i" > "$w/in/f$i"; done
src="local?root=$w/src"
paths=$(nix-store --store "$src" --add "$w"/in/* "$tree")
sync; sleep "${SETTLE:-65}"
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
declare -A to from
for r in $(seq "$rounds"); do
	for prog in nix-store "$w/cairn store serve"; do
		d="$w/r$r-$RANDOM"
		url="ssh://localhost?remote-program=$prog&remote-store=local?root=$d"
		s=$(date +%s%N); nix copy --from "$src" --to "$url" $paths; to[$prog]+="$(ms "$s") "
		s=$(date +%s%N); nix copy --no-check-sigs --from "$url" --to "local?root=$d-back" $paths; from[$prog]+="$(ms "$s") "
	done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for prog in nix-store "$w/cairn store serve"; do
	echo "$(basename "${prog%% *}"): copy to median $(echo "${to[$prog]}" | median) ms (${to[$prog]}), copy from median $(echo "${from[$prog]}" | median) ms (${from[$prog]})"
done
