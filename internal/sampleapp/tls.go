package sampleapp

// Mutual TLS with the instance identity certificate: the --tls-port
// listener (the server side) and /proxytls/ (the client side). Both read
// the credentials from files the platform replaces atomically when it
// rotates them, and notice a replacement at the next handshake.

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
)

// The instance environment that locates the identity credentials, as Cloud
// Foundry names it.
const (
	envCert   = "CF_INSTANCE_CERT"
	envKey    = "CF_INSTANCE_KEY"
	envCAFile = "SSL_CERT_FILE"
	envCADir  = "CF_SYSTEM_CERT_PATH"
)

// Identity says where the platform put the instance identity credentials.
// ConfigFromEnv fills it from the variables named in parentheses.
type Identity struct {
	// CertFile holds the instance certificate, PEM, leaf first, then the
	// intermediate(s) (CF_INSTANCE_CERT).
	CertFile string
	// KeyFile holds its private key, PEM: "EC PRIVATE KEY", PKCS#8
	// "PRIVATE KEY" or "RSA PRIVATE KEY" (CF_INSTANCE_KEY).
	KeyFile string
	// CAFile is the CA bundle: the roots peers are verified against
	// (SSL_CERT_FILE).
	CAFile string
	// CADir is a directory whose *.crt and *.pem files are trusted roots
	// too (CF_SYSTEM_CERT_PATH); names starting with a dot are skipped.
	CADir string
}

// TLSOptions turns on the mutual-TLS listener: the same handlers as the
// plaintext port, served with the instance certificate, to clients that
// present an instance certificate the CA bundle verifies. A client with no
// certificate, or one the bundle does not verify, fails the handshake.
type TLSOptions struct {
	// Port is the TCP port to serve TLS on; zero picks a free one (for
	// tests), see Server.TLSPort.
	Port int
	// RequireApps, when not empty, lets through only clients whose
	// certificate names one of these app GUIDs (subject OU app:GUID).
	// A client of another app, whose certificate is valid, gets 403
	// Forbidden with a body naming its app: it proved who it is, so it is
	// told why it is refused. Empty lets any valid instance certificate in.
	RequireApps []string
}

// guidPattern is an app GUID as the controller makes them (a UUID). It is
// compiled when first used, not at init: every exec of the trellis binary
// (the CNI plugin's among them) would pay for it.
var guidPattern = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
})

// ParseAppGUIDs splits a --require-app value, one app GUID or several
// separated by commas, and checks that each is a GUID: certificates name
// apps by GUID, not by name.
func ParseAppGUIDs(s string) ([]string, error) {
	var guids []string
	for g := range strings.SplitSeq(s, ",") {
		g = strings.TrimSpace(g)
		if err := checkAppGUID(g); err != nil {
			return nil, err
		}
		guids = append(guids, strings.ToLower(g))
	}
	return guids, nil
}

func checkAppGUID(g string) error {
	if g == "" {
		return errors.New("empty app GUID")
	}
	if !guidPattern().MatchString(g) {
		return fmt.Errorf("%q is not an app GUID: instance certificates name apps by GUID (see 'trellis apps --json')", g)
	}
	return nil
}

func (o *TLSOptions) validate(plainPort int) error {
	if o.Port == ReservedPort {
		return fmt.Errorf("tls port %d is reserved for container networking", ReservedPort)
	}
	if o.Port < 0 || o.Port > 65535 {
		return fmt.Errorf("tls port %d is not a port number (1-65535)", o.Port)
	}
	if o.Port != 0 && o.Port == plainPort {
		return fmt.Errorf("tls port %d is the plaintext port too: pick another", o.Port)
	}
	for _, g := range o.RequireApps {
		if err := checkAppGUID(g); err != nil {
			return fmt.Errorf("require app: %w", err)
		}
	}
	return nil
}

// checkServer says what a TLS listener misses to run, naming the
// variables to set.
func (id Identity) checkServer() error {
	var missing []string
	if id.CertFile == "" {
		missing = append(missing, envCert)
	}
	if id.KeyFile == "" {
		missing = append(missing, envKey)
	}
	switch len(missing) {
	case 1:
		return fmt.Errorf("serve tls: %s is not set: the listener needs the instance certificate and key the platform provides", missing[0])
	case 2:
		return fmt.Errorf("serve tls: %s and %s are not set: the listener needs the instance certificate and key the platform provides", envCert, envKey)
	}
	if id.CAFile == "" && id.CADir == "" {
		return fmt.Errorf("serve tls: neither %s nor %s is set: the listener needs the CA bundle to verify clients", envCAFile, envCADir)
	}
	return nil
}

