// Command cairn is a Nix-compatible build daemon and store.
package main

import (
	"os"

	"cairn/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:]))
}
