package main

import (
	"encoding/base64"
	"io"
	"net"
	"os"
)

func decodeBase64(s string) ([]byte, error) { return base64.StdEncoding.DecodeString(s) }

// spliceStdio connects stdin and stdout to the Unix socket at path.
func spliceStdio(path string) error {
	c, err := net.Dial("unix", path)
	if err != nil {
		return err
	}
	go func() {
		io.Copy(c, os.Stdin)
		c.(*net.UnixConn).CloseWrite()
	}()
	// The daemon's side ending ends the connection (it closes after an error
	// even while the client could still write).
	_, err = io.Copy(os.Stdout, c)
	return err
}
