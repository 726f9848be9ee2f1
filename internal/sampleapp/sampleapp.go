// Package sampleapp is the built-in app that `trellis sample-app` runs and
// that `trellis push` starts when no command is given. It exists so demos
// and tests can probe container networking from inside an instance: it says
// who it is, fetches URLs and sends UDP datagrams on request, and echoes UDP
// on its own port, reporting failures in words a test can match
// ("connection refused", "timeout", "no such host") to tell a denied
// connection from an allowed one.
//
// It also shows both sides of mutual TLS with the instance identity
// certificate the platform gives every instance (Cloud Foundry's "manual
// option"): with TLSOptions it serves the same handlers over TLS with that
// certificate to clients that present one the platform CA verifies, and
// /proxytls/ fetches over TLS presenting it. Certificates are read again
// when the platform replaces their files, without a restart.
package sampleapp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// DefaultPort is the port the app listens on when PORT is unset, as in
// Cloud Foundry.
const DefaultPort = 8080

// ReservedPort is the port container networking terminates TLS on for every
// instance; an app may not bind it.
const ReservedPort = 61443

// Default timeouts of the probes, used when Config leaves them zero.
const (
	DefaultProxyTimeout = 2 * time.Second
	DefaultUDPTimeout   = 1 * time.Second
)

// Config is what the app needs to know about itself and where to listen.
type Config struct {
	// Host is the address to listen on; empty means 0.0.0.0.
	Host string
	// Port is the TCP and UDP port to listen on. Zero picks a free port
	// that is free for both (for tests); see Server.Port.
	Port int
	// AppName, AppGUID, InstanceGUID, InstanceIndex and InstanceIP are
	// what GET / reports.
	AppName       string
	AppGUID       string
	InstanceGUID  string
	InstanceIndex int
	InstanceIP    string
	// ProxyTimeout bounds a /proxy/ fetch and UDPTimeout the wait for a
	// /udp/ echo; zero means DefaultProxyTimeout and DefaultUDPTimeout.
	ProxyTimeout time.Duration
	UDPTimeout   time.Duration
	// Identity locates the instance certificate and the CA bundle, for the
	// TLS listener and /proxytls/.
	Identity Identity
	// TLS, when set, also serves the app over mutual TLS on TLS.Port.
	TLS *TLSOptions
	// Logger receives one line per request; nil logs text to stderr.
	Logger *slog.Logger
}

// ConfigFromEnv reads the configuration from the instance environment:
// PORT (default 8080), TRELLIS_APP_NAME, TRELLIS_APP_GUID, CF_INSTANCE_GUID,
// CF_INSTANCE_INDEX, CF_INSTANCE_INTERNAL_IP (or CF_INSTANCE_IP when that
// is unset), and the identity credentials: CF_INSTANCE_CERT,
// CF_INSTANCE_KEY, SSL_CERT_FILE and CF_SYSTEM_CERT_PATH.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	cfg := Config{
		Port:         DefaultPort,
		AppName:      getenv("TRELLIS_APP_NAME"),
		AppGUID:      getenv("TRELLIS_APP_GUID"),
		InstanceGUID: getenv("CF_INSTANCE_GUID"),
		InstanceIP:   getenv("CF_INSTANCE_INTERNAL_IP"),
		Identity: Identity{
			CertFile: getenv(envCert),
			KeyFile:  getenv(envKey),
			CAFile:   getenv(envCAFile),
			CADir:    getenv(envCADir),
		},
	}
	if cfg.InstanceIP == "" {
		cfg.InstanceIP = getenv("CF_INSTANCE_IP")
	}
	if s := getenv("PORT"); s != "" {
		p, err := strconv.Atoi(s)
		if err != nil || p < 1 || p > 65535 {
			return Config{}, fmt.Errorf("PORT %q is not a port number (1-65535)", s)
		}
		cfg.Port = p
	}
	if s := getenv("CF_INSTANCE_INDEX"); s != "" {
		i, err := strconv.Atoi(s)
		if err != nil || i < 0 {
			return Config{}, fmt.Errorf("CF_INSTANCE_INDEX %q is not an instance index", s)
		}
		cfg.InstanceIndex = i
	}
	if err := cfg.validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

