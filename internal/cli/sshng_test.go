package cli

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestSSHNGStoreAgainstNix: cairn's verbs on an ssh-ng:// store (nix-daemon
// --stdio on localhost, which both run without ssh) as Nix 2.8's clients
// use it: a path added through it, read back as nix path-info reads it, its
// closure, and a derivation built through it.
func TestSSHNGStoreAgainstNix(t *testing.T) {
	dir, bin, file, cmds := againstNix(t, "serve.nix", serveNix, "", "nix", "nix-store", "nix-daemon", "nix-instantiate")
	src := filepath.Join(dir, "hello.txt")
	os.WriteFile(src, []byte("hello over ssh-ng\n"), 0o644)
	must := cmds.must
	url := func(name string) string {
		return "ssh-ng://localhost?remote-store=local?root=" + filepath.Join(dir, name)
	}
	regTime := regexp.MustCompile(`"registrationTime":[0-9]+`)
	ours, theirs := url("ours"), url("theirs")
	p := must(bin, "--store", ours, "store", "add", src)
	if q := must("nix-store", "--store", theirs, "--add", src); q != p {
		t.Fatalf("cairn store add printed %s, nix-store --add %s", p, q)
	}
	a := regTime.ReplaceAllString(must(bin, "--store", ours, "store", "path-info", "--json", p), "")
	b := regTime.ReplaceAllString(must("nix", "path-info", "--store", theirs, "--json", p), "")
	if a != b {
		t.Errorf("path-info --json through ssh-ng:\ncairn: %s\nnix:   %s", a, b)
	}
	// A derivation built through it: the same output, its closure read back.
	drv := must("nix-instantiate", "--store", "local?root="+filepath.Join(dir, "ours"), file, "-A", "top")
	must("nix-instantiate", "--store", "local?root="+filepath.Join(dir, "theirs"), file, "-A", "top")
	out := must(bin, "--store", ours, "build", drv)
	if want := must("nix-store", "--store", theirs, "-r", drv); out != want || !strings.HasSuffix(out, "-serve-top") {
		t.Fatalf("cairn build through ssh-ng printed %q, nix-store -r %q", out, want)
	}
	if a, b := must(bin, "--store", ours, "store", "query", "-R", out), must("nix-store", "--store", theirs, "-q", "-R", out); a != b {
		t.Errorf("closure through ssh-ng:\ncairn: %s\nnix:   %s", a, b)
	}
}
