package cli

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"slices"

	"github.com/trellis-c2c/trellis/internal/api"
)

// Network policy commands, shaped like the cf CLI's.

// Defaults of add-network-policy, as in the cf CLI.
const (
	defaultProtocol = "tcp"
	defaultPort     = 8080
)

// policyFlags are the flags shared by add- and remove-network-policy.
type policyFlags struct {
	fs                 *flag.FlagSet
	required           bool // --protocol and --port must be given
	protocol, port     *string
	destOrg, destSpace *string
}

func newPolicyFlags(fs *flag.FlagSet, required bool) policyFlags {
	protoHelp, portHelp := "`PROTOCOL` to connect apps with: tcp or udp (default tcp)",
		"Port or `RANGE` of ports for connection to destination app: 8080 or 8080-8090 (default 8080)"
	if required {
		protoHelp, portHelp = "`PROTOCOL` that apps are connected with: tcp or udp",
			"Port or `RANGE` of ports that destination app is connected with: 8080 or 8080-8090"
	}
	return policyFlags{
		fs:        fs,
		required:  required,
		protocol:  fs.String("protocol", "", protoHelp),
		port:      fs.String("port", "", portHelp),
		destOrg:   fs.String("o", "", "The `ORG` of the destination app (default: the targeted org)"),
		destSpace: fs.String("s", "", "The `SPACE` of the destination app (default: the targeted space)"),
	}
}

// policySpec is a checked policy command line.
type policySpec struct {
	source, dest       string
	protocol           string
	ports              api.Ports
	destOrg, destSpace string
}

// parse checks a policy command line in the cf CLI's order: flag values,
// then required flags, then arguments, then flag combinations. With
// f.required, --protocol and --port must be given; else they default to
// tcp and 8080, together.
func (f policyFlags) parse(args []string) (policySpec, error) {
	set := setFlags(f.fs)
	spec := policySpec{destOrg: *f.destOrg, destSpace: *f.destSpace}
	var err error
	if set["port"] {
		if spec.ports, err = parsePort(*f.port); err != nil {
			return spec, err
		}
	}
	if set["protocol"] {
		if spec.protocol, err = parseProtocol(*f.protocol); err != nil {
			return spec, err
		}
	}
	if f.required {
		if err := requireFlags(f.fs, "port", "protocol"); err != nil {
			return spec, err
		}
	}
	if err := wantArgs(args, "SOURCE_APP", "DESTINATION_APP"); err != nil {
		return spec, err
	}
	spec.source, spec.dest = args[0], args[1]
	switch {
	case set["protocol"] != set["port"]:
		return spec, badUsage("--protocol and --port flags must be specified together")
	case spec.destOrg != "" && spec.destSpace == "":
		return spec, badUsage("space must be provided with org, the required flag '-s' was not specified")
	case !set["protocol"]:
		spec.protocol = defaultProtocol
		spec.ports = api.Ports{Start: defaultPort, End: defaultPort}
	}
	if err := checkName("source app", spec.source); err != nil {
		return spec, err
	}
	if err := checkName("destination app", spec.dest); err != nil {
		return spec, err
	}
	return spec, checkSpaceFlags(spec.destOrg, spec.destSpace)
}

// resolved is a policy command with its apps looked up.
type resolved struct {
	src, dst   target
	policy     api.Policy
	srcApp     string
	dstApp     string
	crossSpace bool // -s given: messages name both spaces
}

// resolveTarget looks up the source and destination spaces of spec.
func (s *session) resolveTarget(ctx context.Context, spec policySpec) (resolved, error) {
	r := resolved{srcApp: spec.source, dstApp: spec.dest, crossSpace: spec.destSpace != ""}
	var err error
	if r.src, err = s.target(ctx); err != nil {
		return r, err
	}
	r.dst = r.src
	if spec.destSpace != "" {
		if spec.destOrg != "" {
			if r.dst.org, err = s.org(ctx, spec.destOrg); err != nil {
				return r, err
			}
		}
		if r.dst.space, err = s.space(ctx, r.dst.org, spec.destSpace); err != nil {
			return r, err
		}
	}
	r.policy.Destination.Protocol = spec.protocol
	r.policy.Destination.Ports = spec.ports
	return r, nil
}

// resolveApps looks up the source and destination apps.
func (s *session) resolveApps(ctx context.Context, r *resolved) error {
	src, err := s.app(ctx, r.src.space, r.srcApp)
	if err != nil {
		return err
	}
	dst, err := s.app(ctx, r.dst.space, r.dstApp)
	if err != nil {
		return err
	}
	r.policy.Source.ID, r.policy.Destination.ID = src.GUID, dst.GUID
	return nil
}

