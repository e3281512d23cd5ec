package cli

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestStoreCopyAgainstNix: cairn store copy against nix copy, each from the
// same source store into stores of its own: an unsigned input-addressed
// closure refused by a local store, then copied with --no-check-sigs, then
// nothing left to copy; the same closure to an ssh-ng:// store (refused by
// the daemon there, then copied without the check) and back, and to and
// from an ssh:// store.
// The same stderr and exit, the same nix path-info --json.
func TestStoreCopyAgainstNix(t *testing.T) {
	dir, bin, file, cmds := againstNix(t, "serve.nix", serveNix, "", "nix", "nix-store", "nix-build", "nix-daemon")
	src := "local?root=" + filepath.Join(dir, "src")
	top := cmds.must("nix-build", "--store", src, "--no-out-link", file, "-A", "top")
	regTime := regexp.MustCompile(`"registrationTime":[0-9]+`)
	copyWith := func(tool, store string, args ...string) string {
		var out, errOut string
		var code int
		if tool == "nix" {
			out, errOut, code = cmds.run(append([]string{"nix", "copy", "--store", store}, args...)...)
		} else {
			out, errOut, code = cmds.run(append([]string{bin, "--store", store, "store", "copy"}, args...)...)
		}
		return out + errOut + "exit " + string(rune('0'+code))
	}
	both := func(what string, run func(tool string) string) {
		t.Helper()
		a, b := run("cairn"), run("nix")
		if a = regTime.ReplaceAllString(strings.ReplaceAll(a, "cairn-", "TOOL-"), ""); a != regTime.ReplaceAllString(strings.ReplaceAll(b, "nix-", "TOOL-"), "") {
			t.Errorf("%s:\ncairn store copy:\n%s\nnix copy:\n%s", what, a, b)
		}
	}
	local := func(tool string) string { return "local?root=" + filepath.Join(dir, tool+"-local") }
	both("unsigned, to a local store", func(tool string) string { return copyWith(tool, local(tool), "--from", src, top) })
	both("--no-check-sigs", func(tool string) string {
		return copyWith(tool, local(tool), "--no-check-sigs", "--from", src, top) + "\n" +
			cmds.must("nix", "path-info", "--store", local(tool), "--json", "-r", top)
	})
	both("nothing left", func(tool string) string { return copyWith(tool, local(tool), "--no-check-sigs", "--from", src, top) })
	ng := func(tool string) string {
		return "ssh-ng://localhost?remote-store=local?root=" + filepath.Join(dir, tool+"-ng")
	}
	// The daemon at the far end checks the signatures itself.
	both("unsigned, to ssh-ng://", func(tool string) string { return copyWith(tool, src, "--to", ng(tool), top) })
	both("to ssh-ng://", func(tool string) string {
		return copyWith(tool, src, "--no-check-sigs", "--to", ng(tool), top) + "\n" +
			cmds.must("nix", "path-info", "--store", strings.TrimPrefix(ng(tool), "ssh-ng://localhost?remote-store="), "--json", "-r", top)
	})
	both("from ssh-ng://", func(tool string) string {
		back := "local?root=" + filepath.Join(dir, tool+"-back")
		return copyWith(tool, back, "--no-check-sigs", "--from", ng(tool), top) + "\n" +
			cmds.must("nix", "path-info", "--store", back, "--json", "-r", top)
	})
	// ssh:// (nix-store --serve --write): no signatures asked there.
	legacy := func(tool string) string {
		return "ssh://localhost?remote-store=local?root=" + filepath.Join(dir, tool+"-ssh")
	}
	both("to ssh://", func(tool string) string {
		return copyWith(tool, src, "--to", legacy(tool), top) + "\n" +
			cmds.must("nix", "path-info", "--store", strings.TrimPrefix(legacy(tool), "ssh://localhost?remote-store="), "--json", "-r", top)
	})
	both("from ssh://", func(tool string) string {
		back := "local?root=" + filepath.Join(dir, tool+"-ssh-back")
		return copyWith(tool, back, "--no-check-sigs", "--from", legacy(tool), top) + "\n" +
			cmds.must("nix", "path-info", "--store", back, "--json", "-r", top)
	})
}

