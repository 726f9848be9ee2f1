package dns

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
	"golang.org/x/net/ipv4"
)

// DefaultAddr is where containers find the cell's DNS server, as in Cloud
// Foundry (silk-cni's dns_servers on Jammy stemcells).
var DefaultAddr = netip.MustParseAddr("169.254.0.2")

const (
	// maxTCPConns bounds the TCP connections served at once; more are
	// closed as they are accepted, so that idle or slow clients cannot
	// exhaust the server (UDP is never affected).
	maxTCPConns = 256
	// readSize is the largest query taken over UDP; a longer datagram is
	// answered FORMERR.
	readSize = 4096
	// udpBatch is how many datagrams one system call reads or writes.
	udpBatch = 32
)

// Server serves a Handler on UDP and TCP sockets in a network namespace.
// Over UDP it answers the common query itself, from wire bytes to wire
// bytes without allocating (see fastAnswer), and reads and writes in
// batches; everything else, and TCP, goes through Handler. SetTable,
// Table and ServeDNS are the Handler's.
type Server struct {
	*Handler

	// now is the fast path's clock for the latency metric (time.Now; a
	// test's fake clock shows whose time each query is charged).
	now func() time.Time

	mu  sync.Mutex
	udp *net.UDPConn
	tcp net.Listener
}

// NewServer returns a server with an empty table; set one with SetTable.
func NewServer(o Options) *Server { return &Server{Handler: NewHandler(o), now: time.Now} }

// Listen opens a UDP and a TCP socket on addr ("169.254.0.2:53") inside
// the network namespace at nsPath ("" for the calling process's own), so
// that Serve can run on ordinary goroutines. With port 0 both sockets get
// the same free port. The address must exist in the namespace: see
// AddAddress.
func (s *Server) Listen(nsPath, addr string) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return fmt.Errorf("dns listen address: %w", err)
	}
	var udp *net.UDPConn
	var tcp net.Listener
	err = inNamespace(nsPath, func() error {
		for try := 0; ; try++ {
			udp, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
			if err != nil {
				return err
			}
			at := ap
			if ap.Port() == 0 {
				at = udp.LocalAddr().(*net.UDPAddr).AddrPort()
			}
			tcp, err = net.ListenTCP("tcp", net.TCPAddrFromAddrPort(at))
			if err == nil {
				return nil
			}
			udp.Close()
			if ap.Port() != 0 || try == 10 {
				return err
			}
		}
	})
	if err != nil {
		return fmt.Errorf("dns listen on %s in %s: %w", addr, nsName(nsPath), err)
	}
	// Room for bursts: answers take microseconds, but a scheduler hiccup
	// must not drop queries.
	udp.SetReadBuffer(4 << 20)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.udp != nil {
		udp.Close()
		tcp.Close()
		return errors.New("dns server is already listening")
	}
	s.udp, s.tcp = udp, tcp
	return nil
}

func nsName(path string) string {
	if path == "" {
		return "the own namespace"
	}
	return path
}

// Addr returns the address the server listens on (UDP and TCP alike), or
// the zero value before Listen.
func (s *Server) Addr() netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.udp == nil {
		return netip.AddrPort{}
	}
	return s.udp.LocalAddr().(*net.UDPAddr).AddrPort()
}

// Serve answers queries on the sockets Listen opened until ctx is done,
// then closes them; a Server serves once. It returns nil after ctx is
// done, or the error that stopped the TCP side (UDP read errors are
// logged and skipped).
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	udp, tcp := s.udp, s.tcp
	s.mu.Unlock()
	if udp == nil {
		return errors.New("dns serve: not listening")
	}
	srv := &mdns.Server{
		Listener:       &limitListener{Listener: tcp, sem: make(chan struct{}, maxTCPConns)},
		Handler:        s.Handler,
		ReadTimeout:    2 * time.Second,
		IdleTimeout:    func() time.Duration { return 8 * time.Second },
		MsgAcceptFunc:  s.accept,
		MsgInvalidFunc: s.invalid,
	}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	errc := make(chan error, 2)
	go func() { errc <- srv.ActivateAndServe() }()
	select {
	case <-started:
	case err := <-errc:
		udp.Close()
		return fmt.Errorf("dns serve tcp: %w", err)
	}
	var workers sync.WaitGroup
	for range max(2, runtime.GOMAXPROCS(0)) {
		workers.Go(func() { s.serveUDP(udp) })
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		err = fmt.Errorf("dns serve tcp: %w", err)
	}
	udp.Close()
	workers.Wait()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	srv.ShutdownContext(sctx)
	cancel()
	return err
}

// serveUDP reads queries from conn until it is closed, up to udpBatch at
// a time (recvmmsg), and sends the answers the same way (sendmmsg). The
// common query is answered right here by the fast path; the rest by
// Handler on a goroutine of its own, so that a query being forwarded never
// holds up the others. A fast-path query's latency is the time to build
// its own answer, as Handler's is: not the time the queries before it in
// the batch took.
func (s *Server) serveUDP(conn *net.UDPConn) {
	pc := ipv4.NewPacketConn(conn)
	in := make([]ipv4.Message, udpBatch)
	out := make([]ipv4.Message, udpBatch)
	outBufs := make([][]byte, udpBatch)
	for i := range in {
		in[i].Buffers = [][]byte{make([]byte, readSize+1)}
		out[i].Buffers = make([][]byte, 1)
		outBufs[i] = make([]byte, 0, MaxUDPSize)
	}
	var sc scratch
	for {
		n, err := pc.ReadBatch(in, 0)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			s.log.Debug("dns: read udp", "err", err)
			time.Sleep(time.Millisecond) // not a busy loop if it persists
			continue
		}
		k := 0
		for _, m := range in[:n] {
			from, ok := m.Addr.(*net.UDPAddr)
			if !ok {
				continue
			}
			pkt := m.Buffers[0][:m.N]
			start := s.now()
			resp, qtype, rcode, ok := s.fastAnswer(pkt, outBufs[k][:0], &sc)
			if !ok {
				go s.slowUDP(conn, bytes.Clone(pkt), from.AddrPort())
				continue
			}
			out[k].Buffers[0], out[k].Addr = resp, from
			k++
			s.m.query(typeName(qtype), rcodeLabel(rcode), "trellis", s.now().Sub(start))
		}
		for sent := 0; sent < k; {
			m, err := pc.WriteBatch(out[sent:k], 0)
			if err != nil {
				// The rest of the batch is lost, as a datagram may be;
				// the clients retry.
				s.log.Debug("dns: write udp", "err", err)
				break
			}
			sent += m
		}
	}
}

