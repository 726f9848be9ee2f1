package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Handshake results, the values of trellis_proxy_handshakes_total{result}.
const (
	resultOK            = "ok"
	resultBusy          = "busy"           // beyond MaxHandshakes(PerInstance): closed at once
	resultNotTLS        = "not_tls"        // plaintext or garbage
	resultUnknownName   = "unknown_name"   // SNI not in the certificate
	resultNoCertificate = "no_certificate" // none, or not valid now
	resultClientRefused = "client_refused" // client certificate missing, untrusted or not authorized
	resultTimeout       = "timeout"        // not finished within HandshakeTimeout
	resultClientAlert   = "client_alert"   // the client gave up with an alert (it did not trust us?)
	resultAborted       = "aborted"        // the client went away
	resultFailed        = "failed"         // anything else (versions, ciphers, malformed messages)
	alertUnexpectedMsg  = 10               // TLS alert description unexpected_message
	lingerMax           = 1 * time.Second  // how long a refused client may take to read its alert
	lingerBytes         = 64 << 10         // and how much it may still send meanwhile
	bufSize             = 64 << 10         // four TLS records' worth of plaintext
)

// refusal is why a handshake was refused by one of the Server's checks.
type refusal struct {
	result  string
	reason  string
	peerApp string
}

func (r *refusal) Error() string { return r.reason }

// conn is a client's connection. It wraps the accepted TCP connection so
// that the TLS callbacks (which see it as ClientHelloInfo.Conn) know the
// instance and can leave the reason of a refusal.
type conn struct {
	*net.TCPConn
	raw     *rawSocket // the TCPConn's reads and writes
	in      *instance
	peer    netip.AddrPort
	refused *refusal // set by configFor
	st      *served  // the settings of its handshake, set by configFor
	tls     *tls.Conn

	// wmu guards batching and wbuf: while the proxy writes a buffer of the
	// app's bytes through the TLS connection, the records crypto/tls makes
	// are gathered and sent in one write (one system call, and one GSO
	// segment train, per buffer rather than per 16 KiB record). Records
	// written meanwhile for the other direction (alerts) queue behind
	// them, so the wire carries them in the order crypto/tls made them.
	wmu      sync.Mutex
	batching bool
	wbuf     *[]byte

	app      *net.TCPConn // guarded by in.mu
	ready    bool         // handshake done; guarded by in.mu
	closed   bool         // aborted: a dialled app connection is closed at once; guarded by in.mu
	rechecks atomic.Bool  // refused by a recheck already
}

