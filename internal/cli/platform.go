package cli

import (
	"context"
	"flag"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
)

// Control plane commands: log in, target, orgs, spaces and tokens.

var loginCommand = &command{
	name:    "login",
	group:   groupControlPlane,
	summary: "Log in to a controller with the config it wrote (admin.json)",
	usage:   "login --config-from FILE [--token TOKEN [--user NAME]] [--config DEST]",
	example: "trellis login --config-from /var/lib/trellis/admin.json\n" +
		"trellis login --config-from admin.json --token trls_... --user ci --config ci.json",
	config:     true,
	configHelp: "Write the CLI config to `FILE` (default $TRELLIS_CONFIG, else ~/.trellis/config.json)",
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		from := fs.String("config-from", "", "Read the controller's URL, CA and token from `FILE` (STATE/admin.json)")
		token := fs.String("token", "", "Use `TOKEN` (from create-token) instead of the file's")
		user := fs.String("user", "", "Show `NAME` as the user in messages (default admin; with --token, api-token)")
		return func(ctx context.Context, args []string) error {
			if err := wantArgs(args); err != nil {
				return err
			}
			if err := requireFlags(fs, "config-from"); err != nil {
				return err
			}
			if *user != "" {
				if err := checkName("user", *user); err != nil {
					return err
				}
			}
			cfg, err := api.LoadClientConfig(*from)
			if err != nil {
				return err
			}
			if *token != "" {
				cfg.Token = *token
				cfg.User = "api-token"
			}
			if *user != "" {
				cfg.User = *user
			}
			c, err := api.NewClient(cfg)
			if err != nil {
				return fmt.Errorf("%s: %w", *from, err)
			}
			h, err := c.Health(ctx)
			if err != nil {
				return fmt.Errorf("controller at %s does not answer: %w", cfg.APIURL, err)
			}
			if h.Status != "ok" {
				return fmt.Errorf("controller at %s is not healthy: status %q", cfg.APIURL, h.Status)
			}
			// /health takes no token: check the token with a call that does.
			if _, err := c.Orgs(ctx, api.OrgFilter{Names: []string{orDefault(cfg.Org, defaultOrg)}}); err != nil {
				return fmt.Errorf("controller at %s refused the token: %w", cfg.APIURL, err)
			}
			path, _, err := e.configPath()
			if err != nil {
				return err
			}
			if err := cfg.Save(path); err != nil {
				return fmt.Errorf("save config: %w", err)
			}
			e.printf("Logged in to %s\n", cfg.APIURL)
			e.ok()
			return nil
		}
	},
}

var targetCommand = &command{
	name:    "target",
	group:   groupControlPlane,
	summary: "Set or view the targeted org or space",
	usage:   "target [-o ORG] [-s SPACE]",
	example: "trellis target\ntrellis target -o my-org -s my-space",
	config:  true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		orgFlag := fs.String("o", "", "Target `ORG`")
		spaceFlag := fs.String("s", "", "Target `SPACE`")
		return func(ctx context.Context, args []string) error {
			if err := wantArgs(args); err != nil {
				return err
			}
			if err := checkSpaceFlags(*orgFlag, *spaceFlag); err != nil {
				return err
			}
			s, err := e.session()
			if err != nil {
				return err
			}
			if *orgFlag == "" && *spaceFlag == "" {
				s.printTarget()
				return nil
			}
			org, err := s.org(ctx, orDefault(*orgFlag, s.orgName()))
			if err != nil {
				return err
			}
			var space api.Space
			if *spaceFlag != "" || *orgFlag == "" {
				space, err = s.space(ctx, org, orDefault(*spaceFlag, s.spaceName()))
			} else {
				space, err = s.pickSpace(ctx, org)
			}
			if err != nil {
				return err
			}
			s.cfg.Org, s.cfg.Space = org.Name, space.Name
			if err := s.cfg.Save(s.path); err != nil {
				return fmt.Errorf("save config: %w", err)
			}
			s.printTarget()
			return nil
		}
	},
}

