package dns_test

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/trellis-c2c/trellis/internal/dns"
)

// startServer serves testTable on 127.0.0.1 (the test's own loopback; no
// namespace needed) until the test ends, and returns the address.
func startServer(t *testing.T, o dns.Options) (*dns.Server, string) {
	t.Helper()
	s := dns.NewServer(o)
	s.SetTable(testTable())
	if err := s.Listen("", "127.0.0.1:0"); err != nil {
		t.Fatalf("Listen = %v", err)
	}
	dns.ServeUntilCleanup(t, s)
	return s, s.Addr().String()
}

func exchange(t *testing.T, network, addr string, req *mdns.Msg) *mdns.Msg {
	t.Helper()
	c := &mdns.Client{Net: network, Timeout: 2 * time.Second}
	resp, _, err := c.Exchange(req, addr)
	if err != nil {
		t.Fatalf("%s query %v to %s: %v", network, req.Question, addr, err)
	}
	return resp
}

func TestServerUDPAndTCP(t *testing.T) {
	_, addr := startServer(t, dns.Options{})
	for _, network := range []string{"udp", "tcp"} {
		resp := exchange(t, network, addr, query("Backend.apps.internal.", mdns.TypeA))
		if resp.Rcode != mdns.RcodeSuccess || len(addrs(t, resp)) != 3 {
			t.Errorf("%s: %v, want 3 addresses", network, resp)
		}
		resp = exchange(t, network, addr, query("nope.apps.internal.", mdns.TypeA))
		if resp.Rcode != mdns.RcodeNameError {
			t.Errorf("%s: unknown name: %s, want NXDOMAIN", network, mdns.RcodeToString[resp.Rcode])
		}
		resp = exchange(t, network, addr, query("example.com.", mdns.TypeA))
		if resp.Rcode != mdns.RcodeRefused {
			t.Errorf("%s: outside name: %s, want REFUSED", network, mdns.RcodeToString[resp.Rcode])
		}
	}
}

// TestServerTruncatesUDP: a big answer over UDP comes truncated, and the
// client's retry over TCP gets all of it.
func TestServerTruncatesUDP(t *testing.T) {
	s, addr := startServer(t, dns.Options{})
	routes, instances := benchTable(1, 200)
	s.SetTable(dns.NewTable([]string{"apps.internal"}, routes, instances))
	req := query("app0000.apps.internal.", mdns.TypeA)
	resp := exchange(t, "udp", addr, req)
	if !resp.Truncated {
		t.Errorf("udp: %d answers, TC not set", len(resp.Answer))
	}
	resp = exchange(t, "tcp", addr, req)
	if resp.Truncated || len(resp.Answer) != 200 {
		t.Errorf("tcp: %d answers, TC %v; want 200", len(resp.Answer), resp.Truncated)
	}
}

