package cli

import (
	"context"
	"flag"
	"log/slog"
	"net/netip"
	"strings"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/controller"
	"github.com/trellis-c2c/trellis/internal/identity"
	"github.com/trellis-c2c/trellis/internal/ipam"
)

var controllerCommand = &command{
	name:    "controller",
	group:   groupControlPlane,
	summary: "Run the control plane: policy API, apps and routes, CA, store",
	usage:   "controller --state-dir DIR [--listen ADDR] [--database-url URL] [--advertise-url URL] [--admin-config FILE] [--overlay-cidr CIDR --cell-subnet-prefix N] [--instance-cert-validity D] [--trust-domain NAME] [--encryption wireguard|off] [--cell-key-rotation D]",
	example: "trellis controller --state-dir /var/lib/trellis\n" +
		"trellis controller --state-dir /var/lib/trellis --listen 0.0.0.0:4002 --database-url 'postgres://trellis:secret@db:5432/trellis?sslmode=require'\n" +
		"trellis controller --state-dir /var/lib/trellis2 --database-url 'postgres://...' --admin-config /path/to/first/admin.json\n" +
		"trellis controller --state-dir /tmp/trellis --instance-cert-validity 5m --trust-domain test.internal\n" +
		"trellis controller --state-dir /var/lib/trellis --encryption wireguard --cell-key-rotation 720h",
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		var cfg controller.Config
		var logLevel string
		fs.StringVar(&cfg.StateDir, "state-dir", "", "Keep the CA, the SQLite store and admin.json in `DIR` (created 0700; required)")
		fs.StringVar(&cfg.Listen, "listen", controller.DefaultListen, "Serve HTTPS on `ADDR` (host:port)")
		fs.StringVar(&cfg.DatabaseURL, "database-url", "", "Use PostgreSQL at `URL` (postgres://...) instead of SQLite in the state dir; several controllers may share it")
		fs.StringVar(&cfg.AdvertiseURL, "advertise-url", "", "API `URL` written to admin.json (default https://ADDR, loopback for a wildcard address)")
		fs.StringVar(&cfg.AdminConfig, "admin-config", "", "Take the admin token from `FILE` (another controller's admin.json) when the database already has one: a database keeps one admin token")
		fs.StringVar(&logLevel, "log-level", "info", "Log `LEVEL`: debug, info, warn or error")
		overlay := fs.String("overlay-cidr", ipam.DefaultOverlay.String(), "The overlay network `CIDR` (fixed at the first start)")
		subnetLen := fs.Int("cell-subnet-prefix", ipam.DefaultSubnetPrefix, "Lease each cell a subnet of prefix length `N`")
		fs.DurationVar(&cfg.InstanceCertValidity, "instance-cert-validity", controller.DefaultInstanceCertValidity,
			"Instance identity certificates are valid for `DURATION` (at least 1m; cells renew them well before)")
		fs.StringVar(&cfg.TrustDomain, "trust-domain", identity.DefaultTrustDomain, "SPIFFE trust domain `NAME` of instance certificates' URIs (spiffe://NAME/org/...)")
		fs.StringVar(&cfg.Encryption, "encryption", api.EncryptionOff, "Encrypt traffic between cells of a new foundation with `MODE` wireguard, or not (off); a foundation keeps its mode (change it with trellis encryption)")
		fs.DurationVar(&cfg.CellKeyRotation, "cell-key-rotation", 0, "Have cells replace WireGuard keys older than `DURATION` (e.g. 720h; 0: only trellis rotate-cell-keys does)")
		return func(ctx context.Context, args []string) error {
			if cfg.Encryption != api.EncryptionOff && cfg.Encryption != api.EncryptionWireGuard {
				return badInput("invalid --encryption %q: use wireguard or off", cfg.Encryption)
			}
			if cfg.CellKeyRotation < 0 {
				return badInput("invalid --cell-key-rotation %v: must not be negative (0 turns it off)", cfg.CellKeyRotation)
			}
			prefix, err := netip.ParsePrefix(*overlay)
			if err != nil {
				return badInput("invalid --overlay-cidr %q: %v", *overlay, err)
			}
			if cfg.Overlay, err = ipam.NewPool(prefix, *subnetLen); err != nil {
				return badInput("invalid --overlay-cidr/--cell-subnet-prefix: %v", err)
			}
			if len(args) > 0 {
				return badUsage("controller takes no arguments, got %q", strings.Join(args, " "))
			}
			if cfg.InstanceCertValidity < controller.MinInstanceCertValidity {
				return badInput("invalid --instance-cert-validity %v: at least %v", cfg.InstanceCertValidity, controller.MinInstanceCertValidity)
			}
			if err := identity.ValidateTrustDomain(cfg.TrustDomain); err != nil {
				return badInput("--trust-domain: %v", err)
			}
			if cfg.StateDir == "" {
				return badUsage("--state-dir is required")
			}
			if cfg.DatabaseURL != "" && !strings.HasPrefix(cfg.DatabaseURL, "postgres://") && !strings.HasPrefix(cfg.DatabaseURL, "postgresql://") {
				return badInput("invalid --database-url: must start with postgres:// or postgresql:// (leave it out for SQLite in the state dir)")
			}
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return badInput("invalid --log-level %q: use debug, info, warn or error", logLevel)
			}
			cfg.Log = slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: level}))
			return controller.Run(ctx, cfg)
		}
	},
}
