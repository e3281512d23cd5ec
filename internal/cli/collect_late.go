package cli

import "runtime/debug"

// lateGCLimit is the heap a short-lived verb grows to before the garbage
// collector runs: a query of thousands of paths or a tree's hash leaves
// garbage that the process's exit frees anyway, and collecting it costs a
// fifth of such a verb's CPU.
const lateGCLimit = 256 << 20

// collectLate turns the collector off until the heap reaches lateGCLimit and
// returns what puts it back. Only for verbs whose memory does not grow with
// the size of a path (adds stream and keep their 64 MB bound).
func collectLate() (restore func()) {
	gc := debug.SetGCPercent(-1)
	limit := debug.SetMemoryLimit(lateGCLimit)
	return func() {
		debug.SetGCPercent(gc)
		debug.SetMemoryLimit(limit)
	}
}
