package netns

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Dir is where named network namespaces are bind-mounted, as with
// `ip netns add`.
const Dir = "/run/netns"

// Path returns the path of the named network namespace name.
func Path(name string) string { return filepath.Join(Dir, name) }

func checkName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsRune(name, '/') {
		return fmt.Errorf("invalid netns name %q", name)
	}
	return nil
}

// Create makes a new named network namespace at /run/netns/NAME with its
// loopback device up and returns its path. It fails if the name is taken.
// The calling goroutine's thread is never switched.
func Create(name string) (path string, err error) {
	if err := checkName(name); err != nil {
		return "", err
	}
	path = Path(name)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		created, cerr := netns.NewNamed(name)
		if cerr == nil {
			created.Close()
		}
		// NewNamed may have unshared before failing: always switch back.
		if err := netns.Set(orig); err != nil {
			// Stay locked: the runtime discards this thread when the
			// goroutine exits.
			errc <- errors.Join(cerr, fmt.Errorf("restore netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- cerr
	}()
	if err := <-errc; err != nil {
		// A half-made namespace (file created, mount failed) must not stay.
		if !errors.Is(err, fs.ErrExist) {
			_ = Delete(name)
		}
		return "", fmt.Errorf("create netns %s: %w", name, err)
	}
	h, err := Handle(path)
	if err == nil {
		defer h.Close()
		var lo netlink.Link
		if lo, err = h.LinkByName("lo"); err == nil {
			err = h.LinkSetUp(lo)
		}
	}
	if err != nil {
		_ = Delete(name)
		return "", fmt.Errorf("set lo up in netns %s: %w", name, err)
	}
	return path, nil
}

// Delete removes the named network namespace: it unmounts and removes
// /run/netns/NAME. The namespace itself lives on while a process or an
// open socket still uses it. Deleting a namespace that does not exist is
// not an error.
func Delete(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	path := Path(name)
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil &&
		!errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmount netns %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove netns %s: %w", path, err)
	}
	return nil
}

func open(path string) (netns.NsHandle, error) {
	if path == "" {
		return netns.None(), errors.New("netns path is empty")
	}
	h, err := netns.GetFromPath(path)
	if err != nil {
		return netns.None(), fmt.Errorf("netns %s: %w", path, err)
	}
	return h, nil
}

// Do runs fn on an OS thread switched into the network namespace at path
// and switches back afterwards. Sockets fn opens stay in that namespace;
// goroutines fn starts do not run in it.
func Do(path string, fn func() error) error {
	target, err := open(path)
	if err != nil {
		return err
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", path, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Stay locked: the runtime discards this thread when the
			// goroutine exits.
			errc <- errors.Join(ferr, fmt.Errorf("leave netns %s: %w", path, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Handle returns a netlink handle bound to the network namespace at path.
// Its calls act in that namespace from any goroutine. Close it when done.
func Handle(path string) (*netlink.Handle, error) {
	ns, err := open(path)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in netns %s: %w", path, err)
	}
	return h, nil
}

// sysctlPath turns "net.ipv4.ip_forward" into /proc/sys/net/ipv4/ip_forward.
// A key that contains a slash is taken as a path below /proc/sys as is,
// which is how to name an interface whose name contains a dot.
func sysctlPath(key string) (string, error) {
	if key == "" || strings.Contains(key, "..") {
		return "", fmt.Errorf("invalid sysctl key %q", key)
	}
	if !strings.Contains(key, "/") {
		key = strings.ReplaceAll(key, ".", "/")
	}
	return filepath.Join("/proc/sys", key), nil
}

// Sysctl sets the sysctl key (for example "net.ipv4.ip_forward") to value
// inside the network namespace at path.
func Sysctl(path, key, value string) error {
	p, err := sysctlPath(key)
	if err != nil {
		return err
	}
	err = Do(path, func() error { return os.WriteFile(p, []byte(value), 0) })
	if err != nil {
		return fmt.Errorf("set sysctl %s=%s in netns %s: %w", key, value, path, err)
	}
	return nil
}

// GetSysctl reads the sysctl key inside the network namespace at path,
// without the trailing newline.
func GetSysctl(path, key string) (string, error) {
	p, err := sysctlPath(key)
	if err != nil {
		return "", err
	}
	var b []byte
	err = Do(path, func() (err error) {
		b, err = os.ReadFile(p)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("read sysctl %s in netns %s: %w", key, path, err)
	}
	return strings.TrimSpace(string(b)), nil
}
