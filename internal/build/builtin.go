package build

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"cairn/internal/builtins"
	"cairn/internal/derivation"
	"cairn/internal/storepath"
)

// Builtin builders ("builtin:fetchurl", "builtin:buildenv",
// "builtin:unpack-channel") run in the daemon's process, in a goroutine that
// stands for the builder's process: no sandbox is started and no /bin/sh is
// needed. What a builtin reads goes through a builtins.View: in a sandboxed
// build only the input closure and the sandbox-paths, at the paths the
// builder would use; it writes only the output "out", where the sandbox's
// output would be (the scratch store dir, private to the daemon), and the
// output then goes through the same checks and registration as any
// builder's.

func isBuiltin(drv *derivation.Derivation) bool { return strings.HasPrefix(drv.Builder, "builtin:") }

// startBuiltin runs drv's builtin builder; it writes its log to logw and
// closes it when done.
func (b *Builder) startBuiltin(g *goal, r *request, dirs *buildDirs, env *Env, inputs []storepath.StorePath, sandboxed bool, logw *os.File) process {
	st := b.store
	drv := g.drv
	vars := make(map[string]string, len(drv.Env))
	for k, v := range drv.Env {
		vars[k] = env.Rewrite.Replace(v)
	}
	job := &builtins.Job{Builder: drv.Builder, Env: vars, Log: logw, Settings: r.opts.Builtins}
	if o, ok := drv.Outputs["out"]; ok {
		job.Out = dirs.outputDir(st, o.Path)
	}
	if sandboxed {
		job.View = b.builtinView(g.ctx, inputs, r.opts.SandboxPaths)
	} else {
		job.View = builtins.HostView()
	}
	ctx, cancel := context.WithCancel(g.ctx)
	p := &builtinProcess{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		defer logw.Close()
		var err error
		if job.Out == "" {
			err = errNoOut
		} else {
			err = builtins.Run(ctx, job)
		}
		if err != nil {
			logw.WriteString("\x1b[31;1merror:\x1b[0m " + err.Error() + "\n")
			p.code = 1
		}
		p.err = ctx.Err()
	}()
	return p
}

var errNoOut = builtinError("attribute '\x1b[35;1mout\x1b[0m' missing")

type builtinError string

func (e builtinError) Error() string { return string(e) }

// builtinView is what a sandboxed builder would see of the file system:
// the input closure and the sandbox-paths (with the closures of store
// paths among them).
func (b *Builder) builtinView(ctx context.Context, inputs []storepath.StorePath, sandboxPaths []string) *builtins.View {
	st := b.store
	storeDir := string(st.StoreDir())
	v := &builtins.View{StoreDir: storeDir, RealStoreDir: st.RealStoreDir(), Paths: map[string]bool{}}
	for _, p := range inputs {
		v.Paths[p.Base()] = true
	}
	var extra []storepath.StorePath
	for _, entry := range sandboxPaths {
		entry = strings.TrimSuffix(entry, "?")
		target, source, ok := strings.Cut(entry, "=")
		if !ok {
			source = target
		}
		if !filepath.IsAbs(target) || !filepath.IsAbs(source) {
			continue
		}
		if sp, _, err := st.StoreDir().ToStorePath(source); err == nil {
			extra = append(extra, sp)
			if filepath.Clean(target) == filepath.Clean(source) {
				continue
			}
			source = filepath.Join(st.RealStoreDir(), strings.TrimPrefix(source, storeDir+"/"))
		}
		v.Binds = append(v.Binds, builtins.Bind{Target: filepath.Clean(target), Source: filepath.Clean(source)})
	}
	if len(extra) > 0 {
		if valid, err := st.QueryValidPaths(ctx, extra); err == nil {
			if closure, err := st.QueryClosure(ctx, valid, false); err == nil {
				for _, p := range closure {
					v.Paths[p.Base()] = true
				}
			}
		}
	}
	return v
}

// builtinProcess is a running builtin, as a process: exit code 1 on
// failure.
type builtinProcess struct {
	cancel context.CancelFunc
	done   chan struct{}
	code   int
	err    error
}

func (p *builtinProcess) Wait() (int, syscall.Signal, error) {
	<-p.done
	p.cancel()
	if p.err != nil {
		return -1, syscall.SIGKILL, p.err
	}
	return p.code, 0, nil
}

func (p *builtinProcess) Kill() { p.cancel() }
