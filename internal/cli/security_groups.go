package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/trellis-c2c/trellis/internal/api"
)

// Application security groups: the cf CLI's verbs (create-security-group,
// bind-security-group, ...) against /v3/security_groups.

// readRules reads a rules argument: a path to a JSON file, or the JSON
// itself ("[{...}]").
func readRules(arg string) ([]api.SecurityGroupRule, error) {
	b := []byte(arg)
	if !strings.HasPrefix(strings.TrimSpace(arg), "[") {
		var err error
		if b, err = os.ReadFile(arg); err != nil {
			return nil, badInput("read rules: %v", err)
		}
	}
	var rules []api.SecurityGroupRule
	if err := json.Unmarshal(b, &rules); err != nil {
		return nil, badInput("the rules in %s are not a JSON array of rule objects: %v", arg, err)
	}
	return rules, nil
}

// securityGroup finds a group by name.
func (s *session) securityGroup(ctx context.Context, name string) (api.SecurityGroup, error) {
	gs, err := s.client.SecurityGroups(ctx, api.SecurityGroupFilter{Names: []string{name}})
	if err != nil {
		return api.SecurityGroup{}, err
	}
	for _, g := range gs {
		if g.Name == name {
			return g, nil
		}
	}
	return api.SecurityGroup{}, &notFoundError{"Security group " + name + " not found"}
}

var createSecurityGroupCommand = &command{
	name:    "create-security-group",
	group:   groupPolicies,
	summary: "Create an application security group: egress allow rules (admin)",
	usage:   "create-security-group SECURITY_GROUP PATH_TO_JSON_RULES_FILE",
	example: "trellis create-security-group db rules.json\n" +
		`trellis create-security-group db '[{"protocol":"tcp","destination":"203.0.113.10","ports":"5432"}]'`,
	config: true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		return func(ctx context.Context, args []string) error {
			s, rules, err := rulesTarget(e, args)
			if err != nil {
				return err
			}
			s.printf("Creating security group %s as %s...\n", args[0], s.user())
			name := args[0]
			if _, err := s.client.CreateSecurityGroup(ctx, api.SecurityGroupRequest{Name: &name, Rules: &rules}); err != nil {
				return err
			}
			s.ok()
			return nil
		}
	},
}

var updateSecurityGroupCommand = &command{
	name:    "update-security-group",
	group:   groupPolicies,
	summary: "Replace the rules of an application security group (admin)",
	usage:   "update-security-group SECURITY_GROUP PATH_TO_JSON_RULES_FILE",
	example: "trellis update-security-group db rules.json",
	config:  true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		return func(ctx context.Context, args []string) error {
			s, rules, err := rulesTarget(e, args)
			if err != nil {
				return err
			}
			s.printf("Updating security group %s as %s...\n", args[0], s.user())
			g, err := s.securityGroup(ctx, args[0])
			if err != nil {
				return err
			}
			if _, err := s.client.UpdateSecurityGroup(ctx, g.GUID, api.SecurityGroupRequest{Rules: &rules}); err != nil {
				return err
			}
			s.ok()
			s.printf("\nTIP: Changes take effect on running instances at once: no restart needed.\n")
			return nil
		}
	},
}

var deleteSecurityGroupCommand = &command{
	name:    "delete-security-group",
	group:   groupPolicies,
	summary: "Delete an application security group (admin)",
	usage:   "delete-security-group SECURITY_GROUP [-f]",
	example: "trellis delete-security-group db -f",
	config:  true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		fs.Bool("f", false, "Force deletion without confirmation (trellis never asks)")
		return func(ctx context.Context, args []string) error {
			if err := wantArgs(args, "SECURITY_GROUP"); err != nil {
				return err
			}
			s, err := e.session()
			if err != nil {
				return err
			}
			s.printf("Deleting security group %s as %s...\n", args[0], s.user())
			g, err := s.securityGroup(ctx, args[0])
			if isNotFound(err) {
				s.printf("Security group %s does not exist\n", args[0])
				s.ok()
				return nil
			}
			if err != nil {
				return err
			}
			if err := s.client.DeleteSecurityGroup(ctx, g.GUID); err != nil {
				return err
			}
			s.ok()
			return nil
		}
	},
}

