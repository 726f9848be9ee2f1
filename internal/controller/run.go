package controller

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/identity"
	"github.com/trellis-c2c/trellis/internal/ipam"
	"github.com/trellis-c2c/trellis/internal/store"
)

// DefaultListen is where the controller serves unless told otherwise:
// loopback, on Cloud Foundry's policy-server port.
const DefaultListen = "127.0.0.1:4002"

// AdminConfigFile is the client config the controller writes to its state
// directory on first start.
const AdminConfigFile = "admin.json"

// Config configures Run.
type Config struct {
	StateDir    string // CA, SQLite database and admin.json live here
	Listen      string // host:port, default DefaultListen
	DatabaseURL string // postgres://… ; empty means SQLite in StateDir
	// AdvertiseURL is the API URL written to admin.json; default derived
	// from the listening address.
	AdvertiseURL string
	// Overlay is the overlay network and its division into cell subnets;
	// zero means 10.255.0.0/16 in /24s.
	Overlay ipam.Pool
	// InstanceCertValidity is how long an instance identity certificate is
	// valid: default 24h, at least a minute.
	InstanceCertValidity time.Duration
	// TrustDomain is the SPIFFE trust domain of instance certificates'
	// URIs; default trellis.internal.
	TrustDomain string
	Log         *slog.Logger
	// Ready, if set, is called once the controller is serving, with its URL.
	Ready func(url string)
}

// Run starts the controller and serves until ctx is done, then shuts down
// gracefully.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if cfg.StateDir == "" {
		return errors.New("--state-dir is required")
	}
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	id, err := InstanceIdentity{Validity: cfg.InstanceCertValidity, TrustDomain: cfg.TrustDomain}.withDefaults()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	dbURL := cfg.DatabaseURL
	if dbURL == "" {
		dbURL = filepath.Join(cfg.StateDir, "trellis.db")
	}
	st, err := store.Open(ctx, dbURL)
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	defer st.Close()

	if !cfg.Overlay.Overlay.IsValid() {
		cfg.Overlay, _ = ipam.NewPool(ipam.DefaultOverlay, ipam.DefaultSubnetPrefix)
	}
	if err := st.OverlaySettings(ctx, cfg.Overlay); err != nil {
		return err
	}
	ca, err := identity.LoadOrCreateCA(cfg.StateDir, "trellis CA")
	if err != nil {
		return err
	}
	instCA, err := ensureInstanceCA(ctx, st, log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	defer ln.Close()
	apiURL := cfg.AdvertiseURL
	if apiURL == "" {
		apiURL = "https://" + advertiseAddr(ln.Addr().(*net.TCPAddr))
	}
	cert, err := ca.ServerCertificate(certHosts(ln.Addr().(*net.TCPAddr), apiURL), 365*24*time.Hour)
	if err != nil {
		return err
	}
	if err := ensureAdminConfig(ctx, st, filepath.Join(cfg.StateDir, AdminConfigFile), apiURL, string(ca.CertPEM), log); err != nil {
		return err
	}

	// Long polls (cells watching their state, users following flows) end
	// when the server shuts down, instead of holding Shutdown for their
	// whole wait.
	baseCtx, cancelBase := context.WithCancel(context.Background())
	defer cancelBase()
	srv := &http.Server{
		BaseContext:       func(net.Listener) context.Context { return baseCtx },
		Handler:           NewServer(st, ca, cfg.Overlay, id, log),
		TLSConfig:         TLSConfig(cert, ca),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          serverErrorLog(log),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	log.Info("controller serving", "url", apiURL, "listen", ln.Addr().String(), "state_dir", cfg.StateDir, "store", storeKind(cfg.DatabaseURL),
		"instance_ca_generation", instCA.Generation, "instance_cert_validity", id.Validity, "trust_domain", id.TrustDomain)
	if cfg.Ready != nil {
		cfg.Ready(apiURL)
	}
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("controller shutting down")
	cancelBase()
	shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Shutdown(shutCtx)
}

func storeKind(url string) string {
	if url == "" {
		return "sqlite"
	}
	return "postgres"
}

// advertiseAddr turns a listening address into one a client can dial:
// an unspecified IP (0.0.0.0, ::) becomes loopback.
func advertiseAddr(a *net.TCPAddr) string {
	ip := a.IP
	if ip == nil || ip.IsUnspecified() {
		ip = net.IPv4(127, 0, 0, 1)
	}
	return net.JoinHostPort(ip.String(), fmt.Sprint(a.Port))
}

// certHosts lists the names the server certificate covers.
func certHosts(a *net.TCPAddr, apiURL string) []string {
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	if a.IP != nil && !a.IP.IsUnspecified() {
		hosts = append(hosts, a.IP.String())
	}
	if h, err := os.Hostname(); err == nil {
		hosts = append(hosts, h)
	}
	if u := strings.TrimPrefix(apiURL, "https://"); u != apiURL {
		if h, _, err := net.SplitHostPort(u); err == nil {
			hosts = append(hosts, h)
		} else {
			hosts = append(hosts, strings.TrimSuffix(u, "/"))
		}
	}
	return hosts
}

// ensureAdminConfig writes path with an admin token on first start. On
// later starts it keeps the token (if the store still knows it) and
// refreshes the URL and CA, so a controller that moved port is still found.
func ensureAdminConfig(ctx context.Context, st *store.Store, path, apiURL, caPEM string, log *slog.Logger) error {
	cfg, err := api.LoadClientConfig(path)
	switch {
	case err == nil:
		if _, err := st.TokenByHash(ctx, HashToken(cfg.Token)); err == nil {
			cfg.APIURL, cfg.CACert = apiURL, caPEM
			return cfg.Save(path)
		} else if !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("check admin token: %w", err)
		}
		log.Warn("admin token in admin.json is unknown to the store: issuing a new one", "path", path)
	case errors.Is(err, fs.ErrNotExist):
	default:
		return fmt.Errorf("read %s: %w", path, err)
	}
	value, hash := NewToken()
	if _, err := st.CreateToken(ctx, store.Token{Name: "admin", Scope: ScopeAdmin}, hash); err != nil {
		return fmt.Errorf("create admin token: %w", err)
	}
	cfg = api.ClientConfig{APIURL: apiURL, CACert: caPEM, Token: value}
	if err := cfg.Save(path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	log.Info("wrote admin client config", "path", path)
	return nil
}
