package cli

import (
	"bytes"
	"strings"
	"testing"
)

func TestSandboxInit(t *testing.T) {
	t.Run("hidden", func(t *testing.T) {
		root := NewRoot()
		cmd, _, err := root.Find([]string{"sandbox-init"})
		if err != nil || cmd.Name() != "sandbox-init" {
			t.Fatalf("sandbox-init not registered: %v", err)
		}
		if !cmd.Hidden {
			t.Error("sandbox-init is listed in help")
		}
	})
	t.Run("not started by Start", func(t *testing.T) {
		t.Setenv("CAIRN_SANDBOX_INIT", "")
		root := NewRoot()
		root.SetOut(&bytes.Buffer{})
		root.SetErr(&bytes.Buffer{})
		root.SetArgs([]string{"sandbox-init"})
		err := root.Execute()
		if err == nil || !strings.Contains(err.Error(), "not started by sandbox.Start") {
			t.Fatalf("sandbox-init by hand: %v", err)
		}
	})
	t.Run("no args", func(t *testing.T) {
		root := NewRoot()
		root.SetOut(&bytes.Buffer{})
		root.SetErr(&bytes.Buffer{})
		root.SetArgs([]string{"sandbox-init", "extra"})
		if err := root.Execute(); err == nil {
			t.Fatal("sandbox-init with an argument: no error")
		}
	})
}