// TestStoreCopyToCacheAgainstNix: cairn store copy --to file:// writes the
// binary cache nix copy writes: byte for byte without compression; with xz
// and a signing key, one Nix 2.8 substitutes from and finds signed alike;
// and --from file:// copies it back as nix copy does.
func TestStoreCopyToCacheAgainstNix(t *testing.T) {
	dir, bin, file, cmds := againstNix(t, "serve.nix", serveNix, "", "nix", "nix-store", "nix-build")
	src := "local?root=" + filepath.Join(dir, "src")
	top := cmds.must("nix-build", "--store", src, "--no-out-link", file, "-A", "top")
	sec, pub := filepath.Join(dir, "key.sec"), filepath.Join(dir, "key.pub")
	cmds.must("nix-store", "--generate-binary-cache-key", "cairn-copy-test-1", sec, pub)
	pubKey, _ := os.ReadFile(pub)
	copyTo := func(tool, url string) string {
		var errOut string
		var code int
		if tool == "nix" {
			_, errOut, code = cmds.run("nix", "copy", "--store", src, "--to", url, top)
		} else {
			_, errOut, code = cmds.run(bin, "--store", src, "store", "copy", "--to", url, top)
		}
		return strings.ReplaceAll(errOut, tool+"-cache", "CACHE") + "exit " + string(rune('0'+code))
	}
	files := func(root string) map[string]string {
		out := map[string]string{}
		filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() {
				b, _ := os.ReadFile(p)
				out[strings.TrimPrefix(p, root)] = string(b)
			}
			return nil
		})
		return out
	}
	none := func(tool string) string {
		return "file://" + filepath.Join(dir, tool+"-cache-none") + "?compression=none"
	}
	if a, b := copyTo("cairn", none("cairn")), copyTo("nix", none("nix")); a != b {
		t.Errorf("cairn store copy --to file://:\n%s\nnix copy:\n%s", a, b)
	}
	got, want := files(filepath.Join(dir, "cairn-cache-none")), files(filepath.Join(dir, "nix-cache-none"))
	if len(got) != 5 || len(got) != len(want) {
		t.Errorf("cache files: cairn %d, nix %d", len(got), len(want))
	}
	for name, data := range want {
		if got[name] != data {
			t.Errorf("%s differs:\ncairn: %q\nnix:   %q", name, got[name], data)
		}
	}
	// xz and signed: Nix substitutes from both and finds the same signatures.
	var infos [2]string
	for i, tool := range []string{"cairn", "nix"} {
		cache := "file://" + filepath.Join(dir, tool+"-cache-xz")
		if r := copyTo(tool, cache+"?secret-key="+sec); !strings.HasSuffix(r, "exit 0") {
			t.Fatalf("%s copy to %s: %s", tool, cache, r)
		}
		if r := copyTo(tool, cache+"?secret-key="+sec); !strings.HasPrefix(r, "copying 0 paths...\n") {
			t.Errorf("%s copy again: %s", tool, r)
		}
		dst := "local?root=" + filepath.Join(dir, tool+"-subst")
		cmds.must("nix-store", "--store", dst, "--option", "substituters", cache, "--option", "trusted-public-keys", strings.TrimSpace(string(pubKey)), "-r", top)
		infos[i] = regexp.MustCompile(`"registrationTime":[0-9]+`).ReplaceAllString(cmds.must("nix", "path-info", "--store", dst, "--json", "-r", top), "")
	}
	if infos[0] != infos[1] || !strings.Contains(infos[0], "cairn-copy-test-1:") {
		t.Errorf("substituted from cairn's cache:\n%s\nfrom nix's:\n%s", infos[0], infos[1])
	}
	// Back from the cache Cairn wrote, signatures checked against the key:
	// as nix copy --from does.
	key := strings.TrimSpace(string(pubKey))
	from := "file://" + filepath.Join(dir, "cairn-cache-xz")
	var back [2]string
	for i, tool := range []string{"cairn", "nix"} {
		dst := "local?root=" + filepath.Join(dir, tool+"-back")
		var errOut string
		var code int
		if tool == "nix" {
			_, errOut, code = cmds.run("nix", "copy", "--store", dst, "--option", "trusted-public-keys", key, "--from", from, top)
		} else {
			_, errOut, code = cmds.run(bin, "--store", dst, "--option", "trusted-public-keys", key, "store", "copy", "--from", from, top)
		}
		back[i] = errOut + "exit " + string(rune('0'+code)) + "\n" +
			regexp.MustCompile(`"registrationTime":[0-9]+`).ReplaceAllString(cmds.must("nix", "path-info", "--store", dst, "--json", "-r", top), "")
	}
	if back[0] != back[1] || !strings.Contains(back[0], "exit 0") {
		t.Errorf("cairn store copy --from file://:\n%s\nnix copy:\n%s", back[0], back[1])
	}
}
