#!/usr/bin/env python3
"""query-4000 of sbs.py against several daemons on copies of one store, with the
clients' and daemons' CPU (issue 4).

  query-floor.py [--rounds 7] [--paths 2000] -d 'nix=nix-daemon' -d 'cairn=/tmp/cairn daemon' \
      -d 'floor=/tmp/queryfloor -store {store} -socket {socket}'

A store of PATHS small files is made once with `nix-store --store local?root=DIR --add` and copied for each
daemon. Each round runs, for every daemon in turn (the order rotates each round), what sbs.py's query-4000
times: `nix-store -q --hash P...` then `nix-store -q --references P...`, each in a private mount namespace with
the daemon's store bind-mounted at /nix (the same `unshare … sh -c mount … exec` wrapper as sbs.py). A command
without `{socket}` gets sbs.py's daemon flags and its socket through NIX_DAEMON_SOCKET_PATH.

Printed per daemon: median wall seconds of the pair, median client CPU (user+sys of the wrapper and both
nix-store processes, from getrusage of children), median daemon CPU (utime+stime of the daemon and its reaped
children, from /proc/PID/stat), and the wall ratio against the first daemon. `--empty` adds a row for the
wrapper running `nix-store --version` twice: the clients' start-up alone, no connection. `--invalidate` has
another process commit to each store before each timed pair (`nix-store --store local?root=… --add` of a new
file), as sbs.py's add-2000-small does before query-4000, so a daemon's cache starts empty.
"""
import argparse, os, resource, shutil, signal, statistics, subprocess, sys, tempfile, time

TICK = os.sysconf("SC_CLK_TCK")


def daemon_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3): utime is field 14, stime 15, cutime 16, cstime 17
    return sum(int(x) for x in fields[11:15]) / TICK


class Daemon:
    def __init__(self, label, cmd, base, seed):
        self.label, self.dir = label, os.path.join(base, label)
        self.root = os.path.join(self.dir, "root")
        shutil.copytree(seed, self.root, symlinks=True)
        self.sock = os.path.join(self.dir, "sock")
        env = dict(os.environ)
        store = f"local?root={self.root}"
        if "{socket}" in cmd:
            args = cmd.replace("{store}", store).replace("{socket}", self.sock).split()
        else:
            env["NIX_DAEMON_SOCKET_PATH"] = self.sock
            args = cmd.split() + ["--store", store, "--option", "sandbox", "true", "--option", "substituters", "",
                                  "--option", "sandbox-paths", "/bin/sh=/bin/busybox", "--option", "max-jobs", "2"]
        self.log = open(os.path.join(self.dir, "daemon.log"), "w")
        self.proc = subprocess.Popen(args, env=env, stdout=self.log, stderr=self.log, start_new_session=True)
        for _ in range(200):
            if os.path.exists(self.sock):
                break
            time.sleep(0.05)
        else:
            raise SystemExit(f"{label}: no socket; see {self.dir}/daemon.log")

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)


def client(root, sock, argv):
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c",
            'mkdir -p /nix && mount --bind "$0" /nix && exec "$@"', os.path.join(root, "nix")] + argv
    env = dict(os.environ, NIX_CONFIG="substituters =\nwarn-dirty = false")
    if sock:
        env["NIX_REMOTE"] = f"unix://{sock}"
    r = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:12])}… failed: {r.stderr[-2000:]}")
    return r.stdout


def timed(f):
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    f()
    dt = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return dt, (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-d", action="append", required=True, help="LABEL=COMMAND")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--paths", type=int, default=2000)
    ap.add_argument("--empty", action="store_true")
    ap.add_argument("--invalidate", action="store_true")
    a = ap.parse_args()
    base = tempfile.mkdtemp(prefix="qfloor-")
    seed = os.path.join(base, "seed")
    small = os.path.join(base, "small")
    os.makedirs(small)
    files = []
    for i in range(a.paths):
        files.append(os.path.join(small, f"f{i}"))
        with open(files[-1], "w") as f:
            f.write(f"{os.getpid()} {i}\n")
    paths = subprocess.run(["nix-store", "--store", f"local?root={seed}", "--add"] + files,
                           check=True, stdout=subprocess.PIPE, text=True).stdout.split()
    ds = []
    try:
        for spec in a.d:
            label, cmd = spec.split("=", 1)
            ds.append(Daemon(label, cmd, base, seed))
        res = {d.label: [] for d in ds}
        if a.empty:
            res["startup"] = []
        for r in range(a.rounds):
            order = ds[r % len(ds):] + ds[:r % len(ds)]
            for d in order:
                if a.invalidate:
                    fresh = os.path.join(base, f"fresh-{r}")
                    with open(fresh, "w") as f:
                        f.write(f"{os.getpid()} {r} fresh\n")
                    subprocess.run(["nix-store", "--store", f"local?root={d.root}", "--add", fresh],
                                   check=True, stdout=subprocess.DEVNULL)
                cpu0 = daemon_cpu(d.proc.pid)
                dt, ccpu = timed(lambda: (client(d.root, d.sock, ["nix-store", "-q", "--hash"] + paths),
                                          client(d.root, d.sock, ["nix-store", "-q", "--references"] + paths)))
                res[d.label].append((dt, ccpu, daemon_cpu(d.proc.pid) - cpu0))
            if a.empty:
                dt, ccpu = timed(lambda: (client(ds[0].root, None, ["nix-store", "--version"]),
                                          client(ds[0].root, None, ["nix-store", "--version"])))
                res["startup"].append((dt, ccpu, 0.0))
    finally:
        for d in ds:
            d.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(f"query-4000 on {a.paths} paths, {a.rounds} rounds, medians; load average at the end: "
          + open("/proc/loadavg").read().split(" ", 1)[0])
    print(f"{'daemon':10} {'wall s':>8} {'client CPU s':>13} {'daemon CPU s':>13} {'ratio':>6}   walls")
    first = statistics.median(x[0] for x in res[ds[0].label])
    for label, xs in res.items():
        w = statistics.median(x[0] for x in xs)
        print(f"{label:10} {w:8.3f} {statistics.median(x[1] for x in xs):13.3f} "
              f"{statistics.median(x[2] for x in xs):13.3f} {w / first:6.2f}   "
              + " ".join(f"{x[0]:.3f}" for x in xs))


if __name__ == "__main__":
    main()
