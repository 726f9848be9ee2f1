package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/trellis-c2c/trellis/internal/agent"
	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/cni"
	"github.com/trellis-c2c/trellis/internal/launcher"
	"github.com/trellis-c2c/trellis/internal/sampleapp"
)

var agentCommand = &command{
	name:    "agent",
	group:   groupControlPlane,
	summary: "Run a cell's agent: overlay lease, VXLAN, CNI socket, instances",
	usage:   "agent --controller URL[,URL...] --join-token T --ca-cert FILE --state-dir DIR [--netns NAME] [--underlay-interface IF] [--name CELL]",
	example: "trellis agent --controller https://10.0.0.5:4002 --join-token trlsj_... --ca-cert ca.crt --state-dir /var/lib/trellis-agent\n" +
		"trellis agent --state-dir /var/lib/trellis-agent",
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		var cfg agent.Config
		var logLevel string
		var controllers string
		fs.StringVar(&controllers, "controller", "", "The controllers' API `URL`s, comma-separated, tried in turn when one does not answer; a host name with several addresses is one controller per address (needed to join; remembered)")
		fs.StringVar(&cfg.JoinToken, "join-token", "", "One-time `TOKEN` from `trellis create-join-token` (first start only)")
		fs.StringVar(&cfg.CACertFile, "ca-cert", "", "The controller's CA certificate `FILE` (its state dir's ca.crt; first start only)")
		fs.StringVar(&cfg.StateDir, "state-dir", "", "Keep the cell's identity, key and container records in `DIR` (required)")
		fs.StringVar(&cfg.NetNS, "netns", "", "Program the network namespace `NAME` (or path) as this host; default: the agent's own (real hosts only)")
		fs.StringVar(&cfg.UnderlayInterface, "underlay-interface", "", "Run VXLAN over `IF`; default: the device of the default route")
		fs.StringVar(&cfg.Name, "name", "", "Cell `NAME` ([a-z0-9-]); default: the netns name, else the host name")
		fs.StringVar(&cfg.Socket, "socket", "", "Serve the CNI plugin on unix socket `PATH` (default STATE/agent.sock)")
		fs.BoolVar(&cfg.RunInstances, "run-instances", false, "Run the instances the controller places here (local foundation)")
		fs.StringVar(&cfg.InstanceNetNSPrefix, "instance-netns-prefix", "trellis-i-", "Name instance namespaces with `PREFIX` (with --run-instances)")
		fs.StringVar(&cfg.InstanceKeyType, "instance-key-type", "ecdsa-p256", "Make instance identity keys of `TYPE`: ecdsa-p256 or rsa-3072")
		fs.BoolVar(&cfg.LeaveOnExit, "leave-on-exit", false, "Leave the foundation (free the lease) when stopped")
		fs.Func("dns-upstream", "Forward names outside the internal domains to `HOST:PORT` (repeatable; default: answer them REFUSED)", func(v string) error {
			if _, err := netip.ParseAddrPort(v); err != nil {
				return fmt.Errorf("invalid --dns-upstream %q: want IP:PORT", v)
			}
			cfg.DNSUpstreams = append(cfg.DNSUpstreams, v)
			return nil
		})
		fs.StringVar(&logLevel, "log-level", "info", "Log `LEVEL`: debug, info, warn or error")
		return func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return badUsage("agent takes no arguments, got %q", strings.Join(args, " "))
			}
			if cfg.StateDir == "" {
				return badUsage("--state-dir is required")
			}
			for u := range strings.SplitSeq(controllers, ",") {
				if u = strings.TrimSpace(u); u == "" {
					continue
				}
				if !strings.HasPrefix(u, "https://") {
					return badInput("invalid --controller %q: must be an https:// URL", u)
				}
				cfg.ControllerURLs = append(cfg.ControllerURLs, u)
			}
			if cfg.JoinToken != "" && (len(cfg.ControllerURLs) == 0 || cfg.CACertFile == "") {
				return badUsage("--join-token needs --controller and --ca-cert")
			}
			if cfg.InstanceKeyType != "ecdsa-p256" && cfg.InstanceKeyType != "rsa-3072" {
				return badInput("invalid --instance-key-type %q: use ecdsa-p256 or rsa-3072", cfg.InstanceKeyType)
			}
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return badInput("invalid --log-level %q: use debug, info, warn or error", logLevel)
			}
			cfg.Log = slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: level}))
			return agent.Run(ctx, cfg)
		}
	},
}

