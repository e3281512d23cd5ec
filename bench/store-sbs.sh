#!/bin/sh
# Side-by-side benchmarks of Cairn's local store against nix-store 2.8 (issue 3).
# Each workload runs both tools alternately on the same input through
# bench/sidebyside.py (A = Nix, B = Cairn; B/A below 1 means Cairn is faster),
# every run on a fresh throwaway chroot store unless the workload only reads.
#
# Usage: bench/store-sbs.sh [ROUNDS]    (needs nix-store, nix, go, python3, /usr/bin/time)
# ONLY=tree,small,... runs only those workloads (tree, autoopt, small, pathinfo,
# closure, export, verify, big; export needs closure's store).
# SETTLE (default 65) is how many seconds the script waits after building Cairn.
# With STORE_TMPFS=1 (as root) the stores live on a tmpfs, which takes the
# file system's cost of creating inodes out of the comparison. Every fresh
# store is preceded by a sync (see FRESH).
#
# With STORE_KEEP=1 the previous round's store is moved aside instead of
# deleted (all are deleted at the end). On ext4 without a journal, every
# inode freed in the last minute slows down each later inode allocation in
# its block group (ext4 steps over recently freed inodes one by one), so
# deleting a 12,800-entry store just before the next round's add makes that
# add pay for the deletion; which tool pays more depends on where each
# allocates (docs/benchmarks.md). STORE_KEEP=1 measures the tools without it.
#
# With STORE_COLD=1 (as root) every run starts with the page, dentry and inode
# caches dropped (after the sync), as when adding files written long ago:
# both tools read their inputs, and the store's metadata, from the disk.
set -eu
ROUNDS=${1:-7}
want() { [ -z "${ONLY:-}" ] || case ",$ONLY," in *",$1,"*) ;; *) return 1 ;; esac; }
HERE=$(cd "$(dirname "$0")" && pwd)
SBS="python3 $HERE/sidebyside.py --rounds $ROUNDS --warmup 1"
W=$(mktemp -d /tmp/cairn-store-sbs.XXXXXX)
if [ "${STORE_TMPFS:-}" = 1 ]; then
  mount -t tmpfs -o size=12g tmpfs "$W"
  trap 'umount "$W"; rmdir "$W"' EXIT
else
  trap 'chmod -R u+w "$W"; rm -rf "$W"' EXIT
fi
CAIRN=$W/cairn
(cd "$HERE/.." && go build -o "$CAIRN" ./cmd/cairn)
# go build just made and deleted thousands of temporary files. On ext4 without
# a journal every inode freed in the last 60 s costs each later allocation in
# its group a look-up (fs/ext4/ialloc.c, recently_deleted): let them age out,
# so that the first workloads measure the tools and not the build.
sync; sleep "${SETTLE:-65}"
export NIX_CONFIG="experimental-features = nix-command
substituters =
sandbox = false"
export NIX_CONF_DIR=/nonexistent
unset NIX_REMOTE NIX_STORE_DIR NIX_STATE_DIR NIX_LOG_DIR || true
S="local?root=$W/s"
# sync after the delete: the previous round's unlinks are flushed before the
# timed command starts, for both tools, so ext4 measures the tool and not the
# journal catching up with the last store's removal.
FRESH="chmod -R u+w $W/s 2>/dev/null; rm -rf $W/s; sync"
if [ "${STORE_KEEP:-}" = 1 ]; then
  mkdir -p "$W/old"
  FRESH="[ -e $W/s ] && mv $W/s $W/old/\$(date +%s%N); sync"
fi
if [ "${STORE_COLD:-}" = 1 ]; then
  FRESH="$FRESH; echo 3 > /proc/sys/vm/drop_caches"
fi

GOSRC=$(go env GOROOT)/src
if want tree; then
echo "== add the Go source tree ($GOSRC)"
$SBS --setup "$FRESH" --name "add GOROOT/src" -- \
  nix-store --store "'$S'" --add "$GOSRC" ::: "$CAIRN" --store "'$S'" store add "$GOSRC"
fi

if want autoopt; then
echo "== add a copy of the Go tree to a store that has it, with auto-optimise-store"
cp -r "$GOSRC" "$W/src2"
sync; sleep "${SETTLE:-65}"
$SBS --setup "$FRESH; nix-store --store '$S' --option auto-optimise-store true --add $GOSRC >/dev/null; sync" --name "add GOROOT/src copy, auto-optimise" -- \
  nix-store --store "'$S'" --option auto-optimise-store true --add "$W/src2" ::: "$CAIRN" --store "'$S'" --option auto-optimise-store true store add "$W/src2"
fi