// spaceNames maps the spaces the groups gs are bound to, by GUID, to
// "org/space" for the listings. It looks up only those spaces and their
// orgs, and says when it cannot (the listing would otherwise show GUIDs).
func (s *session) spaceNames(ctx context.Context, gs ...api.SecurityGroup) (map[string]string, error) {
	var guids []string
	for _, g := range gs {
		for _, r := range append(g.Relationships.RunningSpaces.Data, g.Relationships.StagingSpaces.Data...) {
			guids = append(guids, r.GUID)
		}
	}
	spaces := map[string]api.Space{}
	if err := byGUID(guids, spaces, func(c []string) ([]api.Space, error) {
		return s.client.Spaces(ctx, api.SpaceFilter{GUIDs: c})
	}, func(sp api.Space) string { return sp.GUID }); err != nil {
		return nil, err
	}
	var orgGUIDs []string
	for _, sp := range spaces {
		orgGUIDs = append(orgGUIDs, sp.Relationships.Organization.Data.GUID)
	}
	orgs := map[string]api.Organization{}
	if err := byGUID(orgGUIDs, orgs, func(c []string) ([]api.Organization, error) {
		return s.client.Orgs(ctx, api.OrgFilter{GUIDs: c})
	}, func(o api.Organization) string { return o.GUID }); err != nil {
		return nil, err
	}
	out := make(map[string]string, len(spaces))
	for g, sp := range spaces {
		out[g] = orgs[sp.Relationships.Organization.Data.GUID].Name + "/" + sp.Name
	}
	return out, nil
}

func lifecycles(g api.SecurityGroup) string {
	var l []string
	if g.GloballyEnabled.Running {
		l = append(l, "running")
	}
	if g.GloballyEnabled.Staging {
		l = append(l, "staging")
	}
	return strings.Join(l, ",")
}

// bindingRows lists a group's bindings as cf does: one row per space and
// lifecycle, and "<all>" for global ones.
func bindingRows(g api.SecurityGroup, names map[string]string) [][]string {
	var rows [][]string
	if l := lifecycles(g); l != "" {
		rows = append(rows, []string{g.Name, "<all>", "<all>", l})
	}
	for _, b := range []struct {
		life string
		refs []api.Ref
	}{{"running", g.Relationships.RunningSpaces.Data}, {"staging", g.Relationships.StagingSpaces.Data}} {
		for _, r := range b.refs {
			org, space, _ := strings.Cut(orDefault(names[r.GUID], r.GUID+"/"+r.GUID), "/")
			rows = append(rows, []string{g.Name, org, space, b.life})
		}
	}
	if len(rows) == 0 {
		rows = append(rows, []string{g.Name, "", "", ""})
	}
	return rows
}

var securityGroupsCommand = &command{
	name:    "security-groups",
	group:   groupPolicies,
	summary: "List the application security groups and where they are bound",
	usage:   "security-groups [--json]",
	example: "trellis security-groups\ntrellis security-groups --json",
	config:  true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		asJSON := fs.Bool("json", false, "Print JSON")
		return func(ctx context.Context, args []string) error {
			if err := wantArgs(args); err != nil {
				return err
			}
			s, err := e.session()
			if err != nil {
				return err
			}
			if *asJSON {
				gs, err := s.client.SecurityGroups(ctx, api.SecurityGroupFilter{})
				if err != nil {
					return err
				}
				if gs == nil {
					gs = []api.SecurityGroup{}
				}
				return e.printJSON(gs)
			}
			s.printf("Getting security groups as %s...\n", s.user())
			gs, err := s.client.SecurityGroups(ctx, api.SecurityGroupFilter{})
			if err != nil {
				return err
			}
			if len(gs) == 0 {
				s.printf("No security groups found.\n")
				return nil
			}
			names, err := s.spaceNames(ctx, gs...)
			if err != nil {
				return err
			}
			var rows [][]string
			for _, g := range gs {
				rows = append(rows, bindingRows(g, names)...)
			}
			s.printf("\n")
			s.printTable([]string{"name", "organization", "space", "lifecycle"}, rows)
			return nil
		}
	},
}

var securityGroupCommand = &command{
	name:    "security-group",
	group:   groupPolicies,
	summary: "Show an application security group's rules and bindings",
	usage:   "security-group SECURITY_GROUP [--json]",
	example: "trellis security-group db",
	config:  true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		asJSON := fs.Bool("json", false, "Print JSON")
		return func(ctx context.Context, args []string) error {
			if err := wantArgs(args, "SECURITY_GROUP"); err != nil {
				return err
			}
			s, err := e.session()
			if err != nil {
				return err
			}
			if *asJSON {
				g, err := s.securityGroup(ctx, args[0])
				if err != nil {
					return err
				}
				return e.printJSON(g)
			}
			s.printf("Getting info for security group %s as %s...\n\n", args[0], s.user())
			g, err := s.securityGroup(ctx, args[0])
			if err != nil {
				return err
			}
			s.printf("name:    %s\nrules:\n", g.Name)
			b, _ := json.MarshalIndent(g.Rules, "  ", "  ")
			s.printf("  %s\n\n", b)
			names, err := s.spaceNames(ctx, g)
			if err != nil {
				return err
			}
			rows := bindingRows(g, names)
			for i := range rows {
				rows[i] = rows[i][1:]
			}
			if len(rows) == 1 && rows[0][0] == "" {
				s.printf("No spaces assigned\n")
				return nil
			}
			s.printTable([]string{"organization", "space", "lifecycle"}, rows)
			return nil
		}
	},
}

