// Command goexec executes its arguments, and does nothing else: a Go
// program's start and exec, the least a re-executed Go sandbox init costs
// (bench/ns-floor.sh's GOEXEC).
package main

import (
	"fmt"
	"os"
	"syscall"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: goexec PROGRAM [ARG...]")
		os.Exit(2)
	}
	err := syscall.Exec(os.Args[1], os.Args[1:], os.Environ())
	fmt.Fprintln(os.Stderr, "goexec:", err)
	os.Exit(127)
}
