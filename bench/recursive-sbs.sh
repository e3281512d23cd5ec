#!/usr/bin/env bash
# Recursive Nix side by side: nix-build (Nix 2.8) and cairn build of one
# recursive-nix derivation whose builder, Nix 2.8's client inside the
# sandbox, adds N small files through the build's own daemon; each run on a
# fresh chroot store, the derivation instantiated before the clock starts.
# Alternating rounds, medians in ms, and the ratio Cairn / Nix.
#
# usage: [BUILD_USERS=nixbld] bench/recursive-sbs.sh [ROUNDS] [N]
# BUILD_USERS sets build-users-group for both (as root): then Cairn hard-links
# the added files into the sandbox, as Nix does; without, it copies them, so
# that a builder running as the daemon's own user cannot change the store's.
set -euo pipefail
rounds=${1:-5}; n=${2:-20}
w=$(mktemp -d /var/tmp/recursive-sbs.XXXXXX)
trap 'chmod -R u+w "$w" 2>/dev/null; rm -rf "$w"' EXIT
(cd "$(dirname "$0")/.." && go build -o "$w/cairn" ./cmd/cairn)
export NIX_CONF_DIR=/nonexistent NIX_USER_CONF_FILES=/nonexistent HOME=$w
export NIX_CONFIG=$'experimental-features = nix-command recursive-nix\nsubstituters =\nsandbox = true
sandbox-paths = /bin/sh=/bin/busybox /usr /lib=/usr/lib /lib64=/usr/lib64\nbuild-users-group = '"${BUILD_USERS:-}"$'
system-features = recursive-nix benchmark big-parallel nixos-test'
cat > "$w/rec.nix" <<NIX
{ salt }: derivation { name = "recursive-bench"; system = builtins.currentSystem; builder = "/bin/sh";
  inherit salt; requiredSystemFeatures = [ "recursive-nix" ]; PATH = "/usr/bin:/bin";
  args = [ "-c" "i=0; while [ \$i -lt $n ]; do echo \$salt \$i > \$TMPDIR/f\$i; i=\$((i+1)); done; nix-store --add \$TMPDIR/f* > \$out" ]; }
NIX
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
declare -A t
for r in $(seq "$rounds"); do
	order="nix cairn"; [ $((r % 2)) = 0 ] && order="cairn nix"
	for tool in $order; do
		s="local?root=$w/$tool-$r"
		drv=$(nix-instantiate --store "$s" "$w/rec.nix" --argstr salt "$r" 2>/dev/null)
		sync
		b=$(date +%s%N)
		if [ $tool = nix ]; then
			nix-store --store "$s" -r "$drv" >/dev/null 2>&1
		else
			"$w/cairn" --store "$s" build "$drv" >/dev/null 2>&1
		fi
		t[$tool]+="$(ms "$b") "
	done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
a=$(echo "${t[nix]}" | median); b=$(echo "${t[cairn]}" | median)
echo "recursive build adding $n paths: nix-store -r median $a ms (${t[nix]}), cairn build median $b ms (${t[cairn]}), cairn/nix $(awk "BEGIN {printf \"%.2f\", $b / $a}")"
