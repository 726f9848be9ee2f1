package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/launcher"
)

// App, domain and route commands.

var appsCommand = listCommand(listing[api.App]{
	command: command{name: "apps", group: groupApps, summary: "List all apps in the target space",
		usage: "apps [--json]", example: "trellis apps\ntrellis apps --json"},
	fetch: func(ctx context.Context, l *listRun) ([]api.App, error) {
		t, err := l.target(ctx)
		if err != nil {
			return nil, err
		}
		l.heading("Getting apps in org %s / space %s as %s...", t.org.Name, t.space.Name, l.user())
		return l.client.Apps(ctx, api.AppFilter{SpaceGUIDs: []string{t.space.GUID}})
	},
	order:  func(a, b api.App) int { return strings.Compare(a.Name, b.Name) },
	noun:   "apps",
	header: []string{"name", "requested state", "instances", "routes"},
	rows:   appRows,
})

// appRows are the rows of apps: each app's state, running and desired
// instances, and route URLs.
func appRows(ctx context.Context, l *listRun, apps []api.App) ([][]string, error) {
	guids := make([]string, len(apps))
	for i, a := range apps {
		guids[i] = a.GUID
	}
	urls := map[string][]string{} // app GUID → route URLs
	err := inChunks(guids, func(c []string) error {
		routes, err := l.client.Routes(ctx, api.RouteFilter{AppGUIDs: c})
		for _, r := range routes {
			for _, d := range r.Destinations {
				urls[d.App.GUID] = append(urls[d.App.GUID], orDefault(r.URL, r.Host))
			}
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	running := map[string]int{} // app GUID → running instances
	err = inChunks(guids, func(c []string) error {
		ins, err := l.client.Instances(ctx, c...)
		for _, in := range ins {
			if in.State == "RUNNING" {
				running[in.AppGUID]++
			}
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	var rows [][]string
	for _, a := range apps {
		desired := a.Instances
		if a.State != "STARTED" {
			desired = 0
		}
		rows = append(rows, []string{a.Name, strings.ToLower(a.State), fmt.Sprintf("%d/%d", running[a.GUID], desired), strings.Join(uniq(urls[a.GUID]), ", ")})
	}
	return rows, nil
}

var createAppCommand = &command{
	name:    "create-app",
	group:   groupApps,
	summary: "Create an app in the target space",
	usage:   "create-app APP [-s SPACE] [-o ORG]",
	example: "trellis create-app backend\ntrellis create-app backend -s other-space",
	config:  true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		spaceFlag := fs.String("s", "", "Create the app in `SPACE` (default: the targeted space)")
		orgFlag := fs.String("o", "", "The `ORG` of the space (default: the targeted org)")
		return func(ctx context.Context, args []string) error {
			name, err := nameArg(args, "APP", "app")
			if err != nil {
				return err
			}
			if err := checkSpaceFlags(*orgFlag, *spaceFlag); err != nil {
				return err
			}
			s, err := e.session()
			if err != nil {
				return err
			}
			t, err := s.targetIn(ctx, *orgFlag, *spaceFlag)
			if err != nil {
				return err
			}
			s.printf("Creating app %s in org %s / space %s as %s...\n", name, t.org.Name, t.space.Name, s.user())
			return ensure(s, fmt.Sprintf("App %s already exists.", name),
				func() (api.App, error) { return s.app(ctx, t.space, name) },
				func() (api.App, error) { return s.client.CreateApp(ctx, t.space.GUID, name) })
		}
	},
}

var deleteAppCommand = &command{
	name:    "delete-app",
	group:   groupApps,
	summary: "Stop an app's instances, then delete it, its route mappings and every policy naming it",
	usage:   "delete-app APP [-f] [--state-dir DIR]",
	example: "trellis delete-app backend -f",
	config:  true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		fs.Bool("f", false, "Force deletion without confirmation (trellis never asks)")
		dir := stateDirFlag(fs, e)
		return func(ctx context.Context, args []string) error {
			name, err := nameArg(args, "APP", "app")
			if err != nil {
				return err
			}
			s, t, err := e.targetSession(ctx)
			if err != nil {
				return err
			}
			s.printf("Deleting app %s in org %s / space %s as %s...\n", name, t.org.Name, t.space.Name, s.user())
			a, err := s.app(ctx, t.space, name)
			if err == nil {
				err = stopAndWait(ctx, s, a, *dir)
			}
			if err == nil {
				err = s.client.DeleteApp(ctx, a.GUID)
				if api.IsNotFound(err) { // deleted meanwhile
					err = &notFoundError{"App " + name + " not found"}
				}
			}
			switch {
			case isNotFound(err):
				s.printf("App %s not found\n", name)
			case err != nil:
				return err
			}
			s.ok()
			return nil
		}
	},
}

// stopWait bounds how long delete-app waits for an app's instances to stop:
// a cell stops each one within 5 s (SIGTERM, then SIGKILL).
const stopWait = 2 * time.Minute

// stopAndWait stops app a, as `trellis stop` does, and waits until its
// instances are gone: from the controller, and — when the CLI runs on the
// machine of the local foundation in stateDir and talks to its controller —
// from the cells too (process stopped, namespace deleted), which the
// controller does not see. It reports progress on stderr.
func stopAndWait(ctx context.Context, s *session, a api.App, stateDir string) error {
	if a.State == "STARTED" {
		s.printf("Stopping app %s...\n", a.Name)
		if _, err := s.client.AppAction(ctx, a.GUID, "stop"); err != nil {
			return err
		}
	}
	f, err := launcher.Load(stateDir)
	if err != nil || strings.TrimSuffix(f.APIURL, "/") != strings.TrimSuffix(s.cfg.APIURL, "/") {
		f = nil // not the local foundation of this controller
	}
	deadline := time.Now().Add(stopWait)
	last := ""
	for {
		ins, err := s.client.Instances(ctx, a.GUID)
		if err != nil {
			return err
		}
		left := map[string]string{} // instance GUID → cell
		for _, in := range ins {
			if in.Managed {
				left[in.GUID] = orDefault(in.CellName, "no cell yet")
			}
		}
		if f != nil {
			for _, in := range f.AppInstances(a.GUID) {
				left[in.GUID] = in.Cell
			}
		}
		cells := slices.Sorted(maps.Values(left))
		where := strings.Join(slices.Compact(cells), ", ")
		state := fmt.Sprintf("%d instance(s) of %s stopping on %s", len(left), a.Name, where)
		if len(left) == 0 {
			state = "instances of " + a.Name + ": all stopped"
		}
		if state != last && (last != "" || len(left) > 0) {
			fmt.Fprintln(s.stderr, state)
		}
		last = state
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("app %s is stopped but %d of its instances still run on %s after %s: not deleted; see the agents' logs, then run delete-app again", a.Name, len(left), where, stopWait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

var domainsCommand = listCommand(listing[api.Domain]{
	command: command{name: "domains", group: groupApps, summary: "List domains",
		usage: "domains [--json]", example: "trellis domains"},
	fetch: func(ctx context.Context, l *listRun) ([]api.Domain, error) {
		l.heading("Getting domains as %s...", l.user())
		return l.client.Domains(ctx, api.DomainFilter{})
	},
	order:  func(a, b api.Domain) int { return strings.Compare(a.Name, b.Name) },
	noun:   "domains",
	header: []string{"name", "availability", "internal"},
	row: func(d api.Domain) []string {
		internal := ""
		if d.Internal {
			internal = "true"
		}
		return []string{d.Name, "shared", internal}
	},
})

var createDomainCommand = &command{
	name:    "create-domain",
	group:   groupApps,
	summary: "Create an internal domain (admin only)",
	usage:   "create-domain DOMAIN --internal",
	example: "trellis create-domain apps.example --internal",
	config:  true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		internal := fs.Bool("internal", false, "Serve the domain only to containers on the overlay (required: the only kind trellis supports)")
		return func(ctx context.Context, args []string) error {
			if err := wantArgs(args, "DOMAIN"); err != nil {
				return err
			}
			name := args[0]
			if err := checkDomain(name); err != nil {
				return err
			}
			if !*internal {
				return badInput("only internal domains are supported: pass --internal")
			}
			s, err := e.session()
			if err != nil {
				return err
			}
			s.printf("Creating domain %s as %s...\n", name, s.user())
			return ensure(s, fmt.Sprintf("Domain %s already exists.", name),
				func() (api.Domain, error) { return s.domain(ctx, name) },
				func() (api.Domain, error) { return s.client.CreateDomain(ctx, name, true) })
		}
	},
}

var routesCommand = listCommand(listing[api.Route]{
	command: command{name: "routes", group: groupApps, summary: "List the routes you can see: their space and the apps they send to",
		usage: "routes [--json]", example: "trellis routes"},
	fetch: func(ctx context.Context, l *listRun) ([]api.Route, error) {
		l.heading("Getting routes as %s...", l.user())
		return l.client.Routes(ctx, api.RouteFilter{})
	},
	order:  func(a, b api.Route) int { return strings.Compare(a.URL, b.URL) },
	noun:   "routes",
	header: []string{"space", "host", "domain", "apps"},
	rows:   routeRows,
})

// routeRows are the rows of routes: each route's space, host, domain name
// and the names of the apps it sends to.
func routeRows(ctx context.Context, l *listRun, routes []api.Route) ([][]string, error) {
	domains, err := l.client.Domains(ctx, api.DomainFilter{})
	if err != nil {
		return nil, err
	}
	spaceGUIDs := make([]string, len(routes))
	for i, r := range routes {
		spaceGUIDs[i] = r.Relationships.Space.Data.GUID
	}
	spaces := map[string]api.Space{}
	err = byGUID(spaceGUIDs, spaces, func(c []string) ([]api.Space, error) {
		return l.client.Spaces(ctx, api.SpaceFilter{GUIDs: c})
	}, func(sp api.Space) string { return sp.GUID })
	if err != nil {
		return nil, err
	}
	domainNames := map[string]string{}
	for _, d := range domains {
		domainNames[d.GUID] = d.Name
	}
	var appGUIDs []string
	for _, r := range routes {
		for _, d := range r.Destinations {
			appGUIDs = append(appGUIDs, d.App.GUID)
		}
	}
	apps, err := l.appsByGUID(ctx, appGUIDs)
	if err != nil {
		return nil, err
	}
	var rows [][]string
	for _, r := range routes {
		var names []string
		for _, d := range r.Destinations {
			names = append(names, orDefault(apps[d.App.GUID].Name, d.App.GUID))
		}
		domain, space := r.Relationships.Domain.Data.GUID, r.Relationships.Space.Data.GUID
		rows = append(rows, []string{orDefault(spaces[space].Name, space), r.Host, orDefault(domainNames[domain], domain), strings.Join(uniq(names), ", ")})
	}
	return rows, nil
}

// routeArgs are the checked arguments of map-route and unmap-route.
type routeArgs struct{ app, domain, host string }

func parseRouteArgs(fs *flag.FlagSet, args []string, host string) (routeArgs, error) {
	if err := wantArgs(args, "APP_NAME", "DOMAIN"); err != nil {
		return routeArgs{}, err
	}
	if err := requireFlags(fs, "hostname"); err != nil && !setFlags(fs)["n"] {
		return routeArgs{}, err
	}
	r := routeArgs{app: args[0], domain: args[1], host: host}
	if err := checkName("app", r.app); err != nil {
		return r, err
	}
	if err := checkDomain(r.domain); err != nil {
		return r, err
	}
	return r, checkHost(r.host)
}

func (r routeArgs) url() string { return r.host + "." + r.domain }

// hostnameFlag defines --hostname and its cf short form -n.
func hostnameFlag(fs *flag.FlagSet) *string {
	var host string
	fs.StringVar(&host, "hostname", "", "`HOST` of the route: the route is HOST.DOMAIN")
	fs.StringVar(&host, "n", "", "Short for --hostname `HOST`")
	return &host
}

var mapRouteCommand = &command{
	name:    "map-route",
	group:   groupApps,
	summary: "Map a route to an app, creating the route in the app's space if needed",
	usage:   "map-route APP_NAME DOMAIN --hostname HOST",
	example: "trellis map-route backend apps.internal --hostname backend",
	config:  true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		host := hostnameFlag(fs)
		return func(ctx context.Context, args []string) error {
			r, err := parseRouteArgs(fs, args, *host)
			if err != nil {
				return err
			}
			s, t, app, err := e.targetApp(ctx, r.app)
			if err != nil {
				return err
			}
			domain, route, found, err := s.findRoute(ctx, r)
			if err != nil {
				return err
			}
			if !found {
				s.printf("Creating route %s for org %s / space %s as %s...\n", r.url(), t.org.Name, t.space.Name, s.user())
				route, err = s.client.CreateRoute(ctx, t.space.GUID, domain.GUID, r.host)
				if he := (*api.HTTPError)(nil); errors.As(err, &he) && he.Status == http.StatusUnprocessableEntity {
					// Created meanwhile, or invalid: look again.
					if r2, found, err2 := s.route(ctx, domain, r.host); err2 == nil && found {
						route, err = r2, nil
					}
				}
				if err != nil {
					return err
				}
			}
			s.printf("Mapping route %s to app %s in org %s / space %s as %s...\n", r.url(), app.Name, t.org.Name, t.space.Name, s.user())
			if mapped(route, app) {
				s.printf("App %s is already mapped to route %s.\n", app.Name, r.url())
			} else if _, err := s.client.AddRouteDestinations(ctx, route.GUID, app.GUID); err != nil {
				return err
			}
			s.ok()
			return nil
		}
	},
}

var unmapRouteCommand = &command{
	name:    "unmap-route",
	group:   groupApps,
	summary: "Remove a route from an app",
	usage:   "unmap-route APP_NAME DOMAIN --hostname HOST",
	example: "trellis unmap-route backend apps.internal --hostname backend",
	config:  true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		host := hostnameFlag(fs)
		return func(ctx context.Context, args []string) error {
			r, err := parseRouteArgs(fs, args, *host)
			if err != nil {
				return err
			}
			s, t, err := e.targetSession(ctx)
			if err != nil {
				return err
			}
			s.printf("Removing route %s from app %s in org %s / space %s as %s...\n", r.url(), r.app, t.org.Name, t.space.Name, s.user())
			app, err := s.app(ctx, t.space, r.app)
			if err != nil {
				return err
			}
			_, route, found, err := s.findRoute(ctx, r)
			if err != nil {
				return err
			}
			if !found {
				return &notFoundError{"Route " + r.url() + " not found"}
			}
			if !mapped(route, app) {
				s.printf("Route to be unmapped is not currently mapped to the application.\n")
			} else if err := s.client.RemoveRouteDestination(ctx, route.GUID, app.GUID); err != nil && !api.IsNotFound(err) {
				return err
			}
			s.ok()
			return nil
		}
	},
}

// findRoute looks up r's domain and the route HOST.DOMAIN in it.
func (s *session) findRoute(ctx context.Context, r routeArgs) (api.Domain, api.Route, bool, error) {
	domain, err := s.domain(ctx, r.domain)
	if err != nil {
		return domain, api.Route{}, false, err
	}
	route, found, err := s.route(ctx, domain, r.host)
	return domain, route, found, err
}

// mapped reports whether route sends to app.
func mapped(route api.Route, app api.App) bool {
	return slices.ContainsFunc(route.Destinations, func(d api.RouteDestination) bool { return d.App.GUID == app.GUID })
}

// route finds HOST.DOMAIN.
func (s *session) route(ctx context.Context, domain api.Domain, host string) (api.Route, bool, error) {
	routes, err := s.client.Routes(ctx, api.RouteFilter{Hosts: []string{host}, DomainGUIDs: []string{domain.GUID}})
	if err != nil {
		return api.Route{}, false, err
	}
	// The query filtered by domain; match the host exactly.
	i := slices.IndexFunc(routes, func(r api.Route) bool { return r.Host == host })
	if i < 0 {
		return api.Route{}, false, nil
	}
	return routes[i], true, nil
}
