// Command cairn-sandbox-init is the sandbox's init on its own: what `cairn
// sandbox-init` does, in a binary that links little more than package
// sandbox. Every build starts one, and a Go program starts in time that
// grows with what it links (the runtime's set-up, every package's init, the
// page faults of a larger text): a fifth of cairn's size, it starts in about
// half the time. Installed next to cairn (go install ./cmd/...), it is
// found by sandbox.FindInit; without it cairn runs itself as init.
package main

import (
	"fmt"
	"os"

	"cairn/internal/sandbox"
)

func main() {
	if !sandbox.IsInit() {
		fmt.Fprintln(os.Stderr, "cairn-sandbox-init: started by cairn's sandbox only")
		os.Exit(2)
	}
	err := sandbox.Init()
	fmt.Fprintln(os.Stderr, "error:", err)
	os.Exit(1)
}