// caFiles lists the files of the CA bundle as they are now.
func (id Identity) caFiles() ([]credFile, error) {
	var files []credFile
	if id.CAFile != "" {
		files = append(files, credFile{envCAFile, id.CAFile})
	}
	if id.CADir != "" {
		entries, err := os.ReadDir(id.CADir)
		if err != nil {
			return nil, fmt.Errorf("read %s %s: %w", envCADir, id.CADir, err)
		}
		for _, e := range entries {
			name := e.Name()
			ext := filepath.Ext(name)
			if e.IsDir() || strings.HasPrefix(name, ".") || (ext != ".crt" && ext != ".pem") {
				continue
			}
			files = append(files, credFile{envCADir, filepath.Join(id.CADir, name)})
		}
	}
	if len(files) == 0 {
		if id.CADir != "" {
			return nil, fmt.Errorf("no CA bundle: %s is not set and %s %s has no *.crt or *.pem file", envCAFile, envCADir, id.CADir)
		}
		return nil, fmt.Errorf("no CA bundle to verify peers: neither %s nor %s is set", envCAFile, envCADir)
	}
	return files, nil
}

// loadCAPool parses every certificate in files into one pool.
func loadCAPool(files []credFile) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	n := 0
	var paths []string
	for _, f := range files {
		paths = append(paths, f.path)
		b, err := os.ReadFile(f.path)
		if err != nil {
			return nil, fmt.Errorf("read CA bundle (%s): %w", f.env, err)
		}
		for {
			var block *pem.Block
			block, b = pem.Decode(b)
			if block == nil {
				break
			}
			if block.Type != "CERTIFICATE" {
				continue
			}
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("CA bundle %s (%s): %w", f.path, f.env, err)
			}
			pool.AddCert(c)
			n++
		}
	}
	if n == 0 {
		return nil, fmt.Errorf("CA bundle %s holds no certificate", strings.Join(paths, ", "))
	}
	return pool, nil
}

// loadKeyPair reads the instance certificate chain and its key.
func loadKeyPair(id Identity) (*tls.Certificate, error) {
	certPEM, err := os.ReadFile(id.CertFile)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", envCert, err)
	}
	keyPEM, err := os.ReadFile(id.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", envKey, err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load instance certificate %s=%s %s=%s: %w", envCert, id.CertFile, envKey, id.KeyFile, err)
	}
	return &pair, nil
}

// credFile is a credential file and the variable that named it.
type credFile struct {
	env, path string
}

// fileStamp is what tells a file was replaced: another inode after an
// atomic rename, or another size or modification time after a rewrite.
type fileStamp struct {
	path string
	info os.FileInfo
}

func sameStamps(a, b []fileStamp) bool {
	return slices.EqualFunc(a, b, func(x, y fileStamp) bool {
		return x.path == y.path && os.SameFile(x.info, y.info) &&
			x.info.Size() == y.info.Size() && x.info.ModTime().Equal(y.info.ModTime())
	})
}

// reloading holds what was parsed from a set of files and parses them
// again when one of them changed. The check is a stat per file, cheap
// enough to run at every handshake. When a reload fails (a rotation caught
// between its certificate and its key, say) it keeps what it had, and
// tries again at the next call.
type reloading[T any] struct {
	what     string // for log lines and errors: "instance certificate"
	log      *slog.Logger
	files    func() ([]credFile, error)
	parse    func(files []credFile) (T, error)
	describe func(T) []any // log attributes of a freshly loaded value

	mu     sync.Mutex
	stamps []fileStamp
	val    T
	loaded bool
}

func (r *reloading[T]) get() (T, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	files, err := r.files()
	if err != nil {
		return r.keep(err)
	}
	stamps := make([]fileStamp, len(files))
	for i, f := range files {
		fi, err := os.Stat(f.path)
		if err != nil {
			return r.keep(fmt.Errorf("%s: %w", f.env, err))
		}
		stamps[i] = fileStamp{f.path, fi}
	}
	if r.loaded && sameStamps(stamps, r.stamps) {
		return r.val, nil
	}
	v, err := r.parse(files)
	if err != nil {
		return r.keep(err)
	}
	r.val, r.stamps, r.loaded = v, stamps, true
	r.log.Info(r.what+" loaded", r.describe(v)...)
	return v, nil
}

// keep answers a failed reload with the value loaded before, if any.
func (r *reloading[T]) keep(err error) (T, error) {
	if !r.loaded {
		var zero T
		return zero, err
	}
	r.log.Warn("reload failed: keeping the "+r.what+" loaded before", "err", err)
	return r.val, nil
}

func newCertSource(id Identity, log *slog.Logger) *reloading[*tls.Certificate] {
	return &reloading[*tls.Certificate]{
		what:  "instance certificate",
		log:   log,
		files: func() ([]credFile, error) { return []credFile{{envCert, id.CertFile}, {envKey, id.KeyFile}}, nil },
		parse: func([]credFile) (*tls.Certificate, error) { return loadKeyPair(id) },
		describe: func(c *tls.Certificate) []any {
			return []any{"file", id.CertFile, "serial", c.Leaf.SerialNumber.Text(16),
				"subject", c.Leaf.Subject.String(), "not_after", c.Leaf.NotAfter}
		},
	}
}

func newCASource(id Identity, log *slog.Logger) *reloading[*x509.CertPool] {
	var files []credFile
	return &reloading[*x509.CertPool]{
		what: "CA bundle",
		log:  log,
		files: func() ([]credFile, error) {
			var err error
			files, err = id.caFiles()
			return files, err
		},
		parse: loadCAPool,
		describe: func(*x509.CertPool) []any {
			paths := make([]string, len(files))
			for i, f := range files {
				paths[i] = f.path
			}
			return []any{"files", paths}
		},
	}
}

