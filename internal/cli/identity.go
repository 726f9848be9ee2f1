package cli

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
)

// Instance identity commands: the instance CA and its rotation, each app's
// TLS on port 61443, and `app`, which shows one app (and its GUID, which
// the identity certificates name).

// tlsPort is the port on which the platform terminates TLS for instances.
const tlsPort = 61443

var appCommand = &command{
	name:    "app",
	group:   groupApps,
	summary: "Show an app in the target space, or only its GUID",
	usage:   "app APP [--guid]",
	example: "trellis app backend\ntrellis app backend --guid",
	config:  true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		guidOnly := fs.Bool("guid", false, "Print only the app's GUID (as `cf app APP --guid`)")
		return func(ctx context.Context, args []string) error {
			name, err := nameArg(args, "APP", "app")
			if err != nil {
				return err
			}
			s, t, a, err := e.targetApp(ctx, name)
			if err != nil {
				return err
			}
			if *guidOnly {
				s.printf("%s\n", a.GUID)
				return nil
			}
			s.printf("Showing app %s in org %s / space %s as %s...\n\n", a.Name, t.org.Name, t.space.Name, s.user())
			routes, err := s.client.Routes(ctx, api.RouteFilter{AppGUIDs: []string{a.GUID}})
			if err != nil {
				return err
			}
			var urls []string
			for _, r := range routes {
				urls = append(urls, orDefault(r.URL, r.Host))
			}
			ins, err := s.client.Instances(ctx, a.GUID)
			if err != nil {
				return err
			}
			running := 0
			for _, in := range ins {
				if in.State == "RUNNING" {
					running++
				}
			}
			desired := a.Instances
			if a.State != "STARTED" {
				desired = 0
			}
			tlsSetting, err := s.client.AppTLS(ctx, a.GUID)
			if err != nil {
				return err
			}
			s.printTable(nil, [][]string{
				{"name:", a.Name},
				{"guid:", a.GUID},
				{"requested state:", strings.ToLower(a.State)},
				{"instances:", fmt.Sprintf("%d/%d", running, desired)},
				{"routes:", strings.Join(uniq(urls), ", ")},
				{"client certificates on 61443:", requiredOrNot(tlsSetting.RequireClientCert)},
			})
			return nil
		}
	},
}

func requiredOrNot(required bool) string {
	if required {
		return "required"
	}
	return "not required"
}

var instanceCACommand = &command{
	name:    "instance-ca",
	group:   groupControlPlane,
	summary: "Show the CA of instance identity certificates: generation, rotation, trust bundle",
	usage:   "instance-ca [--pem | --json]",
	example: "trellis instance-ca\ntrellis instance-ca --pem",
	config:  true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		asPEM := fs.Bool("pem", false, "Print only the trust bundle (the roots, PEM), as instances trust it")
		asJSON := fs.Bool("json", false, "Print JSON")
		return func(ctx context.Context, args []string) error {
			if err := wantArgs(args); err != nil {
				return err
			}
			if *asPEM && *asJSON {
				return badUsage("--pem and --json cannot be used together")
			}
			s, err := e.session()
			if err != nil {
				return err
			}
			ca, err := s.client.InstanceCA(ctx)
			if err != nil {
				return err
			}
			switch {
			case *asJSON:
				return s.printJSON(ca)
			case *asPEM:
				s.printf("%s", ca.Bundle)
				return nil
			}
			e.printInstanceCA(ca)
			return nil
		}
	},
}

// printInstanceCA prints the CA's state, one field a line.
func (e *env) printInstanceCA(ca api.InstanceCA) {
	rotating := "no"
	if ca.Rotating && ca.RotationStarted != nil {
		safe := ca.RotationStarted.Add(time.Duration(ca.ValiditySeconds) * time.Second)
		rotating = fmt.Sprintf("since %s (finish it from %s: `trellis rotate-instance-ca --finish`)",
			ca.RotationStarted.UTC().Format(time.RFC3339), safe.UTC().Format(time.RFC3339))
	}
	rows := [][]string{
		{"generation:", fmt.Sprint(ca.Generation)},
		{"rotating:", rotating},
		{"trust domain:", ca.TrustDomain},
		{"certificate validity:", (time.Duration(ca.ValiditySeconds) * time.Second).String()},
		{"intermediate:", ca.IntermediateName},
	}
	for _, r := range bundleRoots(ca.Bundle) {
		rows = append(rows, []string{"trusted root:", r})
	}
	e.printTable(nil, rows)
}

// bundleRoots describes each certificate of a PEM bundle: its name and
// expiry.
func bundleRoots(bundle string) []string {
	var out []string
	for rest := []byte(bundle); ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return out
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			out = append(out, "(unreadable certificate: "+err.Error()+")")
			continue
		}
		out = append(out, fmt.Sprintf("%s (until %s)", c.Subject.CommonName, c.NotAfter.Format("2006-01-02")))
	}
}