// TestServerBadPackets sends junk over UDP and TCP: each gets FORMERR,
// NOTIMP or nothing, and the server keeps answering.
func TestServerBadPackets(t *testing.T) {
	_, addr := startServer(t, dns.Options{})
	good, _ := query("backend.apps.internal.", mdns.TypeA).Pack()
	withHeader := func(id uint16, flags uint16, qd, an, ns, ar uint16, rest ...byte) []byte {
		b := binary.BigEndian.AppendUint16(nil, id)
		for _, v := range []uint16{flags, qd, an, ns, ar} {
			b = binary.BigEndian.AppendUint16(b, v)
		}
		return append(b, rest...)
	}
	twoQuestions := withHeader(2, 0x0100, 2, 0, 0, 0, append(append([]byte(nil), good[12:]...), good[12:]...)...)
	for _, c := range []struct {
		what  string
		pkt   []byte
		rcode int // -1: no answer expected
	}{
		{"5 bytes", []byte{1, 2, 3, 4, 5}, -1},
		{"a bare header", withHeader(1, 0x0100, 1, 0, 0, 0), mdns.RcodeFormatError},
		{"a truncated question", good[:len(good)-3], mdns.RcodeFormatError},
		{"two questions", twoQuestions, mdns.RcodeFormatError},
		{"a response", withHeader(3, 0x8100, 1, 0, 0, 0, good[12:]...), -1},
		{"opcode UPDATE", withHeader(4, 5<<11, 1, 0, 0, 0, good[12:]...), mdns.RcodeNotImplemented},
		{"oversized", append(append([]byte(nil), good...), make([]byte, 8000)...), mdns.RcodeFormatError},
		{"a name over 255 bytes", withHeader(5, 0x0100, 1, 0, 0, 0, append([]byte(strings.Repeat("\x3f"+strings.Repeat("a", 63), 5)), 0, 0, 1, 0, 1)...), mdns.RcodeFormatError},
		{"a compression loop", withHeader(6, 0x0100, 1, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1), mdns.RcodeFormatError},
		{"65535 additional records", withHeader(7, 0x0100, 1, 0, 0, 0xffff, good[12:]...), mdns.RcodeFormatError},
	} {
		conn, err := net.Dial("udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Write(c.pkt); err != nil {
			t.Fatalf("%s: %v", c.what, err)
		}
		wait := 2 * time.Second
		if c.rcode == -1 {
			wait = 200 * time.Millisecond
		}
		conn.SetReadDeadline(time.Now().Add(wait))
		buf := make([]byte, 65535)
		n, err := conn.Read(buf)
		conn.Close()
		switch {
		case c.rcode == -1 && err == nil:
			t.Errorf("%s: answered %d bytes, want no answer", c.what, n)
		case c.rcode == -1:
		case err != nil:
			t.Errorf("%s: %v, want %s", c.what, err, mdns.RcodeToString[c.rcode])
		default:
			var resp mdns.Msg
			if err := resp.Unpack(buf[:n]); err != nil || resp.Rcode != c.rcode {
				t.Errorf("%s: answer %v (%v), want %s", c.what, resp.MsgHdr, err, mdns.RcodeToString[c.rcode])
			}
		}
	}
	// Over TCP: a length prefix longer than what follows, then silence,
	// does not keep a second connection from being answered.
	stuck, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()
	stuck.Write([]byte{0x10, 0x00, 1, 2, 3})
	resp := exchange(t, "tcp", addr, query("backend.apps.internal.", mdns.TypeA))
	if len(resp.Answer) != 3 {
		t.Errorf("tcp beside a stuck connection: %v", resp)
	}
	resp = exchange(t, "udp", addr, query("backend.apps.internal.", mdns.TypeA))
	if len(resp.Answer) != 3 {
		t.Errorf("udp after bad packets: %v", resp)
	}
}

// TestServerTCPConnectionLimit: idle TCP connections beyond the limit are
// closed, and UDP is never affected.
func TestServerTCPConnectionLimit(t *testing.T) {
	_, addr := startServer(t, dns.Options{})
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 300 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// The connection past the limit is closed by the server.
	last := conns[len(conns)-1]
	last.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := last.Read(make([]byte, 1)); err == nil || errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		t.Errorf("connection 300 of 300: read = %v, want closed by the server", err)
	}
	resp := exchange(t, "udp", addr, query("backend.apps.internal.", mdns.TypeA))
	if len(resp.Answer) != 3 {
		t.Errorf("udp with the TCP side full: %v", resp)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestServerSlowUpstream: while queries are stuck forwarding to an
// upstream that never answers, internal names answer at once.
func TestServerSlowUpstream(t *testing.T) {
	_, addr := startServer(t, dns.Options{Upstreams: []string{silent(t)}, UpstreamTimeout: 3 * time.Second})
	for range 50 {
		conn, err := net.Dial("udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		b, _ := query("example.com.", mdns.TypeA).Pack()
		conn.Write(b)
	}
	start := time.Now()
	resp := exchange(t, "udp", addr, query("backend.apps.internal.", mdns.TypeA))
	if len(resp.Answer) != 3 {
		t.Errorf("internal name while forwarding stalls: %v", resp)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("internal name took %v while forwards stall", d)
	}
}

func TestServerListenErrors(t *testing.T) {
	s := dns.NewServer(dns.Options{})
	if err := s.Serve(context.Background()); err == nil {
		t.Error("Serve before Listen = nil, want an error")
	}
	if err := s.Listen("", "not an address"); err == nil {
		t.Error(`Listen("not an address") = nil, want an error`)
	}
	if err := s.Listen("", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	if err := s.Listen("", "127.0.0.1:0"); err == nil {
		t.Error("second Listen = nil, want an error")
	}
	other := dns.NewServer(dns.Options{})
	if err := other.Listen("", s.Addr().String()); err == nil {
		t.Errorf("Listen on %s, taken = nil, want an error", s.Addr())
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Serve(ctx); err != nil {
		t.Errorf("Serve(cancelled) = %v, want nil", err)
	}
}
