package cli

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"cairn/internal/testutil/nixtest"
)

// TestStoreCopyAgainstNix: cairn store copy against nix copy, each from the
// same source store into stores of its own: an unsigned input-addressed
// closure refused by a local store, then copied with --no-check-sigs, then
// nothing left to copy; the same closure to an ssh-ng:// store (refused by
// the daemon there, then copied without the check) and back, and to and
// from an ssh:// store.
// The same stderr and exit, the same nix path-info --json.
func TestStoreCopyAgainstNix(t *testing.T) {
	nixtest.Require(t, "nix", "nix-store", "nix-build", "nix-daemon")
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox")
	}
	dir := t.TempDir()
	bin := cairnBinary(t, dir)
	file := filepath.Join(dir, "serve.nix")
	os.WriteFile(file, []byte(serveNix), 0o644)
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "NIX_CONF_DIR=/nonexistent", "NIX_USER_CONF_FILES=/nonexistent",
		"NIX_CONFIG=experimental-features = nix-command\nsubstituters =\nsandbox = true\nsandbox-paths = /bin/sh=/bin/busybox\nbuild-users-group =\n"}
	cmds := commander{t, env}
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
