package proxy

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-c2c/trellis/internal/identity"
)

// Port is where the Server listens in every instance's namespace, the port
// Cloud Foundry reserves for container-to-container TLS.
const Port = 61443

// Defaults of Config and Instance.
const (
	DefaultAppPort                  = 8080
	DefaultHandshakeTimeout         = 5 * time.Second
	DefaultMaxHandshakes            = 256
	DefaultMaxHandshakesPerInstance = 64
	// DefaultDialTimeout bounds the connect to the app. The app is in the
	// same namespace: a connect succeeds or is refused at once, unless the
	// app's accept queue is full and the kernel drops the SYN; 2 s lets one
	// SYN retransmission (after 1 s) through, where Envoy's 250 ms would
	// turn a short burst into failures.
	DefaultDialTimeout = 2 * time.Second
)

// Config configures a Server. Zero values mean the defaults.
type Config struct {
	// Logger receives the Server's logs; nil discards them. Refused
	// handshakes are logged at debug level (OnRefused reports them).
	Logger *slog.Logger
	// Registerer receives the trellis_proxy_* metrics; nil means none.
	// Servers sharing a Registerer share the metrics.
	Registerer prometheus.Registerer
	// HandshakeTimeout bounds a TLS handshake from accept to finish.
	HandshakeTimeout time.Duration
	// MaxHandshakes bounds the handshakes in progress for the whole cell.
	MaxHandshakes int
	// MaxHandshakesPerInstance bounds the handshakes in progress for one
	// instance, so that a flood on one instance leaves room for the others.
	MaxHandshakesPerInstance int
	// DialTimeout bounds the connect to the app.
	DialTimeout time.Duration
	// IdleTimeout closes a connection that carried no byte in either
	// direction for this long; zero means never (TCP keepalive still finds
	// dead clients).
	IdleTimeout time.Duration
	// OnRefused, if set, hears of every connection the Server refuses: a
	// failed check, a non-TLS client, a handshake beyond the limits, or an
	// open connection whose client no longer passes after Set. It is called
	// on the connection's (or the accept loop's) goroutine and must return
	// quickly; it must not call the Server's methods.
	OnRefused func(Refusal)
}

// Refusal says which connection the Server refused and why.
type Refusal struct {
	Instance string         // the instance's ID
	Peer     netip.AddrPort // the client's address
	// PeerApp is the app GUID of the client's certificate (OU app:GUID)
	// when it presented one that verified; "" otherwise.
	PeerApp string
	// Reason says why, for people: "no client certificate", "client
	// certificate of app … is not allowed …" (Authorize's error), ….
	Reason string
}

// Instance is what the Server needs to serve one app instance.
type Instance struct {
	// ID names the instance (its GUID) in metrics, logs and refusals.
	ID string
	// NetNS is the path of the instance's network namespace
	// (/run/netns/NAME or /proc/PID/ns/net).
	NetNS string
	// IP is the instance's (IPv4 overlay) address, where the app is dialled.
	IP netip.Addr
	// AppPort is the app's plaintext port; 0 means DefaultAppPort.
	AppPort int
	// RequireClientCert makes the handshake demand a client certificate
	// that verifies against ClientCAs and that Authorize accepts.
	RequireClientCert bool
	// ClientCAs verify client certificates; required with RequireClientCert.
	ClientCAs *x509.CertPool
	// Authorize decides, for a client certificate that verified, whether
	// its holder may connect: nil means yes; an error refuses the handshake
	// and its text becomes the Refusal's Reason. Required with
	// RequireClientCert. It runs at every handshake and must return quickly.
	Authorize func(peer *x509.Certificate) error
}

// Server terminates TLS on Port inside instances' network namespaces and
// forwards the plaintext to the apps. Its methods are safe for concurrent
// use.
type Server struct {
	cfg Config
	log *slog.Logger
	m   *metrics

	base   *tls.Config // its GetConfigForClient picks an instance's config
	noCert *tls.Config // no certificate at all: unrecognized_name

	home    *os.File // the namespace the Server was made in (threads return there)
	homeID  nsID
	homeErr error // why home could not be opened

	handshakes atomic.Int32 // in progress, whole cell

	mu        sync.Mutex
	instances map[string]*instance
	closed    bool
}

// New returns a Server that serves no instance yet.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.MaxHandshakes <= 0 {
		cfg.MaxHandshakes = DefaultMaxHandshakes
	}
	if cfg.MaxHandshakesPerInstance <= 0 {
		cfg.MaxHandshakesPerInstance = DefaultMaxHandshakesPerInstance
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.IdleTimeout < 0 {
		cfg.IdleTimeout = 0
	}
	s := &Server{cfg: cfg, log: cfg.Logger, m: newMetrics(cfg.Registerer), instances: map[string]*instance{}}
	s.base = baseConfig()
	s.base.GetConfigForClient = s.configFor
	s.noCert = baseConfig()
	s.home, s.homeID, s.homeErr = openHome()
	return s
}

