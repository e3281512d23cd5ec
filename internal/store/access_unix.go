package store

import "golang.org/x/sys/unix"

func accessW(dir string) bool { return unix.Access(dir, unix.W_OK) == nil }
