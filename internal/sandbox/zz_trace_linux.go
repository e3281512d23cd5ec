package sandbox

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

func mono() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Sec*1e6 + ts.Nsec/1e3
}

var trBuf []byte
var trF *os.File

func trOpen() {
	trF, _ = os.OpenFile(fmt.Sprintf("/tmp/inittrace/%d", time.Now().UnixNano()), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o666)
}

func trMark(s string) { trBuf = fmt.Appendf(trBuf, "%s@%d ", s, mono()) }
func trFlush() {
	f := trF
	if f != nil {
		f.Write(append(trBuf, '\n'))
		f.Close()
	}
}
