package config

import (
	"os"
	"os/user"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// platformDefaults are the defaults Nix 2.8 computes from the machine:
// system (Nix's compile-time SYSTEM; here the architecture Cairn was built
// for), system-features (kvm when /dev/kvm is readable and writable) and
// extra-platforms (i686-linux on x86_64-linux outside WSL1, and the
// x86-64 micro-architecture levels the CPU has, as Nix's computeLevels).
var platformDefaults = sync.OnceValue(func() map[string]string {
	system := runtime.GOOS
	if arch, ok := nixArch[runtime.GOARCH]; ok {
		system = arch + "-" + runtime.GOOS
	}
	features := []string{"benchmark", "big-parallel", "nixos-test"}
	if unix.Access("/dev/kvm", unix.R_OK|unix.W_OK) == nil {
		features = append(features, "kvm")
	}
	var extra []string
	if system == "x86_64-linux" {
		if !isWSL1() {
			extra = append(extra, "i686-linux")
		}
		cpuinfo, _ := os.ReadFile("/proc/cpuinfo")
		for _, level := range x86Levels(cpuFlags(string(cpuinfo))) {
			extra = append(extra, level+"-linux")
		}
	}
	sort.Strings(features)
	sort.Strings(extra)
	return map[string]string{
		"system":          system,
		"system-features": strings.Join(features, " "),
		"extra-platforms": strings.Join(extra, " "),
	}
})

// nixArch is Nix's name of a Go architecture.
var nixArch = map[string]string{
	"amd64": "x86_64", "386": "i686", "arm64": "aarch64", "riscv64": "riscv64",
	"ppc64le": "powerpc64le", "s390x": "s390x", "mips64le": "mips64el", "loong64": "loongarch64",
}

func isWSL1() bool {
	var u unix.Utsname
	return unix.Uname(&u) == nil && strings.HasSuffix(unix.ByteSliceToString(u.Release[:]), "-Microsoft")
}

// cpuFlags returns the flags of /proc/cpuinfo's first processor.
func cpuFlags(cpuinfo string) map[string]bool {
	flags := map[string]bool{}
	for _, line := range strings.Split(cpuinfo, "\n") {
		name, value, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(name) == "flags" {
			for _, f := range strings.Fields(value) {
				flags[f] = true
			}
			break
		}
	}
	return flags
}

// x86Levels are the x86-64 micro-architecture levels the flags make up,
// with the features Nix 2.8's computeLevels checks (in /proc/cpuinfo's
// names: pni is SSE3, abm is LZCNT).
func x86Levels(flags map[string]bool) []string {
	levels := [][]string{
		{"cmov", "cx8", "fpu", "fxsr", "mmx", "sse", "sse2"},
		{"cx16", "lahf_lm", "popcnt", "pni", "ssse3", "sse4_1", "sse4_2"},
		{"avx", "avx2", "f16c", "fma", "abm", "movbe"},
		{"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"},
	}
	var have []string
	for i, need := range levels {
		for _, f := range need {
			if !flags[f] {
				return have
			}
		}
		have = append(have, "x86_64-v"+strconv.Itoa(i+1))
	}
	return have
}

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
	"allow-new-privileges":       "false",
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
	"diff-hook":                  "",
	"download-attempts":          "5",
	"fallback":                   "false",
	"ignored-acls":               "security.selinux system.nfs4_acl",
	"filter-syscalls":            "true",
	"fixed-output-host-loopback": "true", // Cairn's own
	"fixed-output-network":       "auto", // Cairn's own
	"fsync-metadata":             "true",
	"gc-reserved-space":          "8388608",
	"hashed-mirrors":             "",
	"id-count":                   "8388608",
	"impersonate-linux-26":       "false",
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
	"run-diff-hook":              "false",
	"sandbox":                    "true",
	"sandbox-build-dir":          "/build",
	"sandbox-dev-shm-size":       "50%",
	"sandbox-fallback":           "true",
	"sandbox-paths":              "",
	"secret-key-files":           "",
	"stalled-download-timeout":   "300",
	"start-id":                   "872415232",
	"substitute":                 "true",
	"substituters":               "https://cache.nixos.org/",
	"timeout":                    "0",
	"trusted-public-keys":        "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=",
	"trusted-substituters":       "",
	"trusted-users":              "root",
	"use-case-hack":              "false",
	"use-sqlite-wal":             "true",
}
