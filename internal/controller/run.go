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

// AdminConfigFile is the client config, holding the foundation's bootstrap
// admin token, that the controller writes to its state directory: on the
// first start on a database, or when given the database's admin config
// (Config.AdminConfig).
const AdminConfigFile = "admin.json"

// Config configures Run.
type Config struct {
	StateDir    string // CA, SQLite database and admin.json live here
	Listen      string // host:port, default DefaultListen
	DatabaseURL string // postgres://… ; empty means SQLite in StateDir
	// AdvertiseURL is the API URL written to admin.json; default derived
	// from the listening address.
	AdvertiseURL string
	// AdminConfig is an admin config (another controller's admin.json) to
	// take the admin token from when the database already has one and the
	// state dir has no valid admin.json: a database keeps its one bootstrap
	// admin token, so a second controller is given it rather than making
	// another.
	AdminConfig string
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
	// UserTokenTTL is how long the access tokens of users (cf auth) are
	// valid: default 20m. Tests shorten it to see the cf CLI refresh.
	UserTokenTTL time.Duration
	// Encryption is a new foundation's encryption between cells
	// (api.EncryptionOff, the default, or api.EncryptionWireGuard); a
	// foundation that has a mode keeps it.
	Encryption string
	// CellKeyRotation, if positive, asks every cell whose WireGuard key is
	// older than that for a new one (see docs/encryption.md).
	CellKeyRotation time.Duration
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
	st, err := openStore(ctx, dbURL, log)
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	defer st.Close()
	logRouteMigrations(log, st.RouteMigrations())

	if !cfg.Overlay.Overlay.IsValid() {
		cfg.Overlay, _ = ipam.NewPool(ipam.DefaultOverlay, ipam.DefaultSubnetPrefix)
	}
	if err := st.OverlaySettings(ctx, cfg.Overlay); err != nil {
		return err
	}
	if cfg.CellKeyRotation < 0 {
		return fmt.Errorf("--cell-key-rotation %v: must not be negative (0 turns it off)", cfg.CellKeyRotation)
	}
	encryption, err := initEncryption(ctx, st, cfg.Encryption, log)
	if err != nil {
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
	if err := ensureAdminConfig(ctx, st, filepath.Join(cfg.StateDir, AdminConfigFile), cfg.AdminConfig, apiURL, string(ca.CertPEM), log); err != nil {
		return err
	}

	// Long polls (cells watching their state, users following flows) end
	// when the server shuts down, instead of holding Shutdown for their
	// whole wait.
	baseCtx, cancelBase := context.WithCancel(context.Background())
	defer cancelBase()
	handler := NewServer(st, ca, cfg.Overlay, id, log)
	if cfg.UserTokenTTL > 0 {
		handler.accessTTL = cfg.UserTokenTTL
	}
	srv := &http.Server{
		BaseContext:       func(net.Listener) context.Context { return baseCtx },
		Handler:           handler,
		TLSConfig:         TLSConfig(cert, ca),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          serverErrorLog(log),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	if cfg.CellKeyRotation > 0 {
		go rotateKeysEvery(baseCtx, st, cfg.CellKeyRotation, log)
	}
	log.Info("controller serving", "url", apiURL, "listen", ln.Addr().String(), "state_dir", cfg.StateDir, "store", storeKind(cfg.DatabaseURL),
		"instance_ca_generation", instCA.Generation, "instance_cert_validity", id.Validity, "trust_domain", id.TrustDomain,
		"encryption", encryption, "cell_key_rotation", cfg.CellKeyRotation)
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

// openStore opens the store at url, waiting for its database while it is
// unavailable (down, or starting), so that controllers may start before
// their database or during its failover; other errors end the wait.
func openStore(ctx context.Context, url string, log *slog.Logger) (*store.Store, error) {
	wait := 100 * time.Millisecond
	for {
		st, err := store.Open(ctx, url)
		if err == nil || !store.IsUnavailable(err) || ctx.Err() != nil {
			return st, err
		}
		log.Warn("database unavailable: waiting for it", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
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

// ensureAdminConfig keeps path, the state dir's admin.json, holding the
// database's bootstrap admin token, which is made once per database:
//   - an admin.json whose token is still valid is kept, its URL and CA
//     refreshed, so a controller that moved port is still found;
//   - else, given from (another controller's admin.json, --admin-config),
//     its token is taken if the database knows it as a valid admin token;
//   - else the bootstrap admin token is made and written, unless the
//     database already has one (another controller made it): then nothing
//     is written, and the log says how to get it.
func ensureAdminConfig(ctx context.Context, st *store.Store, path, from, apiURL, caPEM string, log *slog.Logger) error {
	cfg, err := api.LoadClientConfig(path)
	switch {
	case err == nil:
		t, err := st.TokenByHash(ctx, HashToken(cfg.Token))
		if err == nil && t.Scope == ScopeAdmin && !t.Expired(time.Now()) {
			cfg.APIURL, cfg.CACert = apiURL, caPEM
			return cfg.Save(path)
		}
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("check admin token: %w", err)
		}
		log.Warn("the admin token in admin.json is no longer valid (rotated, revoked or expired)", "path", path)
	case errors.Is(err, fs.ErrNotExist):
	default:
		return fmt.Errorf("read %s: %w", path, err)
	}
	if from != "" {
		given, err := api.LoadClientConfig(from)
		if err != nil {
			return fmt.Errorf("read --admin-config: %w", err)
		}
		t, err := st.TokenByHash(ctx, HashToken(given.Token))
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("check admin token of %s: %w", from, err)
		}
		if err != nil || t.Scope != ScopeAdmin || t.Expired(time.Now()) {
			return fmt.Errorf("--admin-config %s: its token is not a valid admin token of this database (rotated, revoked, expired, or another foundation's)", from)
		}
		cfg = api.ClientConfig{APIURL: apiURL, CACert: caPEM, Token: given.Token}
		if err := cfg.Save(path); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
		log.Info("wrote admin client config with the given admin token", "path", path, "from", from)
		return nil
	}
	value, hash := NewToken()
	_, err = st.CreateToken(ctx, store.Token{Name: bootstrapAdminName, Scope: ScopeAdmin, Bootstrap: true}, hash)
	if errors.Is(err, store.ErrConflict) {
		log.Warn("the database already has an admin token (another controller made it): not making another, and not writing admin.json. "+
			"To get it, copy admin.json from that controller's state dir to this path, or restart with --admin-config FILE; "+
			"`trellis rotate-admin-token` replaces it", "path", path)
		return nil
	}
	if err != nil {
		return fmt.Errorf("create admin token: %w", err)
	}
	cfg = api.ClientConfig{APIURL: apiURL, CACert: caPEM, Token: value}
	if err := cfg.Save(path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	log.Info("wrote admin client config", "path", path)
	return nil
}

// logRouteMigrations logs what the migration giving routes a space changed
// beyond that: the operator must know which apps lost a route.
func logRouteMigrations(log *slog.Logger, ms []store.RouteMigration) {
	for _, m := range ms {
		if m.Deleted {
			log.Warn("migration: deleted a route no space could own", "route", m.URL, "route_guid", m.RouteGUID)
			continue
		}
		log.Warn("migration: route's apps spanned spaces: kept in its oldest app's space, unmapped the others",
			"route", m.URL, "route_guid", m.RouteGUID, "space", m.SpaceGUID, "removed_apps", m.RemovedAppGUIDs)
	}
}