var createJoinTokenCommand = &command{
	name:    "create-join-token",
	group:   groupControlPlane,
	summary: "Make a one-time token for a cell's agent to join with (admin only)",
	usage:   "create-join-token [--ttl DURATION]",
	example: "trellis create-join-token\ntrellis create-join-token --ttl 10m",
	config:  true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		ttl := fs.Duration("ttl", time.Hour, "How long the token stays valid (at most 168h)")
		return func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return badUsage("create-join-token takes no arguments")
			}
			if *ttl < time.Second || *ttl > 7*24*time.Hour {
				return badInput("invalid --ttl %s: must be between 1s and 168h", *ttl)
			}
			s, err := e.session()
			if err != nil {
				return err
			}
			tok, err := s.client.CreateJoinToken(ctx, int(ttl.Seconds()))
			if err != nil {
				return err
			}
			fmt.Fprintln(e.stdout, tok.Token)
			fmt.Fprintf(e.stderr, "valid until %s; use it once:\n  trellis agent --controller %s --join-token %s --ca-cert CA.crt --state-dir DIR\n",
				tok.ExpiresAt.Format(time.RFC3339), s.cfg.APIURL, tok.Token)
			return nil
		}
	},
}

var cellsCommand = listCommand(listing[api.Cell]{
	command: command{name: "cells", group: groupControlPlane,
		summary: "List the foundation's cells and their overlay leases (admin only)",
		usage:   "cells [--json]", example: "trellis cells"},
	jsonHelp:  "Print JSON",
	argsError: "cells takes no arguments",
	fetch:     func(ctx context.Context, l *listRun) ([]api.Cell, error) { return l.client.Cells(ctx) },
	noun:      "cells",
	header:    []string{"name", "underlay ip", "subnet", "healthy", "last seen"},
	row: func(c api.Cell) []string {
		return []string{c.Name, c.UnderlayIP.String(), c.Subnet.String(), strconv.FormatBool(c.Healthy), c.LastSeen.Format(time.RFC3339)}
	},
})

var deleteCellCommand = &command{
	name:    "delete-cell",
	group:   groupControlPlane,
	summary: "Remove a cell and free its overlay lease (admin only)",
	usage:   "delete-cell CELL",
	example: "trellis delete-cell cell3",
	config:  true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		return func(ctx context.Context, args []string) error {
			if len(args) != 1 {
				return badUsage("the required argument `CELL` was not provided")
			}
			s, err := e.session()
			if err != nil {
				return err
			}
			cells, err := s.client.Cells(ctx)
			if err != nil {
				return err
			}
			for _, c := range cells {
				if c.Name == args[0] {
					if err := s.client.DeleteCell(ctx, c.GUID); err != nil {
						return err
					}
					fmt.Fprintf(e.stdout, "Deleted cell %s (subnet %s)\nOK\n", c.Name, c.Subnet)
					return nil
				}
			}
			return fmt.Errorf("cell %s not found", args[0])
		}
	},
}

// defaultAgentSocket is where a real cell's agent serves the CNI plugin
// (`trellis agent --state-dir /var/lib/trellis-agent`).
const defaultAgentSocket = "/var/lib/trellis-agent/agent.sock"

var cniConfigCommand = &command{
	name:    "cni-config",
	group:   groupControlPlane,
	summary: "Print the CNI network configuration list for a cell's runtime (its plugin: the trellis-cni binary, in the runtime's CNI path)",
	usage: "cni-config [--cell CELL] [--socket PATH] [--name NETWORK]   (a real cell: its agent's socket)\n" +
		"cni-config --cell CELL [--state-dir DIR] [--name NETWORK]   (a cell of the local foundation: its agent's socket under DIR)",
	example: "trellis cni-config --cell cell1 --socket /var/lib/trellis-agent/agent.sock > /etc/cni/net.d/10-trellis.conflist\n" +
		"trellis cni-config --cell cell2 --state-dir " + launcher.DefaultStateDir,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		cell := fs.String("cell", "", "The cell's `NAME`: on a local foundation, the cell whose agent socket to use (required with several cells)")
		socket := fs.String("socket", "", "The agent's CNI socket `PATH` on a real cell (default "+defaultAgentSocket+
			", or the cell's socket on the local foundation in --state-dir when there is one)")
		dir := stateDirFlag(fs, e)
		name := fs.String("name", "trellis", "The network `NAME` runtimes refer to")
		return func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return badUsage("cni-config takes no arguments")
			}
			set := setFlags(fs)
			if set["socket"] && set["state-dir"] {
				return badUsage("give --socket (a real cell) or --state-dir (a local foundation), not both")
			}
			if set["socket"] {
				if !strings.HasPrefix(*socket, "/") {
					return badInput("invalid --socket %q: must be an absolute path", *socket)
				}
				_, err := e.stdout.Write(cni.ConfList(*name, *cell, *socket))
				return err
			}
			// A local foundation is meant when its state dir is named
			// (--state-dir, $TRELLIS_STATE_DIR) or there is one in the
			// default state dir; otherwise this is a real cell.
			named := set["state-dir"] || (e.getenv != nil && e.getenv("TRELLIS_STATE_DIR") != "")
			f, err := launcher.Load(*dir)
			switch {
			case errors.Is(err, os.ErrNotExist) && !named:
				_, err := e.stdout.Write(cni.ConfList(*name, *cell, defaultAgentSocket))
				return err
			case errors.Is(err, os.ErrNotExist):
				return fmt.Errorf("no local foundation in %s: start one with `trellis up`, or give a real cell's agent socket with --socket", *dir)
			case err != nil:
				return err
			}
			cells := strings.Join(f.CellNames(), ", ")
			if *cell == "" {
				if len(f.Cells) != 1 {
					return badUsage("the local foundation in %s has cells %s: choose one with --cell", *dir, cells)
				}
				*cell = f.Cells[0].Name
			}
			c, ok := f.Cell(*cell)
			if !ok {
				return fmt.Errorf("cell %s is not in the local foundation in %s (its cells: %s)", *cell, *dir, cells)
			}
			_, err = e.stdout.Write(cni.ConfList(*name, c.Name, c.Socket))
			return err
		}
	},
}