if want small; then
echo "== add 2000 small files in one call"
mkdir -p "$W/small"
i=0
while [ $i -lt 2000 ]; do echo "small file $i" > "$W/small/f$i"; i=$((i+1)); done
$SBS --setup "$FRESH" --name "add 2000 files" -- \
  nix-store --store "'$S'" --add "$W"/small/'*' ::: "$CAIRN" --store "'$S'" store add "$W"/small/'*'
fi

if want pathinfo; then
echo "== path-info of 4000 paths"
mkdir -p "$W/pi"
i=0
while [ $i -lt 4000 ]; do echo "path info $i" > "$W/pi/f$i"; i=$((i+1)); done
P="local?root=$W/p"
"$CAIRN" --store "$P" store add "$W"/pi/* > "$W/pi.list"
$SBS --name "path-info 4000" -- \
  nix --store "'$P'" path-info '$(cat' "$W/pi.list)" ::: "$CAIRN" --store "'$P'" store path-info '$(cat' "$W/pi.list)"
$SBS --name "path-info --json 4000" -- \
  nix --store "'$P'" path-info --json '$(cat' "$W/pi.list)" ::: "$CAIRN" --store "'$P'" store path-info --json '$(cat' "$W/pi.list)"
fi

if want closure; then
echo "== closure of a path in a 10,000-path store"
python3 - "$W/closure.export" <<'EOF'
# An export stream of 10,000 tiny paths; path i refers to up to 3 earlier ones.
import hashlib, random, struct, sys
A = "0123456789abcdfghijklmnpqrsvwxyz"
def u64(n): return struct.pack("<Q", n)
def s(b):
    if isinstance(b, str): b = b.encode()
    return u64(len(b)) + b + b"\0" * (-len(b) % 8)
random.seed(1)
paths, refs = [], []
out = open(sys.argv[1], "wb")
for i in range(10000):
    h = "".join(A[b % 32] for b in hashlib.sha256(str(i).encode()).digest()[:32])
    p = "/nix/store/%s-p%d" % (h, i)
    r = sorted(set(random.sample(paths, min(3, len(paths))))) if paths else []
    nar = s("nix-archive-1") + s("(") + s("type") + s("regular") + s("contents") + s("path %d" % i) + s(")")
    out.write(u64(1) + nar + u64(0x4558494e) + s(p) + u64(len(r)) + b"".join(s(x) for x in r) + s("") + u64(0))
    paths.append(p)
out.write(u64(0))
EOF
C="local?root=$W/c"
"$CAIRN" --store "$C" store import < "$W/closure.export" | tail -1 > "$W/top"
$SBS --name "closure in 10k store" -- \
  nix-store --store "'$C'" -qR '$(cat' "$W/top)" ::: "$CAIRN" --store "'$C'" store query -R '$(cat' "$W/top)"
echo "   closure size: $("$CAIRN" --store "$C" store query -R "$(cat "$W/top")" | wc -l) paths"
fi

if want export; then
echo "== export / import of the 10,000-path store"
"$CAIRN" --store "$C" store query -R "$(cat "$W/top")" > "$W/all"
$SBS --name "export 10k paths" -- \
  nix-store --store "'$C'" --export '$(cat' "$W/all)" ::: "$CAIRN" --store "'$C'" store export '$(cat' "$W/all)"
$SBS --setup "$FRESH" --name "import 10k paths" -- \
  nix-store --store "'$S'" --import "<" "$W/closure.export" ::: "$CAIRN" --store "'$S'" store import "<" "$W/closure.export"
fi

if want verify; then
echo "== verify --check-contents of the Go tree"
V="local?root=$W/v"
nix-store --store "$V" --add "$GOSRC" > /dev/null
$SBS --name "verify --check-contents" -- \
  nix-store --store "'$V'" --verify --check-contents 2\>/dev/null ::: "$CAIRN" --store "'$V'" store verify --check-contents 2\>/dev/null
fi

if want big; then
echo "== add a 4 GiB file: peak RSS (kB) and time"
truncate -s 4G "$W/big"
# In the order a, b, b, a: on this VM the first 4 GiB written into the page
# cache after a pause can take twice as long or more (the copy into the page
# cache, most of a slow run's samples), so whichever tool ran first would pay
# for it (docs/benchmarks.md, session 11). The stores are deleted, not kept.
for tool in cairn nix nix cairn; do :
  sh -c "chmod -R u+w $W/s 2>/dev/null; rm -rf $W/s; sync"
  if [ $tool = cairn ]; then cmd="$CAIRN --store $S store add $W/big"; else cmd="nix-store --store $S --add $W/big"; fi
  /usr/bin/time -f "$tool: %M kB peak RSS, %e s" $cmd > /dev/null
done
fi