// serverTLS is the listener's TLS configuration. Every handshake gets the
// certificate and the CA bundle as they are on disk now, and verifies the
// client in full (no session resumption), so a rotation of either applies
// to the next connection.
func (s *Server) serverTLS() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			cert, err := s.cert.get()
			if err != nil {
				return nil, err
			}
			pool, err := s.ca.get()
			if err != nil {
				return nil, err
			}
			return &tls.Config{
				MinVersion:             tls.VersionTLS12,
				Certificates:           []tls.Certificate{*cert},
				ClientAuth:             tls.RequireAndVerifyClientCert,
				ClientCAs:              pool,
				SessionTicketsDisabled: true,
			}, nil
		},
	}
}

// listenTLS loads the credentials once, to fail at start when they are
// missing or wrong, and opens the TLS port.
func (s *Server) listenTLS() error {
	if err := s.cfg.Identity.checkServer(); err != nil {
		return err
	}
	if _, err := s.cert.get(); err != nil {
		return fmt.Errorf("serve tls: %w", err)
	}
	if _, err := s.ca.get(); err != nil {
		return fmt.Errorf("serve tls: %w", err)
	}
	l, err := net.Listen("tcp", net.JoinHostPort(s.cfg.Host, fmt.Sprint(s.cfg.TLS.Port)))
	if err != nil {
		return fmt.Errorf("listen tls: %w", err)
	}
	s.tlsPort = l.Addr().(*net.TCPAddr).Port
	s.tls = tls.NewListener(l, s.serverTLS())
	return nil
}

// Peer is who a client certificate says the client is: the fields of an
// instance identity certificate.
type Peer struct {
	AppGUID      string `json:"app_guid"`
	SpaceGUID    string `json:"space_guid,omitempty"`
	OrgGUID      string `json:"organization_guid,omitempty"`
	InstanceGUID string `json:"instance_guid"`
	SPIFFEID     string `json:"spiffe_id,omitempty"`
	Serial       string `json:"serial"` // hexadecimal
}

// PeerOf reads the identity in an instance certificate: OU app:GUID,
// space:GUID and organization:GUID, CN the instance GUID, and the spiffe://
// URI SAN.
func PeerOf(c *x509.Certificate) Peer {
	p := Peer{InstanceGUID: c.Subject.CommonName, Serial: c.SerialNumber.Text(16)}
	for _, ou := range c.Subject.OrganizationalUnit {
		k, v, _ := strings.Cut(ou, ":")
		switch k {
		case "app":
			p.AppGUID = v
		case "space":
			p.SpaceGUID = v
		case "organization":
			p.OrgGUID = v
		}
	}
	for _, u := range c.URIs {
		if u.Scheme == "spiffe" {
			p.SPIFFEID = u.String()
		}
	}
	return p
}

// peer returns the identity of the client of r, if it came over TLS with a
// certificate.
func peer(r *http.Request) (Peer, bool) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return Peer{}, false
	}
	return PeerOf(r.TLS.PeerCertificates[0]), true
}

// requireApp lets through only clients of the apps in TLS.RequireApps. The
// handshake has verified the certificate already.
func (s *Server) requireApp(h http.Handler) http.Handler {
	allowed := s.cfg.TLS.RequireApps
	if len(allowed) == 0 {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, ok := peer(r)
		if ok && slices.ContainsFunc(allowed, func(g string) bool { return strings.EqualFold(g, p.AppGUID) }) {
			h.ServeHTTP(w, r)
			return
		}
		who := "a certificate with no app:GUID organizational unit"
		if p.AppGUID != "" {
			who = "app " + p.AppGUID
		}
		err := fmt.Errorf("forbidden: %s (instance %s) is not allowed here; this instance accepts only app %s",
			who, p.InstanceGUID, strings.Join(allowed, ", "))
		if rec, ok := w.(*statusRecorder); ok {
			rec.err = err
		}
		http.Error(w, err.Error(), http.StatusForbidden)
	})
}

// proxyTLS fetches https://HOST:PORT/PATH from inside the instance,
// presenting the instance certificate and verifying the server against the
// CA bundle for the name HOST, on a fresh connection.
func (s *Server) proxyTLS(w http.ResponseWriter, r *http.Request) {
	hostport, rest, err := target(r, "/proxytls/")
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	host, _, _ := net.SplitHostPort(hostport)
	pool, err := s.ca.get()
	if err != nil {
		err = fmt.Errorf("cannot verify the server: %w", err)
		if rec, ok := w.(*statusRecorder); ok {
			rec.err = err
		}
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool, ServerName: host}
	note := ""
	if s.cert != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return s.cert.get()
		}
	} else {
		note = fmt.Sprintf(" (no client certificate presented: %s and %s are not both set)", envCert, envKey)
	}
	s.forward(w, r, "https://"+hostport+"/"+rest, &http.Transport{Proxy: nil, DisableKeepAlives: true, TLSClientConfig: cfg}, note)
}
