package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func TestRawSocket(t *testing.T) {
	a, b := tcpPair(t)
	ra, err := newRawSocket(a)
	if err != nil {
		t.Fatal(err)
	}
	// A write bigger than the socket buffers completes: the writer waits
	// in the poller while the reader drains.
	big := make([]byte, 8<<20)
	for i := range big {
		big[i] = byte(i)
	}
	done := make(chan error, 1)
	go func() {
		n, err := ra.Write(big)
		if err == nil && n != len(big) {
			err = io.ErrShortWrite
		}
		done <- err
	}()
	got, err := io.ReadAll(io.LimitReader(b, int64(len(big))))
	if err != nil || len(got) != len(big) || string(got[len(got)-100:]) != string(big[len(big)-100:]) {
		t.Fatalf("read %d bytes, %v; want the %d written", len(got), err, len(big))
	}
	if err := <-done; err != nil {
		t.Fatalf("Write(8 MiB) = %v", err)
	}

	// Reads: what is there, then io.EOF at the peer's FIN.
	b.Write([]byte("hello"))
	b.CloseWrite()
	buf := make([]byte, 64)
	if n, err := ra.Read(buf); err != nil || string(buf[:n]) != "hello" {
		t.Errorf("Read = %q, %v; want hello", buf[:n], err)
	}
	if n, err := ra.Read(buf); n != 0 || err != io.EOF {
		t.Errorf("Read at FIN = %d, %v; want 0, io.EOF", n, err)
	}

	// A deadline is a timeout error, as with net.Conn.
	c, d := tcpPair(t)
	rc, _ := newRawSocket(c)
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	var ne net.Error
	if _, err := rc.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("Read past the deadline = %v, want a timeout", err)
	}
	c.SetReadDeadline(time.Time{})

	// A reset peer: EPIPE or ECONNRESET, and no signal.
	d.SetLinger(0)
	d.Close()
	time.Sleep(20 * time.Millisecond)
	var werr error
	for range 3 {
		if _, werr = rc.Write([]byte("to a reset peer")); werr != nil {
			break
		}
	}
	if !isReset(werr) {
		t.Errorf("Write to a reset peer = %v, want EPIPE or ECONNRESET", werr)
	}

	// A closed socket: net.ErrClosed.
	c.Close()
	if _, err := rc.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close = %v, want net.ErrClosed", err)
	}
	if _, err := rc.Write(buf); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close = %v, want net.ErrClosed", err)
	}
}

// TestRawSocketAllocs: a read or a write allocates nothing (it is on every
// request's path).
func TestRawSocketAllocs(t *testing.T) {
	a, b := tcpPair(t)
	ra, _ := newRawSocket(a)
	rb, _ := newRawSocket(b)
	buf := make([]byte, 64)
	if n := testing.AllocsPerRun(100, func() {
		ra.Write(buf)
		rb.Read(buf)
	}); n != 0 {
		t.Errorf("allocations per write and read = %v, want 0", n)
	}
}
