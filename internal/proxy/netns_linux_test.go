package proxy

import (
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
	"github.com/trellis-c2c/trellis/internal/netns"
)

// socketNetns returns the identity of the namespace socket fd lives in.
func socketNetns(t testing.TB, fd int) nsID {
	t.Helper()
	nsfd, err := unix.IoctlRetInt(fd, unix.SIOCGSKNS)
	if err != nil {
		t.Fatalf("SIOCGSKNS: %v", err)
	}
	f := os.NewFile(uintptr(nsfd), "netns")
	defer f.Close()
	id, err := fileID(f)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestSocketIn: the socket is made in the instance's namespace and the
// thread is back in its own namespace afterwards.
func TestSocketIn(t *testing.T) {
	dataplanetest.RequireRoot(t)
	s := New(Config{})
	defer s.Close()
	ns, want, err := openNetns(dataplanetest.Namespace(t, "socketin"))
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()

	runtime.LockOSThread() // so that the thread checked is the one socketIn used
	defer runtime.UnlockOSThread()
	fd, err := s.socketIn(ns)
	if err != nil {
		t.Fatalf("socketIn = %v", err)
	}
	defer unix.Close(fd)
	if got := socketNetns(t, fd); got != want {
		t.Errorf("socket in netns %v, want the instance's %v", got, want)
	}
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	if got, _ := fileID(self); got != s.homeID {
		t.Errorf("thread in netns %v after socketIn, want its own %v", got, s.homeID)
	}
}

// BenchmarkProxyDialSocket: what making the app connection's socket in the
// instance's namespace costs, with held namespace descriptors (socketIn)
// and with netns.Do.
func BenchmarkProxyDialSocket(b *testing.B) {
	dataplanetest.RequireRoot(b)
	s := New(Config{})
	defer s.Close()
	path := dataplanetest.Namespace(b, "dialsocket")
	ns, _, err := openNetns(path)
	if err != nil {
		b.Fatal(err)
	}
	defer ns.Close()
	b.Run("socketIn", func(b *testing.B) {
		for b.Loop() {
			fd, err := s.socketIn(ns)
			if err != nil {
				b.Fatal(err)
			}
			unix.Close(fd)
		}
	})
	b.Run("netns.Do", func(b *testing.B) {
		for b.Loop() {
			var fd int
			err := netns.Do(path, func() (err error) {
				fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
			unix.Close(fd)
		}
	})
	b.Run("socket only", func(b *testing.B) {
		for b.Loop() {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				b.Fatal(err)
			}
			unix.Close(fd)
		}
	})
}

// BenchmarkProxyDialApp: a whole dial of the app from the proxy (socket in
// the namespace, connect, wrap as a *net.TCPConn, close), against
// net.Dial run inside netns.Do. The app accepts and closes at once.
func BenchmarkProxyDialApp(b *testing.B) {
	dataplanetest.RequireRoot(b)
	s := New(Config{})
	defer s.Close()
	path := dataplanetest.Namespace(b, "dialapp")
	var ln net.Listener
	if err := netns.Do(path, func() (err error) {
		ln, err = net.Listen("tcp4", "127.0.0.1:8080")
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	ns, id, err := openNetns(path)
	if err != nil {
		b.Fatal(err)
	}
	in := &instance{s: s, id: "bench", ns: ns, nsID: id, conns: map[*conn]struct{}{}}
	defer ns.Close()
	st := &served{app: netip.MustParseAddrPort("127.0.0.1:8080")}
	b.Run("proxy", func(b *testing.B) {
		for b.Loop() {
			c := &conn{in: in, st: st}
			app, err := c.dial()
			if err != nil {
				b.Fatal(err)
			}
			app.Close()
		}
	})
	b.Run("netns.Do+net.Dial", func(b *testing.B) {
		for b.Loop() {
			var app net.Conn
			if err := netns.Do(path, func() (err error) {
				app, err = net.Dial("tcp4", "127.0.0.1:8080")
				return err
			}); err != nil {
				b.Fatal(err)
			}
			app.Close()
		}
	})
}