var sampleAppCommand = &command{
	name:    "sample-app",
	group:   groupLocal,
	summary: "Run the sample app: HTTP on $PORT with /proxy/ and /proxytls/, a UDP echo, and mutual TLS with --tls-port",
	usage: "sample-app [--also-port P]...   (HTTP on $PORT, default 8080: GET /, /proxy/HOST:PORT/PATH, /udp/HOST:PORT/MESSAGE; UDP echo)\n" +
		"sample-app --tls-port P [--require-app GUID]...   (mutual TLS, server side: the same over TLS on P, GET / shows the client's app)\n" +
		"sample-app   (mutual TLS, client side: GET /proxytls/HOST:PORT/PATH fetches over TLS presenting the instance certificate)",
	example: "trellis sample-app\n" +
		"trellis sample-app --also-port 9000\n" +
		"trellis sample-app --tls-port 9443\n" +
		"trellis sample-app --tls-port 9443 --require-app 0f7a3c52-1d2e-4b6a-9c1e-00000000f0f0",
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		var also portFlags
		fs.Var(&also, "also-port", "Serve the same on `PORT` too, TCP and UDP (repeatable)")
		var tlsPort portFlags
		fs.Var(&tlsPort, "tls-port", "Also serve the same over mutual TLS on `PORT`, with the instance certificate "+
			"($CF_INSTANCE_CERT, $CF_INSTANCE_KEY), to clients with an instance certificate the CA bundle "+
			"($SSL_CERT_FILE, $CF_SYSTEM_CERT_PATH) verifies: no certificate, or another CA's, fails the handshake. "+
			"Rotated certificates are picked up at the next handshake. Try it from another app's instance: "+
			"trellis exec frontend -- wget -qO- http://127.0.0.1:8080/proxytls/backend.apps.internal:PORT/ "+
			"(with a policy from frontend to backend on tcp PORT)")
		var apps appGUIDFlags
		fs.Var(&apps, "require-app", "With --tls-port, let in only clients of the app `GUID` (certificate OU app:GUID; "+
			"repeatable or comma-separated); a valid certificate of any other app gets 403 Forbidden naming that app")
		return func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return badUsage("sample-app takes no arguments")
			}
			if len(tlsPort) > 1 {
				return badUsage("--tls-port given %d times: the sample app serves TLS on one port", len(tlsPort))
			}
			if len(apps) > 0 && len(tlsPort) == 0 {
				return badUsage("--require-app needs --tls-port")
			}
			cfg, err := sampleapp.ConfigFromEnv(e.getenv)
			if err != nil {
				return err
			}
			servers := []sampleapp.Config{cfg}
			for _, p := range also {
				c := cfg
				c.Port = p
				servers = append(servers, c)
			}
			if len(tlsPort) == 1 {
				servers[0].TLS = &sampleapp.TLSOptions{Port: tlsPort[0], RequireApps: apps}
			}
			// Open every socket first, so a missing certificate or a taken
			// port fails the command before anything serves.
			var listening []*sampleapp.Server
			for _, c := range servers {
				s, err := sampleapp.Listen(c)
				if err != nil {
					for _, l := range listening {
						l.Close()
					}
					return err
				}
				listening = append(listening, s)
			}
			errc := make(chan error, len(listening))
			for _, s := range listening {
				go func() { errc <- s.Serve(ctx) }()
			}
			for range listening {
				if err := <-errc; err != nil {
					return err
				}
			}
			return nil
		}
	},
}

// appGUIDFlags is a repeatable flag of app GUIDs, each value one GUID or
// several separated by commas.
type appGUIDFlags []string

func (a *appGUIDFlags) String() string { return strings.Join(*a, ",") }
func (a *appGUIDFlags) Set(v string) error {
	guids, err := sampleapp.ParseAppGUIDs(v)
	if err != nil {
		return err
	}
	*a = append(*a, guids...)
	return nil
}

// portFlags is a repeatable port flag.
type portFlags []int

func (p *portFlags) String() string { return fmt.Sprint(*p) }
func (p *portFlags) Set(v string) error {
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("invalid port %q: 1-65535", v)
	}
	if n == sampleapp.ReservedPort {
		return fmt.Errorf("port %d is reserved for container networking", n)
	}
	*p = append(*p, n)
	return nil
}