// instance is one served instance: its listener in the instance's
// namespace and its connections. A Set that moves the instance to another
// namespace makes a new one.
type instance struct {
	s    *Server
	id   string
	ns   *os.File // the instance's namespace, held: dials go there
	nsID nsID
	ln   *net.TCPListener

	state      atomic.Pointer[served]
	handshakes atomic.Int32  // in progress
	done       chan struct{} // closed by stop
	wg         sync.WaitGroup

	mu     sync.Mutex
	closed bool
	conns  map[*conn]struct{}
	m      *instanceMetrics // made with the first connection
}

// served is an instance's settings and certificate, replaced whole by Set.
type served struct {
	inst   Instance
	app    netip.AddrPort // where the app is dialled
	cert   *tls.Certificate
	leaf   *x509.Certificate
	config *tls.Config // nil without a certificate
	warned atomic.Bool // "not valid now" was logged
}

// Serving reports whether the Server serves the instance id.
func (s *Server) Serving(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.instances[id]
	return ok
}

// Set serves inst with cert, or updates a served instance. The first Set
// of an ID opens the listener in inst.NetNS (it fails if anything there
// holds Port); a Set that names another namespace opens the new listener,
// then closes the old one with its connections. A Set in the same
// namespace changes the certificate and settings for new handshakes at
// once, keeps open connections, and closes those whose client no longer
// passes RequireClientCert (each reported to OnRefused).
//
// A nil cert keeps the instance's current certificate; an instance that has
// none yet holds Port and refuses handshakes until one is Set. A
// certificate that is not valid at handshake time is never served.
func (s *Server) Set(inst Instance, cert *tls.Certificate) (err error) {
	if err := checkInstance(&inst); err != nil {
		return fmt.Errorf("serve instance %q: %w", inst.ID, err)
	}
	var leaf *x509.Certificate
	if cert != nil {
		if leaf, err = checkCertificate(cert); err != nil {
			return fmt.Errorf("serve instance %s: certificate: %w", inst.ID, err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("serve instance %s: %w", inst.ID, net.ErrClosed)
	}
	if s.homeErr != nil {
		return fmt.Errorf("serve instance %s: %w", inst.ID, s.homeErr)
	}
	old := s.instances[inst.ID]
	if cert == nil && old != nil {
		prev := old.state.Load()
		cert, leaf = prev.cert, prev.leaf
	}
	st := s.newServed(inst, cert, leaf)
	defer func() {
		if err == nil && leaf != nil && !validNow(leaf, time.Now()) && !st.warned.Swap(true) {
			s.log.Warn("instance certificate is not valid now: handshakes are refused until a valid one is set",
				"instance", inst.ID, "serial", serial(leaf), "not_before", leaf.NotBefore, "not_after", leaf.NotAfter)
		}
	}()

	ns, id, err := openNetns(inst.NetNS)
	if err != nil {
		return fmt.Errorf("serve instance %s: %w", inst.ID, err)
	}
	if id == s.homeID {
		ns.Close()
		return fmt.Errorf("serve instance %s: netns %s is the agent's own namespace, not an instance's", inst.ID, inst.NetNS)
	}
	if old != nil && old.nsID == id {
		ns.Close()
		prev := old.state.Swap(st)
		s.log.Info("instance updated", "instance", inst.ID, "serial", serial(leaf), "require_client_cert", inst.RequireClientCert,
			"certificate_changed", prev.cert != cert)
		old.recheck(st)
		return nil
	}
	ln, err := listen(ns)
	if err != nil {
		ns.Close()
		return fmt.Errorf("serve instance %s: listen on 0.0.0.0:%d in netns %s: %w", inst.ID, Port, inst.NetNS, err)
	}
	in := &instance{s: s, id: inst.ID, ns: ns, nsID: id, ln: ln, done: make(chan struct{}), conns: map[*conn]struct{}{}}
	in.state.Store(st)
	if old != nil {
		s.stop(old)
	} else {
		s.m.instances.Inc()
	}
	s.instances[inst.ID] = in
	in.wg.Add(1)
	go in.accept()
	s.log.Info("instance served", "instance", inst.ID, "netns", inst.NetNS, "app", st.app, "serial", serial(leaf),
		"require_client_cert", inst.RequireClientCert)
	return nil
}

// Remove stops serving the instance id: it closes its listener (Port is
// free in its namespace when Remove returns) and its connections, waits for
// their goroutines, and forgets its metrics. Removing an instance that is
// not served does nothing.
func (s *Server) Remove(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	in := s.instances[id]
	if in == nil {
		return
	}
	delete(s.instances, id)
	s.stop(in)
	s.m.instances.Dec()
	s.log.Info("instance no longer served", "instance", id)
}

// Close removes every instance. The Server serves nothing afterwards: Set
// fails.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	for id, in := range s.instances {
		delete(s.instances, id)
		s.stop(in)
		s.m.instances.Dec()
	}
	if s.home != nil {
		s.home.Close()
	}
	return nil
}

