package builtins

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
	"syscall"
)

// Limits of builtin:buildenv.
const (
	// MaxPropagatedFile bounds a nix-support/propagated-user-env-packages
	// file.
	MaxPropagatedFile = 1 << 20
	// MaxLinkDepth bounds how deep buildenv descends into packages.
	MaxLinkDepth = 256
)

// Package is one path of builtin:buildenv's "derivations" attribute.
type Package struct {
	Path     string
	Active   bool
	Priority int
}

// ParsePackages parses the "derivations" attribute: groups of
// "ACTIVE PRIORITY N PATH1 … PATHN" separated by white space, each giving
// its N paths its activity (anything but "false" is active) and priority.
func ParsePackages(s string) ([]Package, error) {
	toks := strings.Fields(s)
	var pkgs []Package
	for len(toks) > 0 {
		if len(toks) < 3 {
			return nil, fmt.Errorf("parse derivations: %d words after the last package", len(toks))
		}
		active := toks[0] != "false"
		prio, err := stoi(toks[1])
		if err != nil {
			return nil, fmt.Errorf("parse derivations: priority %q: %w", toks[1], err)
		}
		n, err := stoi(toks[2])
		if err != nil {
			return nil, fmt.Errorf("parse derivations: output count %q: %w", toks[2], err)
		}
		toks = toks[3:]
		if n < 0 || n > len(toks) {
			return nil, fmt.Errorf("parse derivations: %d outputs, %d words left", n, len(toks))
		}
		for _, p := range toks[:n] {
			pkgs = append(pkgs, Package{Path: p, Active: active, Priority: prio})
		}
		toks = toks[n:]
	}
	return pkgs, nil
}

// stoi is C++'s std::stoi: an optional sign and decimal digits, anything
// after them ignored, an int's range.
func stoi(s string) (int, error) {
	i := 0
	neg := false
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		neg = s[i] == '-'
		i++
	}
	start := i
	n := int64(0)
	for ; i < len(s) && s[i] >= '0' && s[i] <= '9'; i++ {
		n = n*10 + int64(s[i]-'0')
		if n > 1<<31 {
			return 0, errors.New("out of range")
		}
	}
	if i == start {
		return 0, errors.New("not a number")
	}
	if neg {
		n = -n
	}
	if n > 1<<31-1 {
		return 0, errors.New("out of range")
	}
	return int(n), nil
}

// buildenv is builtin:buildenv: the profile's symlink forest.
func buildenv(j *Job, l *logger) error {
	out, err := attr(j.Env, "out")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(j.Out, 0o777); err != nil {
		return fmt.Errorf("creating directory '%s': %s", hl(out), hl(errText(err)))
	}
	ds, err := attr(j.Env, "derivations")
	if err != nil {
		return err
	}
	pkgs, err := ParsePackages(ds)
	if err != nil {
		return err
	}
	e := &envBuilder{view: j.View, log: l, priorities: map[string]int{}}
	if err := e.buildProfile(out, j.Out, pkgs); err != nil {
		return err
	}
	manifest, err := attr(j.Env, "manifest")
	if err != nil {
		return err
	}
	if err := os.Symlink(manifest, j.Out+"/manifest.nix"); err != nil {
		return fmt.Errorf("creating symlink from '%s' to '%s': %s", hl(out+"/manifest.nix"), hl(manifest), hl(errText(err)))
	}
	return nil
}

// envBuilder links packages into a profile.
type envBuilder struct {
	view       *View
	log        *logger
	priorities map[string]int // the priority of each link made, by its path as the builder sees it
}

// buildProfile links pkgs into out (host path outHost): the active ones by
// priority and path, then what they propagate, breadth first.
func (e *envBuilder) buildProfile(out, outHost string, pkgs []Package) error {
	done := map[string]bool{}
	postponed := map[string]bool{}
	addPkg := func(dir string, prio int) error {
		if done[dir] {
			return nil
		}
		done[dir] = true
		if err := e.createLinks(dir, out, outHost, prio, 0); err != nil {
			return err
		}
		prop := dir + "/nix-support/propagated-user-env-packages"
		data, err := e.readFile(prop)
		if err != nil {
			if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ENOTDIR) {
				return nil
			}
			return err
		}
		for _, p := range strings.FieldsFunc(data, func(r rune) bool { return r == ' ' || r == '\n' }) {
			if !done[p] {
				postponed[p] = true
			}
		}
		return nil
	}
	slices.SortStableFunc(pkgs, func(a, b Package) int {
		if a.Priority != b.Priority {
			return a.Priority - b.Priority
		}
		return strings.Compare(a.Path, b.Path)
	})
	for _, p := range pkgs {
		if p.Active {
			if err := addPkg(p.Path, p.Priority); err != nil {
				return err
			}
		}
	}
	// Propagated packages come later, with lower priorities.
	counter := 1000
	for len(postponed) > 0 {
		dirs := make([]string, 0, len(postponed))
		for p := range postponed {
			dirs = append(dirs, p)
		}
		slices.Sort(dirs)
		postponed = map[string]bool{}
		for _, d := range dirs {
			if err := addPkg(d, counter); err != nil {
				return err
			}
			counter++
		}
	}
	return nil
}