// accept runs the instance's accept loop until its listener is closed.
func (in *instance) accept() {
	defer in.wg.Done()
	var delay time.Duration
	for {
		c, err := in.ln.AcceptTCP()
		if err != nil {
			select {
			case <-in.done:
				return
			default:
			}
			// EMFILE and the like: back off as net/http does, and retry.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			in.s.log.Warn("accept", "instance", in.id, "err", err, "retry_in", delay)
			t := time.NewTimer(delay)
			select {
			case <-in.done:
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		delay = 0
		in.admit(c)
	}
}

// admit starts serving c, or closes it at once when too many handshakes are
// in progress.
func (in *instance) admit(raw *net.TCPConn) {
	s := in.s
	c := &conn{TCPConn: raw, in: in, peer: addrPort(raw.RemoteAddr())}
	var err error
	if c.raw, err = newRawSocket(raw); err != nil {
		raw.Close()
		return
	}
	if why := s.acquire(in); why != "" {
		s.m.result(resultBusy)
		raw.Close()
		s.refuse(c, &refusal{result: resultBusy, reason: why})
		return
	}
	in.mu.Lock()
	if in.closed {
		in.mu.Unlock()
		s.release(in)
		raw.Close()
		return
	}
	in.conns[c] = struct{}{}
	if in.m == nil {
		in.m = s.m.instance(in.id)
	}
	in.wg.Add(1)
	in.mu.Unlock()
	go c.serve()
}

// acquire takes a handshake slot of the instance and of the cell, or says
// why it cannot.
func (s *Server) acquire(in *instance) string {
	if n := in.handshakes.Add(1); int(n) > s.cfg.MaxHandshakesPerInstance {
		in.handshakes.Add(-1)
		return fmt.Sprintf("too many TLS handshakes in progress for this instance (limit %d)", s.cfg.MaxHandshakesPerInstance)
	}
	if n := s.handshakes.Add(1); int(n) > s.cfg.MaxHandshakes {
		s.handshakes.Add(-1)
		in.handshakes.Add(-1)
		return fmt.Sprintf("too many TLS handshakes in progress on this cell (limit %d)", s.cfg.MaxHandshakes)
	}
	s.m.inProgress.Inc()
	return ""
}

func (s *Server) release(in *instance) {
	in.handshakes.Add(-1)
	s.handshakes.Add(-1)
	s.m.inProgress.Dec()
}

// serve handshakes with the client, dials the app and forwards.
func (c *conn) serve() {
	in, s := c.in, c.in.s
	defer in.wg.Done()
	defer c.forget()
	start := time.Now()
	c.SetDeadline(start.Add(s.cfg.HandshakeTimeout))
	c.tls = tls.Server(c, s.base)
	err := c.tls.Handshake()
	s.release(in)
	if err != nil {
		c.failed(err)
		return
	}
	s.m.result(resultOK)
	s.m.handshakeSeconds.Observe(time.Since(start).Seconds())
	c.SetDeadline(time.Time{})
	in.mu.Lock()
	c.ready = true
	in.mu.Unlock()
	if st := in.state.Load(); st != c.st {
		// Set ran during the handshake, which used the settings before.
		if !c.recheck(st) {
			return
		}
	}

	app, err := c.dial()
	if err != nil {
		if errors.Is(err, errStuck) {
			// This goroutine's thread is stuck in the app's namespace: end
			// it (the runtime then discards the thread) without running
			// anything else on it.
			c.abort()
			return
		}
		s.m.connection(connAppUnreachable)
		s.log.Debug("app unreachable", "instance", in.id, "app", c.st.app, "peer", c.peer, "err", err)
		// A clean end: close_notify and FIN, as if the app had closed.
		c.SetDeadline(time.Now().Add(lingerMax))
		c.tls.CloseWrite()
		c.linger()
		return
	}
	s.m.connection(connForwarded)
	c.forward(app)
}

// recheck closes c and reports false if its client does not pass st's
// client certificate requirement (c was admitted under other settings).
func (c *conn) recheck(st *served) bool {
	r := c.allowed(st)
	if r == nil {
		return true
	}
	if !c.rechecks.Swap(true) {
		r.reason = "open connection closed: " + r.reason
		c.in.s.m.connection(connRefusedBySet)
		c.in.s.refuse(c, r)
	}
	c.abort()
	return false
}

// allowed checks the client of an established connection against st.
func (c *conn) allowed(st *served) *refusal {
	if !st.inst.RequireClientCert {
		return nil
	}
	peers := c.tls.ConnectionState().PeerCertificates
	if len(peers) == 0 {
		return &refusal{result: resultClientRefused, reason: "no client certificate"}
	}
	opts := x509.VerifyOptions{Roots: st.inst.ClientCAs, Intermediates: x509.NewCertPool(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	for _, ic := range peers[1:] {
		opts.Intermediates.AddCert(ic)
	}
	if _, err := peers[0].Verify(opts); err != nil {
		return &refusal{result: resultClientRefused, reason: "client certificate not trusted: " + err.Error()}
	}
	if err := st.inst.Authorize(peers[0]); err != nil {
		return &refusal{result: resultClientRefused, reason: err.Error(), peerApp: appOf(peers[0])}
	}
	return nil
}

// recheck closes the open connections whose client does not pass st, the
// settings Set just stored.
func (in *instance) recheck(st *served) {
	if !st.inst.RequireClientCert {
		return
	}
	in.mu.Lock()
	var conns []*conn
	for c := range in.conns {
		if c.ready {
			conns = append(conns, c)
		}
	}
	in.mu.Unlock()
	for _, c := range conns {
		c.recheck(st)
	}
}

// configFor runs at every ClientHello, before anything is shown to the
// client, resumption included: it checks the instance's certificate and the
// SNI and picks the instance's configuration.
func (s *Server) configFor(hello *tls.ClientHelloInfo) (*tls.Config, error) {
	c := hello.Conn.(*conn)
	st := c.in.state.Load()
	c.st = st
	if st.cert == nil {
		c.refused = &refusal{result: resultNoCertificate, reason: "the instance has no certificate yet"}
		return nil, c.refused
	}
	if now := time.Now(); !validNow(st.leaf, now) {
		reason := "the instance's certificate expired at " + st.leaf.NotAfter.UTC().Format(time.RFC3339)
		if now.Before(st.leaf.NotBefore) {
			reason = "the instance's certificate is not valid before " + st.leaf.NotBefore.UTC().Format(time.RFC3339)
		}
		if !st.warned.Swap(true) {
			s.log.Warn("refusing handshakes: "+reason, "instance", c.in.id, "serial", serial(st.leaf))
		}
		c.refused = &refusal{result: resultNoCertificate, reason: reason}
		return nil, c.refused
	}
	if name := strings.TrimSuffix(hello.ServerName, "."); name != "" && !hasName(st.leaf, name) {
		c.refused = &refusal{result: resultUnknownName, reason: fmt.Sprintf("server name %q is not one of the instance certificate's names", name)}
		// No certificate to pick from: crypto/tls answers unrecognized_name.
		return s.noCert, nil
	}
	return st.config, nil
}

// hasName reports whether name is one of leaf's DNS names, whatever the case.
func hasName(leaf *x509.Certificate, name string) bool {
	for _, n := range leaf.DNSNames {
		if strings.EqualFold(n, name) {
			return true
		}
	}
	return false
}

// failed ends a connection whose handshake failed: it counts and reports
// why, sends a non-TLS client an alert, and closes.
func (c *conn) failed(err error) {
	s := c.in.s
	r := c.refused
	var ref *refusal
	var rhe tls.RecordHeaderError
	var cve *tls.CertificateVerificationError
	var ne net.Error
	var ope *net.OpError
	switch {
	case r != nil:
	case errors.As(err, &ref):
		r = ref
	case errors.As(err, &rhe) && rhe.Conn != nil:
		// crypto/tls sends nothing when the first bytes are not TLS.
		r = &refusal{result: resultNotTLS, reason: "not a TLS handshake (plaintext?)"}
		c.SetWriteDeadline(time.Now().Add(lingerMax))
		c.Write([]byte{21, 3, 1, 0, 2, 2, alertUnexpectedMsg}) // alert, TLS 1.0 record, fatal
	case errors.As(err, &cve):
		r = &refusal{result: resultClientRefused, reason: "client certificate not trusted: " + cve.Err.Error()}
	case errors.As(err, &ne) && ne.Timeout():
		s.m.result(resultTimeout)
		s.log.Debug("handshake timed out", "instance", c.in.id, "peer", c.peer, "timeout", s.cfg.HandshakeTimeout)
		c.Close()
		return
	case errors.As(err, &ope) && ope.Op == "remote error":
		s.m.result(resultClientAlert)
		s.log.Debug("client ended the handshake", "instance", c.in.id, "peer", c.peer, "err", err)
		c.Close()
		return
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || isReset(err):
		s.m.result(resultAborted)
		c.Close()
		return
	default:
		r = &refusal{result: resultFailed, reason: "handshake failed: " + err.Error()}
	}
	s.m.result(r.result)
	s.refuse(c, r)
	c.linger()
}

// refuse logs a refusal and tells OnRefused.
func (s *Server) refuse(c *conn, r *refusal) {
	s.log.Debug("connection refused", "instance", c.in.id, "peer", c.peer, "peer_app", r.peerApp, "reason", r.reason)
	if s.cfg.OnRefused != nil {
		s.cfg.OnRefused(Refusal{Instance: c.in.id, Peer: c.peer, PeerApp: r.peerApp, Reason: r.reason})
	}
}

// linger closes the connection after the alert was sent so that the client
// reads it: FIN, then read and drop what the client still sends, briefly,
// before the close (closing with unread data would send a reset, which can
// destroy the alert in the client's receive queue).
func (c *conn) linger() {
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(min(lingerMax, c.in.s.cfg.HandshakeTimeout)))
	io.CopyN(io.Discard, c.TCPConn, lingerBytes)
	c.Close()
}

// abort closes both sides at once (Remove, an error, the idle timeout).
func (c *conn) abort() {
	c.TCPConn.Close()
	c.in.mu.Lock()
	c.closed = true
	app := c.app
	c.in.mu.Unlock()
	if app != nil {
		app.Close()
	}
}

// forget closes c and drops it from its instance.
func (c *conn) forget() {
	c.abort()
	c.in.mu.Lock()
	delete(c.in.conns, c)
	c.in.mu.Unlock()
}

// forward copies both ways between the client and the app until both
// directions ended, or one failed. A direction that ends cleanly (EOF)
// half-closes its destination (close_notify and FIN to the client, FIN to
// the app), so request-then-shutdown clients get their whole answer.
func (c *conn) forward(app *net.TCPConn) {
	in := c.in
	m := in.m
	m.active.Inc()
	defer m.active.Dec()
	var idle *idleTimer
	if t := in.s.cfg.IdleTimeout; t > 0 {
		idle = newIdleTimer(t, func() {
			in.s.m.connection(connIdle)
			c.abort()
		})
		defer idle.stop()
	}
	appRaw, err := newRawSocket(app)
	if err != nil {
		c.abort()
		return
	}
	var wg sync.WaitGroup
	wg.Add(1)
	in.wg.Add(1)
	go func() {
		defer in.wg.Done()
		defer wg.Done()
		if err := pipe(appRaw, c.tls, m.toApp, idle); err != nil {
			c.abort()
			return
		}
		app.CloseWrite()
	}()
	if err := pipe(tlsWriter{c}, appRaw, m.fromApp, idle); err != nil {
		c.abort()
	} else {
		c.tls.CloseWrite()
		c.CloseWrite()
	}
	wg.Wait()
}

// Read is what crypto/tls reads records with.
func (c *conn) Read(p []byte) (int, error) { return c.raw.Read(p) }

// Write is what crypto/tls writes records with.
func (c *conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.batching {
		*c.wbuf = append(*c.wbuf, p...)
		return len(p), nil
	}
	return c.raw.Write(p)
}

// tlsWriter writes the app's bytes to the client, a buffer at a time.
type tlsWriter struct{ c *conn }

func (w tlsWriter) Write(p []byte) (int, error) {
	c := w.c
	c.wmu.Lock()
	c.batching = true
	c.wbuf = wbufs.Get().(*[]byte)
	c.wmu.Unlock()
	n, err := c.tls.Write(p)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.batching = false
	out := c.wbuf
	c.wbuf = nil
	if len(*out) > 0 {
		if _, werr := c.raw.Write(*out); werr != nil && err == nil {
			err = werr
		}
	}
	*out = (*out)[:0]
	wbufs.Put(out)
	return n, err
}

// wbufs hold the records of one buffer: its bytes, and a record header
// and tag per 16 KiB.
var wbufs = sync.Pool{New: func() any { b := make([]byte, 0, bufSize+bufSize/256); return &b }}

// bufs are the copy buffers, shared by all connections.
var bufs = sync.Pool{New: func() any { return new([bufSize]byte) }}

// counter counts bytes (a prometheus.Counter).
type counter interface{ Add(float64) }

// pipe copies from src to dst until src ends: nil at EOF, else the error.
func pipe(dst io.Writer, src io.Reader, n counter, idle *idleTimer) error {
	buf := bufs.Get().(*[bufSize]byte)
	defer bufs.Put(buf)
	for {
		nr, rerr := src.Read(buf[:])
		if nr > 0 {
			if _, err := dst.Write(buf[:nr]); err != nil {
				return err
			}
			n.Add(float64(nr))
			idle.touch()
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// addrPort is a TCP address as a netip.AddrPort.
func addrPort(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		ap := t.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// isReset reports whether err is the client resetting the connection.
func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
