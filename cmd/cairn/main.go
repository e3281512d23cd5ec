// Command cairn is a Nix-compatible build daemon and store.
package main

import (
	"os"

	"cairn/internal/cli"
	"cairn/internal/sandbox"
)

func main() {
	if !sandbox.IsInit() {
		// Builds start the small init binary installed next to cairn, if
		// there is one; else cairn itself.
		sandbox.FindInit()
	}
	os.Exit(cli.Main(os.Args[1:]))
}
