package config

import (
	"os"
	"os/user"
	"runtime"
	"strconv"
	"sync"
)

// rootBuildUsersGroup is build-users-group's default for root: Nix 2.8 builds
// as the nixbld users whenever it runs as root and nothing says otherwise.
const rootBuildUsersGroup = "nixbld"

// rootBuildUsers reports whether build-users-group defaults to
// rootBuildUsersGroup: when running as root and the group exists. Where it
// does not, Nix refuses every build ("the group 'nixbld' specified in
// 'build-users-group' does not exist"); Cairn builds in a user namespace
// instead, as it does without root, so a root machine with no setup builds.
var rootBuildUsers = sync.OnceValue(func() bool {
	if os.Geteuid() != 0 {
		return false
	}
	_, err := user.LookupGroup(rootBuildUsersGroup)
	return err == nil
})

// defaults are Nix 2.8's defaults (as `nix show-config` prints them on Linux) for the
// settings Cairn reads. Settings Cairn does not read have no default here; they are
// still accepted and kept.
var defaults = map[string]string{
	"allowed-users":              "*",
	"auto-allocate-uids":         "false",
	"auto-optimise-store":        "false",
	"build-poll-interval":        "5",
	"build-users-group":          "",
	"builders":                   "",
	"builders-use-substitutes":   "false",
	"compress-build-log":         "true",
	"connect-timeout":            "0",
	"cores":                      strconv.Itoa(runtime.NumCPU()),
	"download-attempts":          "5",
	"fallback":                   "false",
	"filter-syscalls":            "true",
	"fixed-output-host-loopback": "true", // Cairn's own
	"fixed-output-network":       "auto", // Cairn's own
	"fsync-metadata":             "true",
	"gc-reserved-space":          "8388608",
	"hashed-mirrors":             "",
	"id-count":                   "8388608",
	"keep-build-log":             "true",
	"keep-derivations":           "true",
	"keep-env-derivations":       "false",
	"keep-failed":                "false",
	"keep-going":                 "false",
	"keep-outputs":               "false",
	"max-build-log-size":         "0",
	"max-free":                   "18446744073709551615",
	"max-jobs":                   "1",
	"max-silent-time":            "0",
	"min-free":                   "0",
	"min-free-check-interval":    "5",
	"narinfo-cache-negative-ttl": "3600",
	"narinfo-cache-positive-ttl": "2592000",
	"netrc-file":                 "/etc/nix/netrc",
	"post-build-hook":            "",
	"pre-build-hook":             "",
	"require-sigs":               "true",
	"sandbox":                    "true",
	"sandbox-build-dir":          "/build",
	"sandbox-fallback":           "true",
	"sandbox-paths":              "",
	"secret-key-files":           "",
	"stalled-download-timeout":   "300",
	"start-id":                   "872415232",
	"substitute":                 "true",
	"substituters":               "https://cache.nixos.org/",
	"system":                     "x86_64-linux",
	"system-features":            "benchmark big-parallel kvm nixos-test",
	"timeout":                    "0",
	"trusted-public-keys":        "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=",
	"trusted-substituters":       "",
	"trusted-users":              "root",
	"use-case-hack":              "false",
	"use-sqlite-wal":             "true",
}