// stop closes in's listener and connections and waits for its goroutines.
func (s *Server) stop(in *instance) {
	in.mu.Lock()
	in.closed = true
	conns := make([]*conn, 0, len(in.conns))
	for c := range in.conns {
		conns = append(conns, c)
	}
	in.mu.Unlock()
	close(in.done)
	in.ln.Close()
	for _, c := range conns {
		c.abort()
	}
	in.wg.Wait()
	// No goroutine uses the namespace any more: its descriptor may go.
	in.ns.Close()
	s.m.forget(in.id)
}

// newServed makes the settings and TLS configuration of one Set.
func (s *Server) newServed(inst Instance, cert *tls.Certificate, leaf *x509.Certificate) *served {
	st := &served{inst: inst, app: netip.AddrPortFrom(inst.IP, uint16(inst.AppPort)), cert: cert, leaf: leaf}
	if cert == nil {
		return st
	}
	cfg := baseConfig()
	cfg.Certificates = []tls.Certificate{*cert}
	if inst.RequireClientCert {
		// VerifyClientCertIfGiven, not RequireAndVerifyClientCert: the
		// missing certificate is refused in VerifyConnection, which
		// reports it as such (crypto/tls has no typed error for it).
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
		cfg.ClientCAs = inst.ClientCAs
		authorize := inst.Authorize
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return &refusal{result: resultClientRefused, reason: "no client certificate"}
			}
			peer := cs.PeerCertificates[0]
			if err := authorize(peer); err != nil {
				return &refusal{result: resultClientRefused, reason: err.Error(), peerApp: appOf(peer)}
			}
			return nil
		}
	}
	st.config = cfg
	return st
}

// baseConfig is the TLS configuration every handshake starts from.
func baseConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// TLS 1.2: ECDHE and AEAD only.
		CipherSuites: identity.CipherSuites(),
		// A resumed session skips the certificate: the validity and SNI
		// checks would still run, but a ticket is the only thing that would
		// tie a client to an instance, and the keys would be shared by every
		// instance of the cell. Full handshakes only.
		SessionTicketsDisabled: true,
	}
}

// checkInstance validates inst and fills in defaults.
func checkInstance(inst *Instance) error {
	switch {
	case inst.ID == "":
		return errors.New("ID is empty")
	case len(inst.ID) > 128:
		return fmt.Errorf("ID is %d bytes long, want at most 128", len(inst.ID))
	case slices.ContainsFunc([]rune(inst.ID), func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }):
		return errors.New("ID has a space or an unprintable character")
	case inst.NetNS == "":
		return errors.New("NetNS is empty: the proxy never listens in the agent's own namespace")
	case !filepath.IsAbs(inst.NetNS):
		return fmt.Errorf("NetNS %q is not an absolute path", inst.NetNS)
	case !inst.IP.IsValid():
		return errors.New("IP is missing")
	case !inst.IP.Unmap().Is4() || inst.IP.IsUnspecified():
		return fmt.Errorf("IP %v is not an IPv4 instance address", inst.IP)
	case inst.AppPort < 0 || inst.AppPort > 65535:
		return fmt.Errorf("AppPort %d is out of range 1-65535", inst.AppPort)
	case inst.AppPort == Port:
		return fmt.Errorf("AppPort %d is the TLS port itself", Port)
	case inst.RequireClientCert && inst.ClientCAs == nil:
		return errors.New("RequireClientCert without ClientCAs")
	case inst.RequireClientCert && inst.Authorize == nil:
		return errors.New("RequireClientCert without Authorize")
	}
	inst.IP = inst.IP.Unmap()
	if inst.AppPort == 0 {
		inst.AppPort = DefaultAppPort
	}
	return nil
}

// checkCertificate returns cert's parsed leaf after checking that cert can
// be served: a chain, a private key that matches the leaf, and a leaf fit
// for server authentication. Validity in time is checked at each handshake.
func checkCertificate(cert *tls.Certificate) (*x509.Certificate, error) {
	if len(cert.Certificate) == 0 {
		return nil, errors.New("no certificate in the chain")
	}
	leaf := cert.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("parse leaf: %w", err)
		}
	}
	signer, ok := cert.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, errors.New("no private key, or one that cannot sign")
	}
	pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(leaf.PublicKey) {
		return nil, errors.New("private key does not match the leaf's public key")
	}
	if len(leaf.ExtKeyUsage) > 0 && !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageServerAuth) &&
		!slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageAny) {
		return nil, errors.New("leaf is not for server authentication (extended key usage)")
	}
	return leaf, nil
}

func validNow(leaf *x509.Certificate, now time.Time) bool {
	return !now.Before(leaf.NotBefore) && !now.After(leaf.NotAfter)
}

// serial is a certificate's serial number for logs.
func serial(leaf *x509.Certificate) string {
	if leaf == nil {
		return "none"
	}
	return leaf.SerialNumber.Text(16)
}

// appOf returns the app GUID a certificate names in OU app:GUID, or "" if
// it names none or more than one.
func appOf(cert *x509.Certificate) string {
	app := ""
	for _, ou := range cert.Subject.OrganizationalUnit {
		if v, ok := strings.CutPrefix(ou, "app:"); ok && v != "" {
			if app != "" && app != v {
				return ""
			}
			app = v
		}
	}
	return app
}
