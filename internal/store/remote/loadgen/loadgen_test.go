package loadgen_test

import (
	"context"
	"os"
	"testing"
	"time"

	"cairn/internal/store/remote/loadgen"
	"cairn/internal/store/storetest"
	"cairn/internal/testutil/nixtest"
)

// maxDaemonRSS bounds the resident memory of `cairn daemon` under the short
// mixed load: it must not grow with the number of ops.
const maxDaemonRSS = 128 << 20

// TestLoadCairnDaemon runs the load generator against `cairn daemon` for a
// few seconds (mixed, 32 clients) and requires zero errors and bounded memory.
func TestLoadCairnDaemon(t *testing.T) {
	if _, err := os.Stat("../../../cli/daemon.go"); err != nil {
		t.Skip("cairn daemon not written yet (internal/cli/daemon.go)")
	}
	d := storetest.StartDaemon(t, storetest.BuildCairn(t), "daemon")
	res := run(t, d, 32)
	if res.PeakRSS > maxDaemonRSS {
		t.Errorf("daemon peak RSS %d MB, want at most %d MB", res.PeakRSS>>20, maxDaemonRSS>>20)
	}
}

// TestLoadNixDaemon is the same load on nix-daemon 2.8, to check the load
// generator itself (no RSS bound: nix-daemon forks per client).
func TestLoadNixDaemon(t *testing.T) {
	nixtest.Require(t, "nix-daemon")
	run(t, storetest.StartDaemon(t, "nix-daemon"), 8)
}

func run(t *testing.T, d *storetest.Daemon, clients int) *loadgen.Result {
	dur := 3 * time.Second
	if testing.Short() {
		dur = time.Second
	}
	res, err := loadgen.Run(context.Background(), loadgen.Config{
		Socket: d.Socket, Clients: clients, Duration: dur, Mix: "mixed", Seed: 200, PID: d.Cmd.Process.Pid,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", res)
	if res.Errors != 0 {
		t.Errorf("%d errors: %v", res.Errors, res.FirstError)
	}
	if res.Ops == 0 {
		t.Errorf("no ops")
	}
	return res
}