// slowUDP answers pkt from Handler as miekg/dns's server would: a message
// too short for a header is dropped, one that fails the header checks
// (accept) or does not parse gets FORMERR or NOTIMP with its ID, and a
// query longer than readSize gets FORMERR.
func (s *Server) slowUDP(conn *net.UDPConn, pkt []byte, from netip.AddrPort) {
	if len(pkt) < 12 {
		s.invalid(pkt, mdns.ErrShortRead)
		return
	}
	dh := mdns.Header{Id: binary.BigEndian.Uint16(pkt), Bits: binary.BigEndian.Uint16(pkt[2:]),
		Qdcount: binary.BigEndian.Uint16(pkt[4:]), Ancount: binary.BigEndian.Uint16(pkt[6:]),
		Nscount: binary.BigEndian.Uint16(pkt[8:]), Arcount: binary.BigEndian.Uint16(pkt[10:])}
	w := &udpWriter{conn: conn, to: from}
	fail := func(rcode int) {
		resp := make([]byte, 12)
		binary.BigEndian.PutUint16(resp, dh.Id)
		binary.BigEndian.PutUint16(resp[2:], flagQR|dh.Bits&(0xF<<11)|uint16(rcode))
		w.Write(resp)
	}
	switch s.accept(dh) {
	case mdns.MsgIgnore:
		return
	case mdns.MsgReject:
		fail(mdns.RcodeFormatError)
		return
	case mdns.MsgRejectNotImplemented:
		fail(mdns.RcodeNotImplemented)
		return
	}
	req := new(mdns.Msg)
	if len(pkt) > readSize {
		s.invalid(pkt, errors.New("query too long"))
		fail(mdns.RcodeFormatError)
		return
	}
	if err := req.Unpack(pkt); err != nil {
		s.invalid(pkt, err)
		fail(mdns.RcodeFormatError)
		return
	}
	s.Handler.ServeDNS(w, req)
}

// udpWriter is the ResponseWriter of a query that came over UDP.
type udpWriter struct {
	conn *net.UDPConn
	to   netip.AddrPort
}

func (w *udpWriter) LocalAddr() net.Addr  { return w.conn.LocalAddr() }
func (w *udpWriter) RemoteAddr() net.Addr { return net.UDPAddrFromAddrPort(w.to) }
func (w *udpWriter) WriteMsg(m *mdns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}
func (w *udpWriter) Write(b []byte) (int, error) { return w.conn.WriteToUDPAddrPort(b, w.to) }
func (w *udpWriter) Close() error                { return nil }
func (w *udpWriter) TsigStatus() error           { return nil }
func (w *udpWriter) TsigTimersOnly(bool)         {}
func (w *udpWriter) Hijack()                     {}

// ListenAndServe is Listen then Serve.
func (s *Server) ListenAndServe(ctx context.Context, nsPath, addr string) error {
	if err := s.Listen(nsPath, addr); err != nil {
		return err
	}
	return s.Serve(ctx)
}

// accept checks a message's header before it is parsed: responses are
// dropped (answering them invites loops and reflection), other opcodes
// than QUERY get NOTIMP, and a query without exactly one question, with
// answer or authority records, or with more additional records than an
// OPT and a TSIG gets FORMERR.
func (s *Server) accept(dh mdns.Header) mdns.MsgAcceptAction {
	action := mdns.MsgAccept
	switch {
	case dh.Bits&(1<<15) != 0: // QR
		action = mdns.MsgIgnore
	case int(dh.Bits>>11)&0xF != mdns.OpcodeQuery:
		action = mdns.MsgRejectNotImplemented
	case dh.Qdcount != 1 || dh.Ancount != 0 || dh.Nscount != 0 || dh.Arcount > 2:
		action = mdns.MsgReject
	}
	switch action {
	case mdns.MsgIgnore:
		s.m.query("none", "dropped", "trellis", 0)
	case mdns.MsgRejectNotImplemented:
		s.m.query("none", "NOTIMP", "trellis", 0)
	case mdns.MsgReject:
		s.m.query("none", "FORMERR", "trellis", 0)
	}
	return action
}

// invalid counts a message that could not be parsed. miekg/dns answers
// FORMERR when the header was readable, and drops it otherwise.
func (s *Server) invalid(m []byte, err error) {
	rcode := "FORMERR"
	if len(m) < 12 {
		rcode = "dropped"
	}
	s.m.query("none", rcode, "trellis", 0)
}

// limitListener accepts at most cap(sem) connections at once and closes
// the ones beyond.
type limitListener struct {
	net.Listener
	sem chan struct{}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.sem <- struct{}{}:
			return &limitConn{Conn: c, release: sync.OnceFunc(func() { <-l.sem })}, nil
		default:
			c.Close()
		}
	}
}

type limitConn struct {
	net.Conn
	release func()
}

func (c *limitConn) Close() error {
	c.release()
	return c.Conn.Close()
}