// pickSpace chooses the space to target in a newly targeted org: the one
// named as the current space, else "default", else its only space.
func (s *session) pickSpace(ctx context.Context, org api.Organization) (api.Space, error) {
	ss, err := s.client.Spaces(ctx, api.SpaceFilter{OrgGUIDs: []string{org.GUID}})
	if err != nil {
		return api.Space{}, err
	}
	for _, name := range []string{s.spaceName(), defaultSpace} {
		if i := slices.IndexFunc(ss, func(sp api.Space) bool { return sp.Name == name }); i >= 0 {
			return ss[i], nil
		}
	}
	if len(ss) == 1 {
		return ss[0], nil
	}
	return api.Space{}, fmt.Errorf("org %s has %d spaces and none named %s: pass -s SPACE", org.Name, len(ss), s.spaceName())
}

func (s *session) printTarget() {
	s.printTable(nil, [][]string{
		{"API endpoint:", s.cfg.APIURL},
		{"user:", s.user()},
		{"org:", s.orgName()},
		{"space:", s.spaceName()},
	})
}

var orgsCommand = listCommand(listing[api.Organization]{
	command: command{name: "orgs", group: groupControlPlane, summary: "List the orgs you can see (a space token: its spaces' orgs)",
		usage: "orgs [--json]", example: "trellis orgs"},
	fetch: func(ctx context.Context, l *listRun) ([]api.Organization, error) {
		l.heading("Getting orgs as %s...", l.user())
		return l.client.Orgs(ctx, api.OrgFilter{})
	},
	order:  func(a, b api.Organization) int { return strings.Compare(a.Name, b.Name) },
	noun:   "orgs",
	header: []string{"name"},
	row:    func(o api.Organization) []string { return []string{o.Name} },
})

var createOrgCommand = &command{
	name:    "create-org",
	group:   groupControlPlane,
	summary: "Create an org",
	usage:   "create-org ORG",
	example: "trellis create-org my-org",
	config:  true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		return func(ctx context.Context, args []string) error {
			name, err := nameArg(args, "ORG", "org")
			if err != nil {
				return err
			}
			s, err := e.session()
			if err != nil {
				return err
			}
			s.printf("Creating org %s as %s...\n", name, s.user())
			if err := ensure(s, fmt.Sprintf("Org %s already exists.", name),
				func() (api.Organization, error) { return s.org(ctx, name) },
				func() (api.Organization, error) { return s.client.CreateOrg(ctx, name) }); err != nil {
				return err
			}
			s.printf("\nTIP: Use 'trellis target -o %q' to target new org\n", name)
			return nil
		}
	},
}

var spacesCommand = listCommand(listing[api.Space]{
	command: command{name: "spaces", group: groupControlPlane, summary: "List all spaces in an org",
		usage: "spaces [-o ORG] [--json]", example: "trellis spaces\ntrellis spaces -o my-org --json"},
	filter: &nameFilter{flag: "o", help: "List the spaces of `ORG` (default: the targeted org)", kind: "org", emptyIsDefault: true},
	fetch: func(ctx context.Context, l *listRun) ([]api.Space, error) {
		org, err := l.org(ctx, orDefault(l.filter, l.orgName()))
		if err != nil {
			return nil, err
		}
		l.heading("Getting spaces in org %s as %s...", org.Name, l.user())
		return l.client.Spaces(ctx, api.SpaceFilter{OrgGUIDs: []string{org.GUID}})
	},
	order:  func(a, b api.Space) int { return strings.Compare(a.Name, b.Name) },
	noun:   "spaces",
	header: []string{"name"},
	row:    func(sp api.Space) []string { return []string{sp.Name} },
})

var createSpaceCommand = &command{
	name:    "create-space",
	group:   groupControlPlane,
	summary: "Create a space",
	usage:   "create-space SPACE [-o ORG]",
	example: "trellis create-space my-space\ntrellis create-space my-space -o my-org",
	config:  true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		orgFlag := fs.String("o", "", "Create the space in `ORG` (default: the targeted org)")
		return func(ctx context.Context, args []string) error {
			name, err := nameArg(args, "SPACE", "space")
			if err != nil {
				return err
			}
			if err := checkSpaceFlags(*orgFlag, ""); err != nil {
				return err
			}
			s, err := e.session()
			if err != nil {
				return err
			}
			org, err := s.org(ctx, orDefault(*orgFlag, s.orgName()))
			if err != nil {
				return err
			}
			s.printf("Creating space %s in org %s as %s...\n", name, org.Name, s.user())
			if err := ensure(s, fmt.Sprintf("Space %s already exists", name),
				func() (api.Space, error) { return s.space(ctx, org, name) },
				func() (api.Space, error) { return s.client.CreateSpace(ctx, org.GUID, name) }); err != nil {
				return err
			}
			s.printf("\nTIP: Use 'trellis target -o %q -s %q' to target new space\n", org.Name, name)
			return nil
		}
	},
}