// lifecycleFlag registers --lifecycle.
func lifecycleFlag(fs *flag.FlagSet) *string {
	return fs.String("lifecycle", "running", "Lifecycle phase the group applies to: `running` or staging")
}

func checkLifecycle(l string) error {
	if l != "running" && l != "staging" {
		return badUsage("--lifecycle must be running or staging, not %q", l)
	}
	return nil
}

var bindSecurityGroupCommand = &command{
	name:    "bind-security-group",
	group:   groupPolicies,
	summary: "Bind an application security group to a space, or to every space of an org (admin)",
	usage:   "bind-security-group SECURITY_GROUP ORG [--space SPACE] [--lifecycle running|staging]",
	example: "trellis bind-security-group db default --space default\ntrellis bind-security-group db my-org",
	config:  true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		spaceFlag := fs.String("space", "", "Bind to `SPACE` only (default: every space of ORG)")
		life := lifecycleFlag(fs)
		return func(ctx context.Context, args []string) error {
			s, g, org, err := bindTarget(ctx, e, args, *life, "SECURITY_GROUP", "ORG")
			if err != nil {
				return err
			}
			var spaces []api.Space
			if *spaceFlag != "" {
				sp, err := s.space(ctx, org, *spaceFlag)
				if err != nil {
					return err
				}
				spaces = []api.Space{sp}
			} else if spaces, err = s.client.Spaces(ctx, api.SpaceFilter{OrgGUIDs: []string{org.GUID}}); err != nil {
				return err
			}
			for _, sp := range spaces {
				s.printf("Assigning %s security group %s to space %s in org %s as %s...\n", *life, g.Name, sp.Name, org.Name, s.user())
				if err := s.client.BindSecurityGroup(ctx, g.GUID, *life, []string{sp.GUID}); err != nil {
					return err
				}
			}
			s.ok()
			s.printf("\nTIP: Changes take effect on running instances at once: no restart needed.\n")
			return nil
		}
	},
}

var unbindSecurityGroupCommand = &command{
	name:    "unbind-security-group",
	group:   groupPolicies,
	summary: "Unbind an application security group from a space (admin); cuts the connections it allowed",
	usage:   "unbind-security-group SECURITY_GROUP ORG SPACE [--lifecycle running|staging]",
	example: "trellis unbind-security-group db default default",
	config:  true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		life := lifecycleFlag(fs)
		return func(ctx context.Context, args []string) error {
			s, g, org, err := bindTarget(ctx, e, args, *life, "SECURITY_GROUP", "ORG", "SPACE")
			if err != nil {
				return err
			}
			sp, err := s.space(ctx, org, args[2])
			if err != nil {
				return err
			}
			s.printf("Removing %s security group %s from org %s / space %s as %s...\n", *life, g.Name, org.Name, sp.Name, s.user())
			if err := s.client.UnbindSecurityGroup(ctx, g.GUID, *life, sp.GUID); err != nil {
				if api.IsNotFound(err) || strings.Contains(err.Error(), "Ensure the space is bound") {
					s.printf("Security group %s not bound to space %s for lifecycle phase '%s'.\n", g.Name, sp.Name, *life)
					s.ok()
					return nil
				}
				return err
			}
			s.ok()
			return nil
		}
	},
}

// globalCommand is bind-/unbind-running/staging-security-group.
func globalCommand(bind bool, life string) *command {
	verb, summary := "bind", fmt.Sprintf("Apply an application security group to every space for the %s lifecycle (admin)", life)
	if !bind {
		verb, summary = "unbind", fmt.Sprintf("Stop applying an application security group to every space for the %s lifecycle (admin)", life)
	}
	name := verb + "-" + life + "-security-group"
	return &command{
		name: name, group: groupPolicies, summary: summary, config: true,
		usage: name + " SECURITY_GROUP", example: "trellis " + name + " dns",
		setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
			return func(ctx context.Context, args []string) error {
				if err := wantArgs(args, "SECURITY_GROUP"); err != nil {
					return err
				}
				s, err := e.session()
				if err != nil {
					return err
				}
				g, err := s.securityGroup(ctx, args[0])
				if err != nil {
					return err
				}
				if bind {
					s.printf("Binding security group %s to defaults for %s as %s...\n", g.Name, life, s.user())
				} else {
					s.printf("Unbinding security group %s from defaults for %s as %s...\n", g.Name, life, s.user())
				}
				req := api.SecurityGroupRequest{GloballyEnabled: &api.GloballyEnabledRequest{}}
				if life == "running" {
					req.GloballyEnabled.Running = &bind
				} else {
					req.GloballyEnabled.Staging = &bind
				}
				if _, err := s.client.UpdateSecurityGroup(ctx, g.GUID, req); err != nil {
					return err
				}
				s.ok()
				return nil
			}
		},
	}
}

