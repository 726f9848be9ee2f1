package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"strconv"

	"github.com/trellis-c2c/trellis/internal/api"
)

var flowsCommand = &command{
	name:    "flows",
	group:   groupPolicies,
	summary: "Show logged connection attempts, allowed and denied, with the reason",
	usage:   "flows [--app APP] [--denied] [--follow] [--json]",
	example: "trellis flows --denied\ntrellis flows --app backend --follow",
	config:  true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		app := fs.String("app", "", "Only flows from or to `APP` (in the target space)")
		denied := fs.Bool("denied", false, "Only denied attempts")
		follow := fs.Bool("follow", false, "Keep printing new flows until interrupted")
		asJSON := fs.Bool("json", false, "Print JSON (one object per line with --follow)")
		return func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return badUsage("flows takes no arguments; use --app APP")
			}
			s, err := e.session()
			if err != nil {
				return err
			}
			var apps []string
			if *app != "" {
				t, err := s.target(ctx)
				if err != nil {
					return err
				}
				a, err := s.app(ctx, t.space, *app)
				if err != nil {
					return err
				}
				apps = []string{a.GUID}
			}
			verdict := ""
			if *denied {
				verdict = "denied"
			}
			fl, err := s.client.Flows(ctx, apps, verdict, 0, 0)
			if err != nil {
				return err
			}
			if *asJSON && !*follow {
				return e.printJSON(nonNil(fl))
			}
			print := func(fl []api.FlowEvent) {
				for _, f := range fl {
					if *asJSON {
						b, _ := jsonLine(f)
						e.printf("%s\n", b)
						continue
					}
					e.printf("%s  %-7s %s/%d  %s -> %s  %s\n", f.Time.Local().Format("15:04:05.000"), f.Verdict, f.Protocol, f.DstPort,
						endpoint(f.SrcAppName, f.SrcIP, f.SrcPort), endpoint(f.DstAppName, f.DstIP, f.DstPort), f.Reason)
				}
			}
			if !*follow && len(fl) == 0 {
				e.printf("No flows logged yet.\n")
			}
			print(fl)
			var after int64
			if len(fl) > 0 {
				after = fl[len(fl)-1].ID
			}
			for *follow && ctx.Err() == nil {
				fl, err := s.client.Flows(ctx, apps, verdict, after, 25)
				if err != nil {
					if ctx.Err() != nil {
						return nil
					}
					return err
				}
				print(fl)
				if len(fl) > 0 {
					after = fl[len(fl)-1].ID
				}
			}
			return nil
		}
	},
}

func endpoint(app, ip string, port int) string {
	addr := ip + ":" + strconv.Itoa(port)
	if app == "" {
		return addr
	}
	return app + "(" + addr + ")"
}

var explainCommand = &command{
	name:    "explain",
	group:   groupPolicies,
	summary: "Say whether one app may connect to another on a port, and by which policy",
	usage: "explain SOURCE_APP DESTINATION_APP --port P [--protocol tcp|udp] [-s DEST_SPACE [-o DEST_ORG]]\n" +
		"explain SOURCE_APP --to IP[:PORT] [--port P] [--protocol tcp|udp|icmp]   (egress: security groups)",
	example: "trellis explain frontend backend --port 8080\ntrellis explain frontend backend --protocol udp --port 53\n" +
		"trellis explain backend --to 203.0.113.10:5432",
	config: true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		port := fs.String("port", "", "Destination `PORT`")
		protocol := fs.String("protocol", "tcp", "`PROTOCOL`: tcp or udp")
		space := fs.String("s", "", "The destination app's `SPACE` (default: the target)")
		org := fs.String("o", "", "The destination app's `ORG` (default: the target)")
		asJSON := fs.Bool("json", false, "Print JSON")
		to := fs.String("to", "", "Explain egress to `IP` or IP:PORT outside the overlay (security groups)")
		return func(ctx context.Context, args []string) error {
			if *to != "" {
				return e.explainEgress(ctx, args, *to, *port, *protocol, *asJSON)
			}
			if len(args) != 2 {
				return badUsage("explain needs SOURCE_APP and DESTINATION_APP")
			}
			if *port == "" {
				return badUsage("--port is required")
			}
			p, err := strconv.Atoi(*port)
			if err != nil || p < 1 || p > 65535 {
				return badInput("PORT must be an integer in 1-65535")
			}
			if *protocol != "tcp" && *protocol != "udp" {
				return badInput(`PROTOCOL must be "tcp" or "udp"`)
			}
			s, _, src, err := e.targetApp(ctx, args[0])
			if err != nil {
				return err
			}
			dt, err := s.targetIn(ctx, *org, *space)
			if err != nil {
				return err
			}
			dst, err := s.app(ctx, dt.space, args[1])
			if err != nil {
				return err
			}
			x, err := s.client.Explain(ctx, src.GUID, dst.GUID, *protocol, p)
			if err != nil {
				return err
			}
			if *asJSON {
				return e.printJSON(x)
			}
			verdict := "DENIED"
			if x.Allowed {
				verdict = "ALLOWED"
			}
			e.printf("%s: %s -> %s on %s/%d\n%s\n", verdict, src.Name, dst.Name, *protocol, p, x.Reason)
			if !x.Enforcement {
				e.printf("Warning: network policy enforcement is OFF for this foundation.\n")
			}
			return nil
		}
	},
}

var enforcementCommand = &command{
	name:    "enforcement",
	group:   groupPolicies,
	summary: "Show, or turn on or off, network policy enforcement for the foundation (admin)",
	usage:   "enforcement [on|off]",
	example: "trellis enforcement\ntrellis enforcement off",
	config:  true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		return func(ctx context.Context, args []string) error {
			if len(args) > 1 || (len(args) == 1 && args[0] != "on" && args[0] != "off") {
				return badUsage("enforcement takes on or off")
			}
			s, err := e.session()
			if err != nil {
				return err
			}
			if len(args) == 1 {
				if err := s.client.SetEnforcement(ctx, args[0] == "on"); err != nil {
					return err
				}
				if args[0] == "off" {
					fmt.Fprintln(e.stderr, "WARNING: network policy enforcement is now OFF: every instance can reach every other instance.")
				}
			}
			on, err := s.client.Enforcement(ctx)
			if err != nil {
				return err
			}
			e.printf("network policy enforcement: %s\n", map[bool]string{true: "on", false: "off"}[on])
			return nil
		}
	},
}

// jsonLine renders v as one line of JSON.
func jsonLine(v any) ([]byte, error) { return json.Marshal(v) }
