package proxy

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawSocket reads and writes a connected, non-blocking socket with raw
// system calls, waiting in the runtime's poller as net.Conn does when the
// socket is not ready.
//
// Why: every request through the proxy is two reads and two writes, and
// each write wakes the peer at once. A Go system call marks its P as
// "in a system call" and, with the runtime idle between requests, first
// wakes sysmon; when the woken peer preempts the proxy inside write(2) —
// the rule on a busy cell, where the client, the app and the agent share
// CPUs — sysmon takes the P away, and the proxy's thread comes back from
// the call to hand the goroutine over to another thread. Measured with
// perf stat over the TLS bench's one-CPU rounds: 3.5 context switches per
// request in the agent against haproxy's 2.0; 2.45 with raw calls. A
// non-blocking socket call never blocks, so it needs none of that: it is
// made as a raw system call, and the goroutine parks in the poller only on
// EAGAIN.
//
// After a read that got less than it asked for, the next Read still asks
// the kernel, which mostly answers EAGAIN: two of the about seven system
// calls of a request (strace of the TLS bench's latency rounds). That read
// cannot be skipped, even by waiting in one poller wait for the
// connection's life (which keeps
// readiness across reads): a FIN that came with the last data leaves the
// socket readable (the next read returns 0) with no readiness to come, so
// the connection would hang at its end (TestHalfClose caught it).
//
// One Read and one Write may run at a time (crypto/tls and the copy loops
// call them so): each keeps its call's state in the rawSocket, and the
// callbacks handed to the RawConn are bound once, so that a read or a write
// allocates nothing.
type rawSocket struct {
	rc  syscall.RawConn
	src net.Conn // for the addresses in errors

	rbuf   []byte
	rn     int
	rerrno syscall.Errno
	readFn func(fd uintptr) bool

	wbuf    []byte
	wn      int
	werrno  syscall.Errno
	writeFn func(fd uintptr) bool
}

func newRawSocket(c *net.TCPConn) (*rawSocket, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	s := &rawSocket{rc: rc, src: c}
	s.readFn, s.writeFn = s.read, s.write
	return s, nil
}

// Read reads once: what the socket holds, up to len(p); io.EOF at the
// peer's FIN.
func (s *rawSocket) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.rbuf, s.rn, s.rerrno = p, 0, 0
	err := s.rc.Read(s.readFn)
	n, errno := s.rn, s.rerrno
	s.rbuf = nil
	switch {
	case err != nil:
		return 0, s.opError("read", err)
	case errno != 0:
		return 0, s.opError("read", errno)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// read is Read's callback: false to wait for the socket to be readable.
func (s *rawSocket) read(fd uintptr) bool {
	p := s.rbuf
	for {
		r, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch e {
		case 0:
			s.rn = int(r)
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		default:
			s.rerrno = e
		}
		return true
	}
}

// Write writes all of p (send(2) with MSG_NOSIGNAL: a reset peer is
// EPIPE, not a signal).
func (s *rawSocket) Write(p []byte) (int, error) {
	s.wbuf, s.wn, s.werrno = p, 0, 0
	err := s.rc.Write(s.writeFn)
	n, errno := s.wn, s.werrno
	s.wbuf = nil
	switch {
	case err != nil:
		return n, s.opError("write", err)
	case errno != 0:
		return n, s.opError("write", errno)
	}
	return n, nil
}

// write is Write's callback: false to wait for the socket to be writable.
func (s *rawSocket) write(fd uintptr) bool {
	p := s.wbuf
	for s.wn < len(p) {
		r, _, e := unix.RawSyscall6(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&p[s.wn])), uintptr(len(p)-s.wn),
			unix.MSG_NOSIGNAL, 0, 0)
		switch e {
		case 0:
			s.wn += int(r)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			s.werrno = e
			return true
		}
	}
	return true
}

// opError wraps err as net.Conn methods do, so that errors.Is finds
// net.ErrClosed, deadlines and errnos in it.
func (s *rawSocket) opError(op string, err error) error {
	if errno, ok := err.(syscall.Errno); ok {
		err = os.NewSyscallError(op, errno)
	}
	return &net.OpError{Op: op, Net: "tcp", Source: s.src.LocalAddr(), Addr: s.src.RemoteAddr(), Err: err}
}