// describe is the middle of cf's "Adding network policy ..." line.
func (r resolved) describe(user string) string {
	if r.crossSpace {
		return fmt.Sprintf("from app %s in org %s / space %s to app %s in org %s / space %s as %s...",
			r.srcApp, r.src.org.Name, r.src.space.Name, r.dstApp, r.dst.org.Name, r.dst.space.Name, user)
	}
	return fmt.Sprintf("from app %s to app %s in org %s / space %s as %s...",
		r.srcApp, r.dstApp, r.src.org.Name, r.src.space.Name, user)
}

// resolvePolicy starts add- and remove-network-policy: it checks the
// command line, loads the session, looks up the spaces, says what it does
// ("Adding network policy from app ...") and looks up the apps.
func (e *env) resolvePolicy(ctx context.Context, pf policyFlags, args []string, doing string) (*session, api.Policy, error) {
	spec, err := pf.parse(args)
	if err != nil {
		return nil, api.Policy{}, err
	}
	s, err := e.session()
	if err != nil {
		return nil, api.Policy{}, err
	}
	r, err := s.resolveTarget(ctx, spec)
	if err != nil {
		return nil, api.Policy{}, err
	}
	s.printf("%s network policy %s\n", doing, r.describe(s.user()))
	err = s.resolveApps(ctx, &r)
	return s, r.policy, err
}

var addNetworkPolicyCommand = &command{
	name:    "add-network-policy",
	group:   groupPolicies,
	summary: "Create policy to allow direct network traffic from one app to another",
	usage:   "add-network-policy SOURCE_APP DESTINATION_APP [-s DEST_SPACE [-o DEST_ORG]] [--protocol (tcp | udp) --port RANGE]",
	example: "trellis add-network-policy frontend backend\n" +
		"trellis add-network-policy frontend backend --protocol tcp --port 8081\n" +
		"trellis add-network-policy frontend backend -s backend-space -o backend-org --protocol udp --port 8080-8090",
	config: true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		pf := newPolicyFlags(fs, false)
		return func(ctx context.Context, args []string) error {
			s, p, err := e.resolvePolicy(ctx, pf, args, "Adding")
			if err != nil {
				return err
			}
			if err := s.client.CreatePolicies(ctx, []api.Policy{p}); err != nil {
				return err
			}
			s.ok()
			return nil
		}
	},
}

var removeNetworkPolicyCommand = &command{
	name:    "remove-network-policy",
	group:   groupPolicies,
	summary: "Remove network traffic policy of an app",
	usage:   "remove-network-policy SOURCE_APP DESTINATION_APP [-s DEST_SPACE [-o DEST_ORG]] --protocol (tcp | udp) --port RANGE",
	example: "trellis remove-network-policy frontend backend --protocol tcp --port 8081\n" +
		"trellis remove-network-policy frontend backend -s backend-space -o backend-org --protocol udp --port 8080-8090",
	config: true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		pf := newPolicyFlags(fs, true)
		return func(ctx context.Context, args []string) error {
			s, p, err := e.resolvePolicy(ctx, pf, args, "Removing")
			if err != nil {
				return err
			}
			// Deleting is idempotent: ask first, to say whether it existed.
			existing, err := s.client.Policies(ctx, api.PolicyFilter{
				SourceIDs: []string{p.Source.ID},
				DestIDs:   []string{p.Destination.ID},
			})
			if err != nil {
				return err
			}
			if !slices.ContainsFunc(existing, func(q api.Policy) bool { return samePolicy(q, p) }) {
				s.printf("Policy does not exist.\n")
				s.ok()
				return nil
			}
			if err := s.client.DeletePolicies(ctx, []api.Policy{p}); err != nil {
				return err
			}
			s.ok()
			return nil
		}
	},
}

// samePolicy compares the key of two policies, ignoring tags.
func samePolicy(a, b api.Policy) bool {
	return a.Source.ID == b.Source.ID && a.Destination.ID == b.Destination.ID &&
		a.Destination.Protocol == b.Destination.Protocol && a.Destination.Ports == b.Destination.Ports
}

// policyRow is one line of network-policies, and its --json element.
type policyRow struct {
	Source           string    `json:"source"`
	SourceGUID       string    `json:"source_guid"`
	Destination      string    `json:"destination"`
	DestinationGUID  string    `json:"destination_guid"`
	Protocol         string    `json:"protocol"`
	Ports            api.Ports `json:"ports"`
	DestinationSpace string    `json:"destination_space"`
	DestinationOrg   string    `json:"destination_org"`
}

