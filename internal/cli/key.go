package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"cairn/internal/narinfo"
)

func init() { register(newKeyCmd) }

// maxKeyFileSize bounds a key file read from disk; a secret key file is under 400 bytes.
const maxKeyFileSize = 4096

func newKeyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "key",
		Short: "Make and inspect binary cache signing keys, as nix-store --generate-binary-cache-key does",
	}
	cmd.AddCommand(newKeyGenerateCmd(), newKeyPublicCmd())
	return cmd
}

func newKeyGenerateCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "generate NAME SECRET_FILE PUBLIC_FILE",
		Short: "Generate an ed25519 key pair named NAME",
		Long: `Generate an ed25519 key pair for signing store paths and write it in Nix's formats:
SECRET_FILE gets "NAME:base64(seed and public key)" (mode 0600) and PUBLIC_FILE
"NAME:base64(public key)" (mode 0644), both without a trailing newline, as
nix-store --generate-binary-cache-key writes them. Existing files are replaced.`,
		Args: cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, secFile, pubFile := args[0], args[1], args[2]
			sk, pk, err := narinfo.GenerateKey(name, nil)
			if err != nil {
				return err
			}
			if err := writeFileAtomic(secFile, []byte(sk.String()), 0o600); err != nil {
				return err
			}
			return writeFileAtomic(pubFile, []byte(pk.String()), 0o644)
		},
	}
}

func newKeyPublicCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "public [SECRET_FILE]",
		Short: "Print the public key of a secret key (read from standard input without SECRET_FILE)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, what := cmd.InOrStdin(), "standard input"
			if len(args) == 1 && args[0] != "-" {
				f, err := os.Open(args[0])
				if err != nil {
					return err
				}
				defer f.Close()
				r, what = f, args[0]
			}
			data, err := io.ReadAll(io.LimitReader(r, maxKeyFileSize+1))
			if err != nil {
				return fmt.Errorf("read secret key %s: %w", what, err)
			}
			if len(data) > maxKeyFileSize {
				return fmt.Errorf("read secret key %s: longer than %d bytes", what, maxKeyFileSize)
			}
			sk, err := narinfo.ParseSecretKey(string(data))
			if err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), sk.Public())
			return err
		},
	}
}

// writeFileAtomic writes data to a temporary file next to name with the given
// mode (umask not applied, as Nix's key files come out 0600 and 0644 whatever the
// umask), syncs it and renames it over name, so a reader never sees half a key
// and a replaced secret key never keeps an older, wider mode.
func writeFileAtomic(name string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Chmod(mode); err != nil {
		return fail(err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, name); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}