var rotateInstanceCACommand = &command{
	name:    "rotate-instance-ca",
	group:   groupControlPlane,
	summary: "Begin or finish a rotation of the instance CA (admin)",
	usage:   "rotate-instance-ca [--finish [--force]]",
	example: "trellis rotate-instance-ca\ntrellis rotate-instance-ca --finish\ntrellis rotate-instance-ca --finish --force",
	config:  true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		finish := fs.Bool("finish", false, "Finish the rotation under way: stop trusting the old root")
		force := fs.Bool("force", false, "With --finish: finish before a certificate validity has passed since the rotation began (certificates signed before it stop verifying)")
		return func(ctx context.Context, args []string) error {
			if err := wantArgs(args); err != nil {
				return err
			}
			if *force && !*finish {
				return badUsage("--force is only for --finish")
			}
			s, err := e.session()
			if err != nil {
				return err
			}
			req := api.InstanceCARotation{Action: "begin", Force: *force}
			if *finish {
				req.Action = "finish"
				s.printf("Finishing the rotation of the instance CA as %s...\n", s.user())
			} else {
				s.printf("Beginning a rotation of the instance CA as %s...\n", s.user())
			}
			ca, err := s.client.RotateInstanceCA(ctx, req)
			if err != nil {
				return err
			}
			s.ok()
			s.printf("\n")
			if *finish {
				s.printf("The old root is no longer trusted; cells renew every certificate.\n\n")
			} else {
				s.printf("Both roots are trusted now; cells renew every certificate with the new intermediate.\n\n")
			}
			e.printInstanceCA(ca)
			return nil
		}
	},
}

var tlsCommand = &command{
	name:    "tls",
	group:   groupPolicies,
	summary: "Show an app's automatic TLS on port 61443: client certificates, allowed clients",
	usage:   "tls APP [--json]",
	example: "trellis tls backend",
	config:  true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		asJSON := fs.Bool("json", false, "Print JSON")
		return func(ctx context.Context, args []string) error {
			name, err := nameArg(args, "APP", "app")
			if err != nil {
				return err
			}
			s, _, a, err := e.targetApp(ctx, name)
			if err != nil {
				return err
			}
			got, err := s.client.AppTLS(ctx, a.GUID)
			if err != nil {
				return err
			}
			if *asJSON {
				return s.printJSON(got)
			}
			clients, err := s.tlsClients(ctx, a.GUID)
			if err != nil {
				return err
			}
			allowed := "none: add one with `trellis add-network-policy SOURCE_APP " + a.Name + " --protocol tcp --port 61443`"
			if len(clients) > 0 {
				allowed = strings.Join(clients, ", ")
			}
			s.printTable(nil, [][]string{
				{"app:", a.Name},
				{"client certificates on 61443:", requiredOrNot(got.RequireClientCert)},
				{"apps allowed on tcp/61443:", allowed},
			})
			return nil
		}
	},
}

// tlsClients names the apps that a policy allows to reach app on
// tcp/61443, sorted (GUIDs for apps the caller may not see).
func (s *session) tlsClients(ctx context.Context, app string) ([]string, error) {
	ps, err := s.client.Policies(ctx, api.PolicyFilter{DestIDs: []string{app}})
	if err != nil {
		return nil, err
	}
	var srcs []string
	for _, p := range ps {
		d := p.Destination
		if p.Destination.ID == app && d.Protocol == "tcp" && d.Ports.Start <= tlsPort && tlsPort <= d.Ports.End {
			srcs = append(srcs, p.Source.ID)
		}
	}
	apps, err := s.appsByGUID(ctx, srcs)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, g := range uniq(srcs) {
		names = append(names, orDefault(apps[g].Name, g))
	}
	slices.Sort(names)
	return names, nil
}

var setTLSCommand = &command{
	name:    "set-tls",
	group:   groupPolicies,
	summary: "Make an app's port 61443 require client certificates (only apps with a policy to it on 61443), or not",
	usage:   "set-tls APP --require-client-cert\nset-tls APP --no-require-client-cert",
	example: "trellis set-tls backend --require-client-cert\ntrellis set-tls backend --no-require-client-cert",
	config:  true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		require := fs.Bool("require-client-cert", false, "Demand a client certificate from the instance CA, of an app a policy allows on tcp/61443")
		noRequire := fs.Bool("no-require-client-cert", false, "Accept any client that the network policies let through (the default)")
		return func(ctx context.Context, args []string) error {
			if err := wantArgs(args, "APP"); err != nil {
				return err
			}
			if *require == *noRequire {
				return badUsage("give exactly one of --require-client-cert and --no-require-client-cert")
			}
			if err := checkName("app", args[0]); err != nil {
				return err
			}
			s, t, a, err := e.targetApp(ctx, args[0])
			if err != nil {
				return err
			}
			s.printf("Setting TLS of app %s in org %s / space %s as %s...\n", a.Name, t.org.Name, t.space.Name, s.user())
			got, err := s.client.SetAppTLS(ctx, a.GUID, api.AppTLS{RequireClientCert: *require})
			if err != nil {
				return err
			}
			s.ok()
			if got.RequireClientCert {
				s.printf("\nPort 61443 of %s now requires a client certificate from the instance CA, of an app with a policy to %s on tcp/61443.\n", a.Name, a.Name)
			} else {
				s.printf("\nPort 61443 of %s accepts any client that the network policies let through.\n", a.Name)
			}
			return nil
		}
	},
}