var networkPoliciesCommand = listCommand(listing[policyRow]{
	command: command{name: "network-policies", group: groupPolicies,
		summary: "List direct network traffic policies of apps in the target space",
		usage:   "network-policies [--source SOURCE_APP] [--json]",
		example: "trellis network-policies\ntrellis network-policies --source frontend --json"},
	filter: &nameFilter{flag: "source", help: "List only the policies of source app `APP`", kind: "source app"},
	fetch: func(ctx context.Context, l *listRun) ([]policyRow, error) {
		t, err := l.target(ctx)
		if err != nil {
			return nil, err
		}
		if l.filter != "" {
			l.heading("Listing network policies of app %s in org %s / space %s as %s...", l.filter, t.org.Name, t.space.Name, l.user())
		} else {
			l.heading("Listing network policies in org %s / space %s as %s...", t.org.Name, t.space.Name, l.user())
		}
		return l.policyRows(ctx, t, l.filter)
	},
	header: []string{"source", "destination", "protocol", "ports", "destination space", "destination org"},
	row: func(r policyRow) []string {
		return []string{r.Source, r.Destination, r.Protocol, formatPorts(r.Ports), r.DestinationSpace, r.DestinationOrg}
	},
})

// policyRows lists the policies whose source app is in t's space (only
// those of source, when not empty), with names for every GUID. A GUID
// stands for a name the caller may not see.
func (s *session) policyRows(ctx context.Context, t target, source string) ([]policyRow, error) {
	var sources []api.App
	if source != "" {
		a, err := s.app(ctx, t.space, source)
		if err != nil {
			return nil, err
		}
		sources = []api.App{a}
	} else {
		var err error
		if sources, err = s.client.Apps(ctx, api.AppFilter{SpaceGUIDs: []string{t.space.GUID}}); err != nil {
			return nil, err
		}
	}
	apps := map[string]api.App{}
	var guids []string
	for _, a := range sources {
		apps[a.GUID] = a
		guids = append(guids, a.GUID)
	}
	var policies []api.Policy
	err := inChunks(guids, func(c []string) error {
		ps, err := s.client.Policies(ctx, api.PolicyFilter{SourceIDs: c})
		policies = append(policies, ps...)
		return err
	})
	if err != nil {
		return nil, err
	}

	var unknown []string
	for _, p := range policies {
		if _, ok := apps[p.Destination.ID]; !ok {
			unknown = append(unknown, p.Destination.ID)
		}
	}
	more, err := s.appsByGUID(ctx, unknown)
	if err != nil {
		return nil, err
	}
	for g, a := range more {
		apps[g] = a
	}
	spaces := map[string]api.Space{t.space.GUID: t.space}
	orgs := map[string]api.Organization{t.org.GUID: t.org}
	var spaceGUIDs []string
	for _, a := range apps {
		if g := a.Relationships.Space.Data.GUID; spaces[g].GUID == "" {
			spaceGUIDs = append(spaceGUIDs, g)
		}
	}
	err = byGUID(spaceGUIDs, spaces, func(c []string) ([]api.Space, error) {
		return s.client.Spaces(ctx, api.SpaceFilter{GUIDs: c})
	}, func(sp api.Space) string { return sp.GUID })
	if err != nil {
		return nil, err
	}
	var orgGUIDs []string
	for _, sp := range spaces {
		if g := sp.Relationships.Organization.Data.GUID; orgs[g].GUID == "" {
			orgGUIDs = append(orgGUIDs, g)
		}
	}
	err = byGUID(orgGUIDs, orgs, func(c []string) ([]api.Organization, error) {
		return s.client.Orgs(ctx, api.OrgFilter{GUIDs: c})
	}, func(o api.Organization) string { return o.GUID })
	if err != nil {
		return nil, err
	}

	rows := make([]policyRow, 0, len(policies))
	for _, p := range policies {
		dst := apps[p.Destination.ID]
		space := spaces[dst.Relationships.Space.Data.GUID]
		org := orgs[space.Relationships.Organization.Data.GUID]
		rows = append(rows, policyRow{
			Source:           orDefault(apps[p.Source.ID].Name, p.Source.ID),
			SourceGUID:       p.Source.ID,
			Destination:      orDefault(dst.Name, p.Destination.ID),
			DestinationGUID:  p.Destination.ID,
			Protocol:         p.Destination.Protocol,
			Ports:            p.Destination.Ports,
			DestinationSpace: space.Name,
			DestinationOrg:   org.Name,
		})
	}
	slices.SortFunc(rows, func(a, b policyRow) int {
		return cmp.Or(cmp.Compare(a.Source, b.Source), cmp.Compare(a.Destination, b.Destination),
			cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Ports.Start, b.Ports.Start),
			cmp.Compare(a.Ports.End, b.Ports.End), cmp.Compare(a.DestinationGUID, b.DestinationGUID))
	})
	return rows, nil
}
