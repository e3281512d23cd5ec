package cli

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"cairn/internal/fsnar"
	"cairn/internal/nixhash"
)

func init() { register(newHashCmd) }

func newHashCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "hash",
		Short: "Compute and convert cryptographic hashes, as nix hash and nix-hash do",
	}
	cmd.AddCommand(
		newHashFSCmd("path", "Print the hash of the NAR serialisation of each path", hashPath),
		newHashFSCmd("file", "Print the hash of each file's contents", hashFile),
		newHashConvertCmd(),
	)
	for _, enc := range []struct {
		name string
		enc  nixhash.Encoding
	}{{"to-base16", nixhash.Base16}, {"to-base32", nixhash.Nix32}, {"to-base64", nixhash.Base64}, {"to-sri", nixhash.SRI}} {
		cmd.AddCommand(newHashToCmd(enc.name, enc.enc))
	}
	return cmd
}

// encodingFlags are nix hash's --base16/--base32/--base64/--sri switches; SRI by default.
type encodingFlags struct{ base16, base32, base64, sri bool }

func (f *encodingFlags) add(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&f.base16, "base16", false, "print the hash in base-16")
	cmd.Flags().BoolVar(&f.base32, "base32", false, "print the hash in Nix's base-32")
	cmd.Flags().BoolVar(&f.base64, "base64", false, "print the hash in base-64")
	cmd.Flags().BoolVar(&f.sri, "sri", false, "print the hash in SRI form (the default)")
	cmd.MarkFlagsMutuallyExclusive("base16", "base32", "base64", "sri")
}

func (f *encodingFlags) encoding() nixhash.Encoding {
	switch {
	case f.base16:
		return nixhash.Base16
	case f.base32:
		return nixhash.Nix32
	case f.base64:
		return nixhash.Base64
	}
	return nixhash.SRI
}

func newHashFSCmd(name, short string, hash func(context.Context, string, nixhash.Algorithm) (nixhash.Hash, error)) *cobra.Command {
	var enc encodingFlags
	var typ string
	cmd := &cobra.Command{
		Use:   name + " [flags] PATH...",
		Short: short,
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			algo, err := nixhash.ParseAlgorithm(typ)
			if err != nil {
				return err
			}
			for _, p := range args {
				h, err := hash(cmd.Context(), p, algo)
				if err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), h.Format(enc.encoding(), false))
			}
			return nil
		},
	}
	enc.add(cmd)
	cmd.Flags().StringVar(&typ, "type", "sha256", "hash algorithm (md5, sha1, sha256 or sha512)")
	return cmd
}

func hashPath(ctx context.Context, path string, algo nixhash.Algorithm) (nixhash.Hash, error) {
	// Hashing a tree leaves a little garbage per entry, and a collection
	// running beside the two busy goroutines (walking, hashing) slows both.
	defer collectLate()()
	h := nixhash.NewHasher(algo)
	if err := fsnar.DumpDirect(ctx, h, path); err != nil {
		return nixhash.Hash{}, err
	}
	return h.Sum(), nil
}

func hashFile(_ context.Context, path string, algo nixhash.Algorithm) (nixhash.Hash, error) {
	f, err := os.Open(path)
	if err != nil {
		return nixhash.Hash{}, fmt.Errorf("hash file %s: %w", path, err)
	}
	defer f.Close()
	h := nixhash.NewHasher(algo)
	if _, err := io.CopyBuffer(h, f, make([]byte, 1<<20)); err != nil {
		return nixhash.Hash{}, fmt.Errorf("hash file %s: %w", path, err)
	}
	return h.Sum(), nil
}

var encodingNames = map[string]nixhash.Encoding{
	"base16": nixhash.Base16, "nix32": nixhash.Nix32, "base32": nixhash.Nix32,
	"base64": nixhash.Base64, "sri": nixhash.SRI,
}

func newHashConvertCmd() *cobra.Command {
	var algoName, to string
	cmd := &cobra.Command{
		Use:   "convert [--hash-algo ALGO] [--to ENCODING] HASH...",
		Short: "Convert hashes between base16, nix32, base64 and SRI (as nix hash convert)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			enc, ok := encodingNames[to]
			if !ok {
				return fmt.Errorf("hash convert: unknown encoding %q (want base16, nix32, base64 or sri)", to)
			}
			return convertHashes(cmd, args, algoName, enc)
		},
	}
	cmd.Flags().StringVar(&algoName, "hash-algo", "", "the algorithm of bare hashes")
	cmd.Flags().StringVar(&algoName, "type", "", "alias of --hash-algo")
	cmd.Flags().StringVar(&to, "to", "sri", "the encoding to print: base16, nix32, base64 or sri")
	return cmd
}

func newHashToCmd(name string, enc nixhash.Encoding) *cobra.Command {
	var algoName string
	cmd := &cobra.Command{
		Use:   name + " [--type ALGO] HASH...",
		Short: "Convert hashes (as nix hash " + name + ")",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return convertHashes(cmd, args, algoName, enc)
		},
	}
	cmd.Flags().StringVar(&algoName, "type", "", "the algorithm of bare hashes")
	return cmd
}

func convertHashes(cmd *cobra.Command, hashes []string, algoName string, enc nixhash.Encoding) error {
	var algo nixhash.Algorithm
	if algoName != "" {
		a, err := nixhash.ParseAlgorithm(algoName)
		if err != nil {
			return err
		}
		algo = a
	}
	for _, s := range hashes {
		h, err := nixhash.ParseAny(s, algo)
		if err != nil {
			return err
		}
		fmt.Fprintln(cmd.OutOrStdout(), h.Format(enc, false))
	}
	return nil
}