func (cfg Config) validate() error {
	if cfg.Port == ReservedPort {
		return fmt.Errorf("port %d is reserved for container networking", ReservedPort)
	}
	if cfg.Port < 0 || cfg.Port > 65535 {
		return fmt.Errorf("port %d is not a port number (1-65535)", cfg.Port)
	}
	if cfg.TLS != nil {
		return cfg.TLS.validate(cfg.Port)
	}
	return nil
}

// Run serves the app until ctx is done, then shuts down gracefully. It
// returns nil after a shutdown caused by ctx.
func Run(ctx context.Context, cfg Config) error {
	s, err := Listen(cfg)
	if err != nil {
		return err
	}
	return s.Serve(ctx)
}

// Server is the app with its sockets open but not yet serving: Listen and
// Serve apart let a caller learn the port before requests arrive.
type Server struct {
	cfg  Config
	log  *slog.Logger
	tcp  net.Listener
	udp  net.PacketConn
	port int
	http *http.Server

	cert    *reloading[*tls.Certificate] // nil without CertFile and KeyFile
	ca      *reloading[*x509.CertPool]
	tls     net.Listener // nil without cfg.TLS
	tlsPort int
	tlsHTTP *http.Server
}

// Listen opens the TCP and UDP sockets of the app on cfg.Host and cfg.Port,
// and with cfg.TLS the TLS port. It fails when the TLS listener lacks its
// credentials, naming the variable to set.
func Listen(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Host == "" {
		cfg.Host = "0.0.0.0"
	}
	if cfg.ProxyTimeout == 0 {
		cfg.ProxyTimeout = DefaultProxyTimeout
	}
	if cfg.UDPTimeout == 0 {
		cfg.UDPTimeout = DefaultUDPTimeout
	}
	s := &Server{cfg: cfg, log: cfg.Logger}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if id := cfg.Identity; id.CertFile != "" && id.KeyFile != "" {
		s.cert = newCertSource(id, s.log)
	}
	s.ca = newCASource(cfg.Identity, s.log)
	if cfg.TLS != nil {
		if err := s.listenTLS(); err != nil {
			return nil, err
		}
	}
	if err := s.listen(); err != nil {
		if s.tls != nil {
			s.tls.Close()
		}
		return nil, err
	}
	s.http = &http.Server{
		Handler:           s.logRequests(s.routes()),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	if s.tls != nil {
		s.tlsHTTP = &http.Server{
			Handler:           s.logRequests(s.requireApp(s.routes())),
			ReadHeaderTimeout: 10 * time.Second, // bounds the handshake too
			ErrorLog:          slog.NewLogLogger(s.log.Handler().WithAttrs([]slog.Attr{slog.Int("tls_port", s.tlsPort)}), slog.LevelWarn),
		}
	}
	return s, nil
}

// listen opens TCP and UDP on the same port. With port 0 the kernel picks
// the TCP port, which may be taken for UDP: then it tries again.
func (s *Server) listen() error {
	var lastErr error
	for range 10 {
		tcp, err := net.Listen("tcp", net.JoinHostPort(s.cfg.Host, strconv.Itoa(s.cfg.Port)))
		if err != nil {
			return fmt.Errorf("listen tcp: %w", err)
		}
		port := tcp.Addr().(*net.TCPAddr).Port
		udp, err := net.ListenPacket("udp", net.JoinHostPort(s.cfg.Host, strconv.Itoa(port)))
		if err == nil {
			s.tcp, s.udp, s.port = tcp, udp, port
			return nil
		}
		tcp.Close()
		lastErr = err
		if s.cfg.Port != 0 {
			break
		}
	}
	return fmt.Errorf("listen udp: %w", lastErr)
}

// Port returns the port the app listens on, for TCP and UDP.
func (s *Server) Port() int { return s.port }

// Close closes the sockets of a Server that will not Serve.
func (s *Server) Close() error {
	err := errors.Join(s.tcp.Close(), s.udp.Close())
	if s.tls != nil {
		err = errors.Join(err, s.tls.Close())
	}
	return err
}

// TLSPort returns the port the app serves mutual TLS on, or 0 without
// Config.TLS.
func (s *Server) TLSPort() int { return s.tlsPort }

// Serve answers HTTP and UDP until ctx is done, then stops accepting,
// lets requests in flight finish (for up to five seconds) and returns nil.
// It returns an error if serving fails for another reason.
func (s *Server) Serve(ctx context.Context) error {
	s.log.Info("sample app listening", "addr", s.tcp.Addr().String(), "app", s.cfg.AppName,
		"instance_guid", s.cfg.InstanceGUID, "index", s.cfg.InstanceIndex)
	errc := make(chan error, 3)
	go func() { errc <- s.http.Serve(s.tcp) }()
	go func() { errc <- s.echoUDP() }()
	if s.tlsHTTP != nil {
		s.log.Info("sample app listening for mutual TLS", "addr", s.tls.Addr().String(),
			"require_apps", s.cfg.TLS.RequireApps)
		go func() { errc <- s.tlsHTTP.Serve(s.tls) }()
	}

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if serr := s.http.Shutdown(shutdownCtx); serr != nil && err == nil {
		err = fmt.Errorf("shut down http: %w", serr)
	}
	if s.tlsHTTP != nil {
		if serr := s.tlsHTTP.Shutdown(shutdownCtx); serr != nil && err == nil {
			err = fmt.Errorf("shut down tls: %w", serr)
		}
	}
	s.udp.Close()
	if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	s.log.Info("sample app stopped")
	return nil
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.identity)
	mux.HandleFunc("GET /proxy/", s.proxy)
	mux.HandleFunc("GET /proxytls/", s.proxyTLS)
	mux.HandleFunc("GET /udp/", s.sendUDP)
	return mux
}

