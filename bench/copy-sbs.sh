#!/usr/bin/env bash
# nix copy (Nix 2.8) and cairn store copy side by side: SMALL small files
# (paths of their own) and a tree (one path), from one source store into a
# fresh chroot store (--no-check-sigs), into a fresh store behind
# nix-daemon --stdio (ssh-ng://localhost, run without ssh), and into a fresh
# file:// binary cache (xz, the default). Alternating rounds, medians in ms,
# and the ratio Cairn / Nix.
#
# usage: bench/copy-sbs.sh [ROUNDS] [SMALL] [TREE]
set -euo pipefail
rounds=${1:-5}; small=${2:-500}; tree=${3:-$(go env GOROOT)/src}
w=$(mktemp -d /var/tmp/copy-sbs.XXXXXX)
trap 'chmod -R u+w "$w" 2>/dev/null; rm -rf "$w"' EXIT
(cd "$(dirname "$0")/.." && go build -o "$w/cairn" ./cmd/cairn)
export NIX_CONF_DIR=/nonexistent NIX_USER_CONF_FILES=/nonexistent HOME=$w
export NIX_CONFIG=$'experimental-features = nix-command\nsubstituters =\nsandbox = false'
mkdir -p "$w/in"
for i in $(seq "$small"); do echo "small file $i" > "$w/in/f$i"; done
src="local?root=$w/src"
paths=$(nix-store --store "$src" --add "$w"/in/* "$tree")
sync; sleep "${SETTLE:-65}"
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
declare -A t
for r in $(seq "$rounds"); do
	order="nix cairn"; [ $((r % 2)) = 0 ] && order="cairn nix"
	for tool in $order; do
		for kind in local ng cache; do
			d="$w/$tool-$kind-$r"
			to="local?root=$d"
			[ $kind = ng ] && to="ssh-ng://localhost?remote-store=local?root=$d"
			[ $kind = cache ] && to="file://$d"
			sync
			s=$(date +%s%N)
			if [ $tool = nix ]; then
				nix copy --no-check-sigs --from "$src" --to "$to" $paths 2>/dev/null
			else
				"$w/cairn" --store "$src" store copy --no-check-sigs --to "$to" $paths 2>/dev/null
			fi
			t[$tool-$kind]+="$(ms "$s") "
		done
	done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for kind in local ng cache; do
	a=$(echo "${t[nix-$kind]}" | median); b=$(echo "${t[cairn-$kind]}" | median)
	echo "copy $small files + a tree to $kind: nix copy median $a ms (${t[nix-$kind]}), cairn store copy median $b ms (${t[cairn-$kind]}), cairn/nix $(awk "BEGIN {printf \"%.2f\", $b / $a}")"
done
