// Package netns runs code inside Linux network namespaces without leaking
// a namespace switch into the rest of the process.
//
// A network namespace belongs to an OS thread, not to a process and not to
// a goroutine. setns(2) switches only the calling thread, while the Go
// scheduler moves goroutines between threads at any time. Code that calls
// setns on an unlocked goroutine can therefore continue on a thread that is
// still in the old namespace, or leave a switched thread behind for some
// unrelated goroutine (an HTTP handler, the controller client) to pick up.
// This package follows the rules worked out in containernetworking/plugins
// pkg/ns:
//
//   - Do runs the function on a fresh goroutine locked to its OS thread for
//     the whole switch, so the caller's thread is never touched.
//   - After the function returns, Do switches back and unlocks. If switching
//     back fails, Do leaves the goroutine locked when it exits; the Go runtime
//     then terminates that thread instead of reusing it.
//   - Goroutines started by the function do not run in the namespace: they
//     run on other threads. Open sockets inside Do and use them anywhere
//     afterwards instead; a socket stays in the namespace it was created in.
//
// Most kernel work does not need a switch at all: Handle returns a netlink
// handle whose sockets were opened in the target namespace. Sysctl needs the
// switch because /proc/sys/net shows the namespace of the thread that opens
// the file.
package netns
