// Package sandbox runs one command in a fresh set of Linux namespaces with a
// root file system built from a list of mounts. It knows nothing of Nix: the
// caller says what to mount, which files to write, who the command runs as and
// what it runs.
//
// # Vocabulary
//
//   - Spec: plain data (JSON) describing one sandbox. The parent sends it to
//     the child over an inherited socket, never through argv.
//   - Root: a directory the caller made (empty, private to the daemon). The
//     child mounts a small tmpfs on it, in its own mount namespace, and builds
//     the new root there; the host never sees the mounts and nothing is left
//     on disk.
//   - Bind: a host path (file or directory) made visible at a target inside
//     the root, recursively, read-only unless Writable. Optional binds whose
//     source is missing are skipped.
//   - BuildDir: the build's working directory on the host, bound read-write at
//     BuildDirTarget (usually /build).
//   - Tmpfs: a fresh empty tmpfs at a target (e.g. /tmp).
//   - File: a file written into the root before the binds (e.g. /etc/passwd);
//     a bind on the same target wins.
//   - ID map: inside ↔ outside id ranges for a user namespace. With maps the
//     child gets CLONE_NEWUSER (rootless daemon: its own uid/gid → 1000/100;
//     root daemon: a build-user uid/gid → 1000/100). Without maps there is no
//     user namespace: the daemon must be root and UID/GID are host ids.
//   - init: the child process, the current binary re-executed as
//     `cairn sandbox-init` (InitPath, InitArgs). It runs Init, which sets the
//     sandbox up and execs the command, so the command is PID 1 of its PID
//     namespace: when it exits, the kernel kills everything else in the build.
//   - Net: a user-mode network stack the parent runs for the sandbox's own
//     network namespace (fixed-output builds); without one the namespace
//     has only loopback. Never the host's namespace: its abstract Unix
//     sockets stay out of reach.
//   - channel: a socket pair; fd 3 in init. Parent → child: the Spec, then a
//     go-ahead byte once a Net or a NetworkSetup hook is set up. Child →
//     parent: an error report, or 'X' just before exec. The socket is
//     close-on-exec, so EOF after 'X' means the command is running.
//
// # Sequence
//
// Parent (Start):
//  1. validate the Spec; make the build's cgroup when Spec.Cgroup.Parent is
//     set (see DetectCgroup);
//  2. re-exec InitPath with clone flags NEWNS|NEWPID|NEWNET|NEWIPC|NEWUTS
//     (+NEWUSER with id maps, ambient capabilities so that init keeps
//     CAP_SYS_ADMIN/CAP_NET_ADMIN/CAP_SETUID/CAP_SETGID in its namespace),
//     Pdeathsig SIGKILL, clone3 straight into the cgroup;
//  3. send the Spec; attach Spec.Net's stack (pasta or slirp4netns, see Net)
//     and run NetworkSetup (if any) on the child's pid, then send the
//     go-ahead;
//  4. read the channel until EOF: an error report becomes Start's error.
//
// Child (Init), on one locked OS thread:
//  1. read the Spec; new cgroup namespace;
//  2. make every mount private (MS_REC|MS_PRIVATE on /);
//  3. with the identity it was started with (the host uid: it may reach the
//     caller's private directories) clone every bind source into a detached
//     mount (open_tree OPEN_TREE_CLONE|AT_RECURSIVE) and set its attributes
//     (mount_setattr: read-only, nosuid, nodev, recursively); mount the tmpfs
//     on Root;
//  4. in a user namespace, switch to UID/GID inside (files it creates on the
//     tmpfs must have mapped owners);
//  5. build the tree, every step fd-relative and refusing symlinks: /proc
//     (a new proc for the new PID namespace), /dev (tmpfs; null, zero, full,
//     random, urandom, tty bound from the host; devpts newinstance with
//     ptmxmode=0666 and /dev/ptmx → pts/ptmx; shm tmpfs; fd, stdin, stdout,
//     stderr links), Files, binds and tmpfs mounts in target order (a parent
//     before its children), the build dir;
//  6. root read-only; hostname, domain name; loopback up;
//  7. pivot_root(".", ".") then umount2(".", MNT_DETACH), as runc does; chdir;
//  8. rlimits; wait for the go-ahead if asked; without a user namespace,
//     switch to UID/GID now; no_new_privs; drop every capability; the seccomp
//     filter (see Filter); mark every fd above 2 close-on-exec; 'X'; execve
//     with exactly the given environment.
//
// Any failure in the child is sent to the parent as a SetupError, e.g.
// "sandbox: mount /proc: permission denied", and Start returns it.
//
// Requirements: Linux 5.12 or later (open_tree, move_mount, mount_setattr).
// mount_setattr only changes the flags it is given, so the kernel's locked
// mount flags (nosuid, nodev, noexec, atime of a mount inherited from a more
// privileged namespace) are preserved without reading them back with statfs,
// and read-only binds are read-only all the way down their submounts.
package sandbox
