#!/usr/bin/env bash
# Builds ../shared/bench/dag.nix (201 trivial sandboxed derivations) through each
# daemon command given, alternating them, with the same Nix 2.8 client and a fresh
# chroot store per run; prints each command's median build time.
#
# usage: [DAG=path/to/dag.nix] bench/build-dag.sh ROUNDS 'nix-daemon' '/tmp/cairn daemon' ...
# Needs root (the client sees each store at /nix through a private mount).
set -euo pipefail
rounds=$1; shift
dag=$(realpath -m "${DAG:-$(dirname "$0")/../../shared/bench/dag.nix}")
[ -f "$dag" ] || { echo "no $dag: set DAG to ../shared/bench/dag.nix" >&2; exit 2; }
work=$(mktemp -d /var/tmp/build-dag.XXXXXX)
trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT

run_one() { # cmd salt -> ms
	local cmd=$1 salt=$2 d=$work/run sock pid s e
	# The last run's store is moved aside, not deleted: on ext4 without a
	# journal, inodes freed just before slow down the next run's creates
	# (nix-daemon's chroot dirs far more than Cairn's reused ones).
	[ -e "$d" ] && mv "$d" "$work/old.$RANDOM$RANDOM"
	mkdir -p "$d/root/nix/store"
	sock=$d/sock
	NIX_DAEMON_SOCKET_PATH=$sock setsid $cmd --store "local?root=$d/root" --option sandbox true \
		--option substituters '' --option sandbox-paths /bin/sh=/bin/busybox >"$d/daemon.log" 2>&1 &
	pid=$!
	# setsid gave the daemon an autogroup of its own: give it the priority of
	# the caller's (under /tmp/prio-style wrappers, -20), whatever it is.
	cat /proc/self/autogroup 2>/dev/null | sed -n 's/.*nice \(-\?[0-9]*\).*/\1/p' >"$d/nice" || true
	[ -s "$d/nice" ] && echo "$(cat "$d/nice")" >/proc/$pid/autogroup 2>/dev/null || true
	for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
	client() { NIX_REMOTE=unix://$sock NIX_CONFIG=$'substituters =\nwarn-dirty = false' \
		unshare -m --propagation private sh -c 'mkdir -p /nix && mount --bind "$0" /nix && exec "$@"' "$d/root/nix" "$@"; }
	drv=$(client nix-instantiate "$dag" --argstr salt "$salt" 2>/dev/null)
	s=$(date +%s%N)
	client nix-store -r "$drv" >/dev/null 2>"$d/client.log" || { echo "build failed: $cmd" >&2; tail "$d/client.log" >&2; }
	e=$(date +%s%N)
	kill -TERM -- -"$pid" 2>/dev/null || kill "$pid"; wait "$pid" 2>/dev/null || true
	echo $(( (e - s) / 1000000 ))
}

declare -A times
for r in $(seq "$rounds"); do
	for cmd in "$@"; do
		times[$cmd]+="$(run_one "$cmd" "r$r-$RANDOM") "
	done
done
for cmd in "$@"; do
	echo "${times[$cmd]}" | tr ' ' '\n' | grep . | sort -n | awk -v c="$cmd" '{a[NR]=$1} END {printf "%-40s median %d ms over %d runs\n", c, a[int((NR+1)/2)], NR}'
done
