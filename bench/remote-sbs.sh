#!/usr/bin/env bash
# Remote builds side by side: Nix 2.8's build hook (nix-store -r with
# builders, max-jobs 0) and cairn build with the same builders, each on a
# fresh chroot store, the machine being Nix's own nix-store --serve on
# localhost (run without ssh) with a fresh chroot store too. The workload is
# N trivial derivations that a top one depends on, on a machine with 2 slots;
# the derivations are instantiated before the clock starts. Alternating
# rounds, medians in ms, and the ratio Cairn / Nix.
#
# usage: bench/remote-sbs.sh [ROUNDS] [N]
set -euo pipefail
rounds=${1:-5}; n=${2:-20}
w=$(mktemp -d /var/tmp/remote-sbs.XXXXXX)
trap 'chmod -R u+w "$w" 2>/dev/null; rm -rf "$w"' EXIT
(cd "$(dirname "$0")/.." && go build -o "$w/cairn" ./cmd/cairn)
export NIX_CONF_DIR=/nonexistent NIX_USER_CONF_FILES=/nonexistent HOME=$w
export NIX_CONFIG=$'experimental-features = nix-command\nsubstituters =\nsandbox = true\nsandbox-paths = /bin/sh=/bin/busybox\nbuild-users-group ='
cat > "$w/graph.nix" <<NIX
{ salt }: let mk = name: deps: derivation { inherit name deps salt; system = builtins.currentSystem;
  builder = "/bin/sh"; args = [ "-c" "echo \$name \$deps > \$out" ]; };
in mk "top" (builtins.genList (i: mk "leaf-\${toString i}" []) $n)
NIX
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
declare -A t
for r in $(seq "$rounds"); do
	order="nix cairn"; [ $((r % 2)) = 0 ] && order="cairn nix"
	for tool in $order; do
		d="$w/$tool-$r"
		drv=$(nix-instantiate --store "local?root=$d/local" "$w/graph.nix" --argstr salt "$r" 2>/dev/null)
		builders="ssh://localhost?remote-store=local?root=$d/machine x86_64-linux - 2"
		# Made before the clock starts: two nix-store processes making a
		# fresh chroot store at once can fail (a symlink race in Nix 2.8).
		nix-store --store "local?root=$d/machine" --verify >/dev/null 2>&1
		sync
		s=$(date +%s%N)
		if [ $tool = nix ]; then
			nix-store --store "local?root=$d/local" --option max-jobs 0 --option builders "$builders" -r "$drv" >/dev/null 2>&1
		else
			"$w/cairn" --store "local?root=$d/local" build --option max-jobs 0 --option builders "$builders" "$drv" >/dev/null 2>&1
		fi
		t[$tool]+="$(ms "$s") "
	done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
a=$(echo "${t[nix]}" | median); b=$(echo "${t[cairn]}" | median)
echo "remote build of $((n + 1)) derivations: nix-store -r median $a ms (${t[nix]}), cairn build median $b ms (${t[cairn]}), cairn/nix $(awk "BEGIN {printf \"%.2f\", $b / $a}")"