// readFile reads a small file through the view, as Nix's readFile.
func (e *envBuilder) readFile(p string) (string, error) {
	f, err := e.view.Open(p)
	if err != nil {
		if errors.Is(err, syscall.EISDIR) {
			return "", fmt.Errorf("reading file '%s': %s", hl(p), hl(errText(syscall.EISDIR)))
		}
		var pe *fs.PathError
		if errors.As(err, &pe) && (errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ENOTDIR)) {
			return "", err
		}
		return "", fmt.Errorf("opening file '%s': %s", hl(p), hl(errText(err)))
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxPropagatedFile+1))
	if err != nil {
		return "", fmt.Errorf("reading file '%s': %s", hl(p), hl(errText(err)))
	}
	if len(b) > MaxPropagatedFile {
		return "", fmt.Errorf("reading file '%s': larger than %d bytes", hl(p), MaxPropagatedFile)
	}
	return string(b), nil
}

// ignored are the files no profile gets: useless, or sure to collide.
var ignored = []string{"/propagated-build-inputs", "/nix-support", "/perllocal.pod", "/info/dir", "/log", "/manifest.nix", "/manifest.json"}

// createLinks links the entries of srcDir into dstDir (dstHost on the
// host), as Nix 2.8's createLinks.
func (e *envBuilder) createLinks(srcDir, dstDir, dstHost string, prio, depth int) error {
	if depth > MaxLinkDepth {
		return fmt.Errorf("linking '%s': deeper than %d directories", hl(srcDir), MaxLinkDepth)
	}
	ents, err := e.view.ReadDir(srcDir)
	if err != nil {
		if errors.Is(err, syscall.ENOTDIR) {
			e.log.warn("not including '%s' in the user environment because it's not a directory", srcDir)
			return nil
		}
		return fmt.Errorf("opening directory '%s': %s", hl(srcDir), hl(errText(err)))
	}
	for _, ent := range ents {
		name := ent.Name()
		if name[0] == '.' {
			continue // not matched by a glob
		}
		srcFile := srcDir + "/" + name
		dstFile := dstDir + "/" + name
		dstFileHost := dstHost + "/" + name

		srcSt, err := e.view.Stat(srcFile)
		if err != nil {
			if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ENOTDIR) {
				e.log.warn("skipping dangling symlink '%s'", dstFile)
				continue
			}
			return fmt.Errorf("getting status of '%s': %s", hl(srcFile), hl(errText(err)))
		}
		if slices.ContainsFunc(ignored, func(s string) bool { return strings.HasSuffix(srcFile, s) }) {
			continue
		}
		if srcSt.IsDir() {
			dstSt, err := os.Lstat(dstFileHost)
			switch {
			case err == nil && dstSt.IsDir():
				if err := e.createLinks(srcFile, dstFile, dstFileHost, prio, depth+1); err != nil {
					return err
				}
				continue
			case err == nil && dstSt.Mode()&fs.ModeSymlink != 0:
				// A link to another package's directory becomes a
				// directory holding both.
				link, err := readlink(dstFileHost)
				if err != nil {
					return fmt.Errorf("reading symbolic link '%s': %s", hl(dstFile), hl(errText(err)))
				}
				target, _, err := e.view.Resolve(link)
				if err != nil {
					return fmt.Errorf("getting status of '%s': %s", hl(link), hl(errText(err)))
				}
				tSt, err := e.view.Stat(target)
				if err != nil {
					return fmt.Errorf("getting status of '%s': %s", hl(target), hl(errText(err)))
				}
				if !tSt.IsDir() {
					return fmt.Errorf("collision between '%s' and non-directory '%s'", hl(srcFile), hl(target))
				}
				if err := os.Remove(dstFileHost); err != nil {
					return fmt.Errorf("unlinking '%s': %s", hl(dstFile), hl(errText(err)))
				}
				if err := os.Mkdir(dstFileHost, 0o755); err != nil {
					return fmt.Errorf("creating directory '%s': %s", hl(dstFile), hl(errText(err)))
				}
				if err := e.createLinks(target, dstFile, dstFileHost, e.priorities[dstFile], depth+1); err != nil {
					return err
				}
				if err := e.createLinks(srcFile, dstFile, dstFileHost, prio, depth+1); err != nil {
					return err
				}
				continue
			case err != nil && !errors.Is(err, fs.ErrNotExist):
				return fmt.Errorf("getting status of '%s': %s", hl(dstFile), hl(errText(err)))
			}
		} else {
			dstSt, err := os.Lstat(dstFileHost)
			switch {
			case err == nil && dstSt.Mode()&fs.ModeSymlink != 0:
				prev := e.priorities[dstFile]
				if prev == prio {
					other, _ := readlink(dstFileHost)
					return fmt.Errorf("packages '%s' and '%s' have the same priority %s; "+
						"use 'nix-env --set-flag priority NUMBER INSTALLED_PKGNAME' "+
						"to change the priority of one of the conflicting packages"+
						" (0 being the highest priority)", hl(srcFile), hl(other), hl(fmt.Sprint(prio)))
				}
				if prev < prio {
					continue
				}
				if err := os.Remove(dstFileHost); err != nil {
					return fmt.Errorf("unlinking '%s': %s", hl(dstFile), hl(errText(err)))
				}
			case err == nil && dstSt.IsDir():
				return fmt.Errorf("collision between non-directory '%s' and directory '%s'", hl(srcFile), hl(dstFile))
			case err != nil && !errors.Is(err, fs.ErrNotExist):
				return fmt.Errorf("getting status of '%s': %s", hl(dstFile), hl(errText(err)))
			}
		}
		if err := os.Symlink(srcFile, dstFileHost); err != nil {
			return fmt.Errorf("creating symlink from '%s' to '%s': %s", hl(dstFile), hl(srcFile), hl(errText(err)))
		}
		e.priorities[dstFile] = prio
	}
	return nil
}

// hl highlights an argument of a message as Nix's hintfmt does.
func hl(s string) string { return "\x1b[35;1m" + s + "\x1b[0m" }
