#!/usr/bin/env bash
# The floor under build-201-dag: 201 "builds" that only create the namespaces
# a sandboxed build gets (user, mount, PID, network, IPC, UTS, cgroup) with
# util-linux's unshare and run busybox sh in them. No mounts, no store, no
# daemon, no log: whatever a real sandboxed build does costs more than this.
# Prints the time for the 201, two at a time (as with max-jobs 2) and one at
# a time, median over ROUNDS.
#
# With GOEXEC=1 each build also starts a Go program that only executes sh
# (bench/goexec, GOGC=off GOMAXPROCS=1 as Cairn's init runs): the floor of a
# sandbox entered by re-executing a Go init.
#
# usage: [GOEXEC=1] bench/ns-floor.sh [ROUNDS]    (needs unshare and /bin/busybox)
set -euo pipefail
rounds=${1:-5}
pre=()
if [ -n "${GOEXEC:-}" ]; then
	bin=$(mktemp -d)/goexec
	(cd "$(dirname "$0")/.." && go build -o "$bin" ./bench/goexec)
	pre=("$bin")
	export GOGC=off GOMAXPROCS=1
fi
one() {
	local i
	for ((i = 0; i < $1; i++)); do
		unshare --user --map-root-user --mount --pid --net --ipc --uts --cgroup --fork \
			"${pre[@]}" /bin/busybox sh -c 'echo x > /dev/null'
	done
}
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
two= seq=
for ((r = 0; r < rounds; r++)); do
	s=$(date +%s%N); one 101 & one 100; wait; two+="$(ms "$s") "
	s=$(date +%s%N); one 201; seq+="$(ms "$s") "
done
echo "201 namespace sets + sh, 2 at a time: median $(echo "$two" | median) ms ($two)"
echo "201 namespace sets + sh, 1 at a time: median $(echo "$seq" | median) ms ($seq)"
