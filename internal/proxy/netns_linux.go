package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/trellis-c2c/trellis/internal/netns"
)

// nsGetNsType is ioctl NS_GET_NSTYPE (_IO(0xb7, 0x3)): which kind of
// namespace a namespace file is.
const nsGetNsType = 0xb703

// nsID identifies a namespace: the device and inode of its nsfs file.
type nsID struct{ dev, ino uint64 }

func fileID(f *os.File) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nsID{}, err
	}
	return nsID{uint64(st.Dev), st.Ino}, nil
}

// openHome opens the network namespace of the calling thread: the one the
// process's ordinary threads are in, where a thread that entered an
// instance's namespace returns.
func openHome() (*os.File, nsID, error) {
	f, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, nsID{}, fmt.Errorf("open own network namespace: %w", err)
	}
	id, err := fileID(f)
	if err != nil {
		f.Close()
		return nil, nsID{}, fmt.Errorf("stat own network namespace: %w", err)
	}
	return f, id, nil
}

// openNetns opens the network namespace at path and checks that it is one.
// The descriptor pins the namespace: it is the one the listener was made
// in and the one dials go to, even if path comes to name another one.
func openNetns(path string) (*os.File, nsID, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nsID{}, fmt.Errorf("netns: %w", err)
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &sfs); err != nil || sfs.Type != unix.NSFS_MAGIC {
		f.Close()
		return nil, nsID{}, fmt.Errorf("netns %s is not a namespace file", path)
	}
	if t, err := unix.IoctlRetInt(int(f.Fd()), nsGetNsType); err != nil || t != unix.CLONE_NEWNET {
		f.Close()
		return nil, nsID{}, fmt.Errorf("netns %s is not a network namespace", path)
	}
	id, err := fileID(f)
	if err != nil {
		f.Close()
		return nil, nsID{}, fmt.Errorf("netns %s: %w", path, err)
	}
	return f, id, nil
}

// listen opens the listener on 0.0.0.0:Port in the namespace ns. All
// addresses, not only the instance's: then nothing in the namespace can
// bind Port, whatever address it asks for.
func listen(ns *os.File) (*net.TCPListener, error) {
	var ln net.Listener
	err := netns.Do(fdPath(ns), func() (err error) {
		ln, err = (&net.ListenConfig{}).Listen(context.Background(), "tcp4", "0.0.0.0:"+strconv.Itoa(Port))
		return err
	})
	if err != nil {
		return nil, err
	}
	return ln.(*net.TCPListener), nil
}

// fdPath names an open file by its descriptor, for netns.Do.
func fdPath(f *os.File) string { return "/proc/self/fd/" + strconv.Itoa(int(f.Fd())) }

// errStuck says the calling goroutine could not leave an instance's
// namespace: it stays locked to its thread and must end without doing
// anything else, so that the runtime discards the thread.
var errStuck = errors.New("thread stuck in an instance's network namespace")

// socketIn makes a TCP socket in the namespace ns. Only socket(2) runs in
// the namespace, on the calling goroutine's own thread, locked for the
// three system calls: a socket keeps its namespace, so connecting and
// everything after runs anywhere. With the namespaces' descriptors held,
// this costs two setns(2) (~4 µs here), where netns.Do, which opens the
// namespaces and starts a goroutine each time, costs ~45 µs.
func (s *Server) socketIn(ns *os.File) (int, error) {
	runtime.LockOSThread()
	if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return -1, fmt.Errorf("enter the instance's netns: %w", err)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if serr := unix.Setns(int(s.home.Fd()), unix.CLONE_NEWNET); serr != nil {
		// Stay locked: the thread is in the wrong namespace.
		if err == nil {
			unix.Close(fd)
		}
		s.log.Error("cannot leave an instance's network namespace: ending the connection and its thread", "err", serr)
		return -1, errStuck
	}
	runtime.UnlockOSThread()
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	return fd, nil
}

// dial connects to the app from inside the instance's namespace.
func (c *conn) dial() (*net.TCPConn, error) {
	in, s := c.in, c.in.s
	fd, err := s.socketIn(in.ns)
	if err != nil {
		return nil, err
	}
	addr := c.st.app
	err = unix.Connect(fd, &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()})
	pending := errors.Is(err, unix.EINPROGRESS)
	if err != nil && !pending {
		unix.Close(fd)
		return nil, os.NewSyscallError("connect", err)
	}
	f := os.NewFile(uintptr(fd), "app")
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	app := nc.(*net.TCPConn)
	app.SetNoDelay(true) // as net.Dial does; FileConn does not
	in.mu.Lock()
	if c.closed {
		in.mu.Unlock()
		app.Close()
		return nil, net.ErrClosed
	}
	c.app = app // from now on abort interrupts the wait below
	in.mu.Unlock()
	if pending {
		if err := connected(app, time.Now().Add(s.cfg.DialTimeout)); err != nil {
			return nil, err
		}
	}
	return app, nil
}

// connected waits until the non-blocking connect of app finished.
func connected(app *net.TCPConn, deadline time.Time) error {
	rc, err := app.SyscallConn()
	if err != nil {
		return err
	}
	app.SetWriteDeadline(deadline)
	defer app.SetWriteDeadline(time.Time{})
	var cerr error
	err = rc.Write(func(fd uintptr) bool {
		v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		switch {
		case err != nil:
			cerr = os.NewSyscallError("getsockopt", err)
		case v != 0:
			cerr = os.NewSyscallError("connect", syscall.Errno(v))
		default:
			if _, err := unix.Getpeername(int(fd)); errors.Is(err, unix.ENOTCONN) {
				return false // still connecting: wait until writable
			} else if err != nil {
				cerr = os.NewSyscallError("getpeername", err)
			}
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	return cerr
}