// globalListCommand is running-/staging-security-groups.
func globalListCommand(life string) *command {
	name := life + "-security-groups"
	return &command{
		name: name, group: groupPolicies, config: true,
		summary: fmt.Sprintf("List the security groups applied to every space for the %s lifecycle", life),
		usage:   name, example: "trellis " + name,
		setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
			return func(ctx context.Context, args []string) error {
				if err := wantArgs(args); err != nil {
					return err
				}
				s, err := e.session()
				if err != nil {
					return err
				}
				s.printf("Getting global %s security groups as %s...\n", life, s.user())
				yes := true
				f := api.SecurityGroupFilter{GloballyEnabledRunning: &yes}
				if life == "staging" {
					f = api.SecurityGroupFilter{GloballyEnabledStaging: &yes}
				}
				gs, err := s.client.SecurityGroups(ctx, f)
				if err != nil {
					return err
				}
				if len(gs) == 0 {
					s.printf("No global %s security groups found.\n", life)
					return nil
				}
				var rows [][]string
				for _, g := range gs {
					rows = append(rows, []string{g.Name})
				}
				s.printf("\n")
				s.printTable([]string{"name"}, rows)
				return nil
			}
		},
	}
}

// explainEgress is `explain SOURCE_APP --to IP[:PORT]`.
func (e *env) explainEgress(ctx context.Context, args []string, to, port, protocol string, asJSON bool) error {
	if len(args) != 1 {
		return badUsage("explain --to needs SOURCE_APP only")
	}
	if host, p, err := net.SplitHostPort(to); err == nil {
		if port != "" && port != p {
			return badUsage("--port %s differs from the port in --to %s", port, to)
		}
		to, port = host, p
	}
	if ip, err := netip.ParseAddr(to); err != nil || !ip.Is4() {
		return badInput("--to %q is not an IPv4 address or IP:PORT", to)
	}
	if protocol != "tcp" && protocol != "udp" && protocol != "icmp" {
		return badInput(`PROTOCOL must be "tcp", "udp" or "icmp"`)
	}
	p := 0
	if protocol != "icmp" {
		if port == "" {
			return badUsage("--port (or --to IP:PORT) is required for %s", protocol)
		}
		var err error
		if p, err = strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			return badInput("PORT must be an integer in 1-65535")
		}
	}
	s, _, src, err := e.targetApp(ctx, args[0])
	if err != nil {
		return err
	}
	x, err := s.client.ExplainEgress(ctx, src.GUID, to, protocol, p)
	if err != nil {
		return err
	}
	if asJSON {
		return e.printJSON(x)
	}
	verdict := "DENIED"
	if x.Allowed {
		verdict = "ALLOWED"
	}
	dst := to
	if p != 0 {
		dst = net.JoinHostPort(to, strconv.Itoa(p))
	}
	e.printf("%s: %s -> %s on %s (egress)\n%s\n", verdict, src.Name, dst, protocol, x.Reason)
	return nil
}

// bindTarget checks the arguments of bind- and unbind-security-group
// (named by names; the group and org come first) and the lifecycle, and
// finds the group and the org.
func bindTarget(ctx context.Context, e *env, args []string, life string, names ...string) (*session, api.SecurityGroup, api.Organization, error) {
	var g api.SecurityGroup
	var org api.Organization
	if err := wantArgs(args, names...); err != nil {
		return nil, g, org, err
	}
	if err := checkLifecycle(life); err != nil {
		return nil, g, org, err
	}
	s, err := e.session()
	if err != nil {
		return nil, g, org, err
	}
	if g, err = s.securityGroup(ctx, args[0]); err != nil {
		return nil, g, org, err
	}
	org, err = s.org(ctx, args[1])
	return s, g, org, err
}

// rulesTarget checks the arguments of create- and update-security-group
// (SECURITY_GROUP PATH_TO_JSON_RULES_FILE), reads the rules and opens the
// session.
func rulesTarget(e *env, args []string) (*session, []api.SecurityGroupRule, error) {
	if err := wantArgs(args, "SECURITY_GROUP", "PATH_TO_JSON_RULES_FILE"); err != nil {
		return nil, nil, err
	}
	rules, err := readRules(args[1])
	if err != nil {
		return nil, nil, err
	}
	s, err := e.session()
	return s, rules, err
}
