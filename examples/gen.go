//go:build ignore

// gen writes hello.json, the example derivation graph, in nix show-derivation
// form: run `go run examples/gen.go` from the repository root after changing it.
//
//	greeting  a file holding "Hello"
//	words     two outputs: out (a file holding "world") and doc (a note that
//	          refers to out)
//	hello     depends on both: $out/bin/hello prints "Hello, world!", and
//	          $out/share/words names words' doc output
//
// Every builder is /bin/sh; `cairn build` gets it from the host through
// sandbox-paths (--option sandbox-paths /bin/sh=/bin/busybox).
package main

import (
	"log"
	"os"
	"strings"

	"cairn/internal/derivation"
	"cairn/internal/storepath"
)

const system = "x86_64-linux"

var dir = storepath.DefaultStoreDir

var drvs = map[storepath.StorePath]*derivation.Derivation{}

// mk makes a derivation the way builtins.derivation does, with /bin/sh -c script.
func mk(name, script string, env map[string]string, inputs map[storepath.StorePath][]string, outputs ...string) *derivation.Derivation {
	if len(outputs) == 0 {
		outputs = []string{"out"}
	}
	d := &derivation.Derivation{
		Name:      name,
		Outputs:   map[string]derivation.Output{},
		InputDrvs: map[storepath.StorePath][]string{},
		Platform:  system,
		Builder:   "/bin/sh",
		Args:      []string{"-c", script},
		Env:       map[string]string{"name": name, "builder": "/bin/sh", "system": system},
	}
	for k, v := range env {
		d.Env[k] = v
	}
	for _, o := range outputs {
		d.Outputs[o] = derivation.DeferredOutput()
	}
	if len(outputs) > 1 {
		d.Env["outputs"] = strings.Join(outputs, " ")
	}
	for p, outs := range inputs {
		d.InputDrvs[p] = outs
	}
	resolve := func(p storepath.StorePath) (*derivation.Derivation, error) { return drvs[p], nil }
	if err := d.FillOutputs(dir, nil, resolve); err != nil {
		log.Fatal(err)
	}
	p, err := d.StorePath(dir)
	if err != nil {
		log.Fatal(err)
	}
	drvs[p] = d
	return d
}

func path(d *derivation.Derivation, out string) string { return d.Outputs[out].Path.String() }

func drvPath(d *derivation.Derivation) storepath.StorePath {
	p, err := d.StorePath(dir)
	if err != nil {
		log.Fatal(err)
	}
	return p
}

func main() {
	greeting := mk("greeting", `echo "building the greeting"; echo Hello > $out`, nil, nil)
	words := mk("words", `echo world > $out; echo "the word is in $out" > $doc`, nil, nil, "out", "doc")
	hello := mk("hello", `
set -e
echo "building hello from $greeting and $words"
read g < $greeting
read w < $words
mkdir -p $out/bin $out/share
printf '#!/bin/sh\necho "%s, %s!"\n' "$g" "$w" > $out/bin/hello
chmod +x $out/bin/hello
echo $wordsDoc > $out/share/words
`, map[string]string{"greeting": path(greeting, "out"), "words": path(words, "out"), "wordsDoc": path(words, "doc")},
		map[storepath.StorePath][]string{drvPath(greeting): {"out"}, drvPath(words): {"doc", "out"}})
	_ = hello
	f, err := os.Create("examples/hello.json")
	if err != nil {
		log.Fatal(err)
	}
	if err := derivation.WriteJSON(f, drvs); err != nil {
		log.Fatal(err)
	}
	if err := f.Close(); err != nil {
		log.Fatal(err)
	}
}
