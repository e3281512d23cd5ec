package protocol

import (
	"os"
	"path/filepath"
)

func readFile(name string) ([]byte, error)       { return os.ReadFile(name) }
func globFiles(pattern string) ([]string, error) { return filepath.Glob(pattern) }
