// Command escape is the builder of package escape's tests: see there.
package main

import (
	"fmt"
	"os"
	"syscall"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: escape NAME")
		os.Exit(2)
	}
	out := os.Getenv("out")
	f, err := os.OpenFile(out, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	content := "no escape\n"
	err = connect(os.Args[1], int(f.Fd()))
	if err == nil {
		content = "escaped\n"
	}
	fmt.Printf("abstract socket @%s: %v\n", os.Args[1], err)
	if _, err := f.WriteString(content); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	f.Close()
}

// connect connects to the abstract socket and sends fd over it.
func connect(name string, fd int) error {
	s, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(s)
	if err := syscall.Connect(s, &syscall.SockaddrUnix{Name: "@" + name}); err != nil {
		return err
	}
	return syscall.Sendmsg(s, []byte("escaped"), syscall.UnixRights(fd), nil, 0)
}