// identityResponse is the body of GET /.
type identityResponse struct {
	App          string `json:"app"`
	AppGUID      string `json:"app_guid,omitempty"`
	InstanceGUID string `json:"instance_guid"`
	Index        int    `json:"index"`
	IP           string `json:"ip"`
	// Peer is the client, when it came over TLS with a certificate.
	Peer *Peer `json:"peer,omitempty"`
}

func (s *Server) identity(w http.ResponseWriter, r *http.Request) {
	resp := identityResponse{
		App:          s.cfg.AppName,
		AppGUID:      s.cfg.AppGUID,
		InstanceGUID: s.cfg.InstanceGUID,
		Index:        s.cfg.InstanceIndex,
		IP:           s.cfg.InstanceIP,
	}
	if p, ok := peer(r); ok {
		resp.Peer = &p
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(resp)
}

// target splits the rest of the path after prefix into HOST:PORT and what
// follows the next slash, still escaped.
func target(r *http.Request, prefix string) (hostport, rest string, err error) {
	p, ok := strings.CutPrefix(r.URL.EscapedPath(), prefix)
	if !ok {
		return "", "", fmt.Errorf("path must start with %s", prefix)
	}
	hostport, rest, _ = strings.Cut(p, "/")
	if _, port, err := net.SplitHostPort(hostport); err != nil || port == "" {
		return "", "", fmt.Errorf("want %sHOST:PORT/..., got %s%s", prefix, prefix, p)
	}
	return hostport, rest, nil
}

// proxy fetches http://HOST:PORT/PATH from inside the instance on a fresh
// connection (no keep-alive, no proxy from the environment), so each
// request tests the network as it is now.
func (s *Server) proxy(w http.ResponseWriter, r *http.Request) {
	hostport, rest, err := target(r, "/proxy/")
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.forward(w, r, "http://"+hostport+"/"+rest, &http.Transport{Proxy: nil, DisableKeepAlives: true}, "")
}

// forward fetches u (with the query of r) through transport and copies the
// answer to w: its status, Content-Type and body. A failure answers 502,
// with note appended.
func (s *Server) forward(w http.ResponseWriter, r *http.Request, u string, transport *http.Transport, note string) {
	if r.URL.RawQuery != "" {
		u += "?" + r.URL.RawQuery
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.ProxyTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	client := &http.Client{Transport: transport}
	resp, err := client.Do(req)
	if err != nil {
		if note != "" {
			err = fmt.Errorf("%w%s", err, note)
		}
		s.fail(w, err)
		return
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "" {
		w.Header().Set("Content-Type", ct)
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
}

// sendUDP sends MESSAGE to HOST:PORT over UDP and answers with the first
// datagram that comes back.
func (s *Server) sendUDP(w http.ResponseWriter, r *http.Request) {
	hostport, rest, err := target(r, "/udp/")
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	msg, err := url.PathUnescape(rest)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.UDPTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "udp", hostport)
	if err != nil {
		s.fail(w, err)
		return
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	if _, err := conn.Write([]byte(msg)); err != nil {
		s.fail(w, err)
		return
	}
	buf := make([]byte, 64<<10)
	n, err := conn.Read(buf)
	if err != nil {
		s.fail(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Write(buf[:n])
}

// fail answers 502 with the failure class first, then the error.
func (s *Server) fail(w http.ResponseWriter, err error) {
	if rec, ok := w.(*statusRecorder); ok {
		rec.err = err
	}
	class := Classify(err)
	body := err.Error()
	if class != "" {
		body = class + ": " + body
	}
	http.Error(w, body, http.StatusBadGateway)
}

// Classify names the failure class of a network error as the sample app
// reports it: "connection refused", "timeout", "no such host"; for TLS
// "tls: certificate signed by unknown authority", "tls: certificate name
// mismatch", "tls: certificate expired or not yet valid", "tls: invalid
// certificate", "tls: server does not speak TLS", or the alert the peer
// sent, such as "remote error: tls: bad certificate"; or "" when the error
// is none of those.
func Classify(err error) string {
	var dnsErr *net.DNSError
	var netErr net.Error
	var opErr *net.OpError
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalid x509.CertificateInvalidError
	var record tls.RecordHeaderError
	switch {
	case errors.As(err, &opErr) && opErr.Op == "remote error":
		return opErr.Error()
	case errors.As(err, &unknownCA):
		return "tls: certificate signed by unknown authority"
	case errors.As(err, &hostErr):
		return "tls: certificate name mismatch"
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return "tls: certificate expired or not yet valid"
	case errors.As(err, &invalid):
		return "tls: invalid certificate"
	case errors.Is(err, http.ErrSchemeMismatch), errors.As(err, &record):
		return "tls: server does not speak TLS"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
		return "no such host"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &netErr) && netErr.Timeout():
		return "timeout"
	}
	return ""
}

// echoUDP sends every datagram it receives back to its sender.
func (s *Server) echoUDP() error {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := s.udp.ReadFrom(buf)
		if err != nil {
			return err
		}
		if _, err := s.udp.WriteTo(buf[:n], from); err != nil {
			s.log.Warn("udp echo", "remote", from.String(), "bytes", n, "err", err)
			continue
		}
		s.log.Info("udp echo", "remote", from.String(), "bytes", n)
	}
}

// statusRecorder remembers the status a handler wrote, for the log line.
type statusRecorder struct {
	http.ResponseWriter
	status int
	err    error // why a probe failed
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *Server) logRequests(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		h.ServeHTTP(rec, r)
		if rec.status == 0 {
			rec.status = http.StatusOK
		}
		attrs := []any{"method", r.Method, "path", r.URL.RequestURI(), "status", rec.status,
			"remote", r.RemoteAddr, "duration", time.Since(start)}
		if p, ok := peer(r); ok {
			attrs = append(attrs, "peer_app", p.AppGUID, "peer_instance", p.InstanceGUID)
		}
		if rec.err != nil {
			attrs = append(attrs, "err", rec.err)
		}
		s.log.Info("request", attrs...)
	})
}