// Token scopes, as docs/api.md defines them.
const (
	scopeAdmin = "network.admin"
	scopeWrite = "network.write"
)

var createTokenCommand = &command{
	name:    "create-token",
	group:   groupControlPlane,
	summary: "Create an API token (admin only); it is shown once",
	usage: "create-token --scope network.write --space SPACE [--org ORG] [--name NAME] [--ttl DURATION] [--json]\n" +
		"create-token --scope network.admin [--name NAME] [--ttl DURATION] [--json]",
	example: "trellis create-token --scope network.write --space my-space --name ci\n" +
		"trellis create-token --scope network.write --space my-space --name deploy --ttl 24h\n" +
		"trellis create-token --scope network.admin --name ops --json",
	config: true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		scope := fs.String("scope", "", "`SCOPE` of the token: network.write (its space only) or network.admin (everything)")
		spaceFlag := fs.String("space", "", "Let a network.write token act in `SPACE`")
		orgFlag := fs.String("org", "", "The `ORG` of --space (default: the targeted org)")
		name := fs.String("name", "", "Label the token with `NAME`")
		ttl := fs.Duration("ttl", 0, "The token expires after `DURATION` (default 720h, 30 days; at most 8760h, 365 days)")
		asJSON := fs.Bool("json", false, "Print the token as JSON")
		return func(ctx context.Context, args []string) error {
			if err := wantArgs(args); err != nil {
				return err
			}
			if err := requireFlags(fs, "scope"); err != nil {
				return err
			}
			switch {
			case *scope != scopeWrite && *scope != scopeAdmin:
				return badUsage("SCOPE must be %q or %q", scopeWrite, scopeAdmin)
			case *orgFlag != "" && *spaceFlag == "":
				return badUsage("--org needs --space: it names the org of the space")
			case *scope == scopeWrite && *spaceFlag == "":
				return badUsage("--scope %s needs --space SPACE", scopeWrite)
			case *scope == scopeAdmin && *spaceFlag != "":
				return badUsage("--scope %s takes no --space: an admin token acts everywhere", scopeAdmin)
			case setFlags(fs)["ttl"] && (*ttl < time.Second || *ttl > api.MaxTokenTTL):
				return badUsage("--ttl must be from 1s to 8760h (365 days), got %v", *ttl)
			}
			for _, n := range [][2]string{{"token", *name}, {"space", *spaceFlag}, {"org", *orgFlag}} {
				if n[1] != "" {
					if err := checkName(n[0], n[1]); err != nil {
						return err
					}
				}
			}
			s, err := e.session()
			if err != nil {
				return err
			}
			req := api.TokenRequest{Name: *name, Scope: *scope, TTLSeconds: int64((*ttl + time.Second - 1) / time.Second)}
			what := "with scope " + *scope
			if *name != "" {
				what = *name + " " + what
			}
			if *spaceFlag != "" {
				t, err := s.targetIn(ctx, orDefault(*orgFlag, s.orgName()), *spaceFlag)
				if err != nil {
					return err
				}
				req.Spaces = []string{t.space.GUID}
				what += fmt.Sprintf(" for org %s / space %s", t.org.Name, t.space.Name)
			}
			if !*asJSON {
				s.printf("Creating token %s as %s...\n", what, s.user())
			}
			tok, err := s.client.CreateToken(ctx, req)
			if err != nil {
				return err
			}
			if *asJSON {
				return s.printJSON(tok)
			}
			s.printf("%s\n", tok.Value)
			if tok.ExpiresAt != nil {
				s.printf("Expires at %s\n", tok.ExpiresAt.Format(time.RFC3339))
			}
			s.ok()
			return nil
		}
	},
}
