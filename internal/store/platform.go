package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// CreateOrg creates an org. ErrConflict if the name is taken.
func (s *Store) CreateOrg(ctx context.Context, name string) (Org, error) {
	t := now()
	o := Org{GUID: newGUID(), Name: name, CreatedAt: t, UpdatedAt: t}
	err := s.write(ctx, func(r runner) (bool, error) {
		n, err := r.execCount(ctx, "INSERT INTO orgs (guid, name, created_at, updated_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
			o.GUID, o.Name, micros(t), micros(t))
		if err != nil {
			return false, err
		}
		if n == 0 {
			return false, fmt.Errorf("org %q: %w", name, ErrConflict)
		}
		return true, nil
	})
	if err != nil {
		return Org{}, fmt.Errorf("create org: %w", err)
	}
	return o, nil
}

// Orgs lists the orgs that match f, ordered by name.
func (s *Store) Orgs(ctx context.Context, f OrgFilter) ([]Org, error) {
	w := where{r: s.r()}
	w.in("guid", f.GUIDs)
	w.in("name", f.Names)
	rows, err := w.r.query(ctx, "SELECT guid, name, created_at, updated_at FROM orgs"+w.String()+" ORDER BY name, guid", w.args...)
	if err != nil {
		return nil, fmt.Errorf("list orgs: %w", err)
	}
	defer rows.Close()
	var out []Org
	for rows.Next() {
		var o Org
		var created, updated int64
		if err := rows.Scan(&o.GUID, &o.Name, &created, &updated); err != nil {
			return nil, fmt.Errorf("list orgs: %w", err)
		}
		o.CreatedAt, o.UpdatedAt = fromMicros(created), fromMicros(updated)
		out = append(out, o)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list orgs: %w", err)
	}
	return out, nil
}

// CreateSpace creates a space in an org. ErrNotFound if the org is missing,
// ErrConflict if the org has a space of that name.
func (s *Store) CreateSpace(ctx context.Context, orgGUID, name string) (Space, error) {
	t := now()
	sp := Space{GUID: newGUID(), Name: name, OrgGUID: orgGUID, CreatedAt: t, UpdatedAt: t}
	err := s.write(ctx, func(r runner) (bool, error) {
		ok, err := r.exists(ctx, "SELECT 1 FROM orgs WHERE guid = ?", orgGUID)
		if err != nil {
			return false, err
		}
		if !ok {
			return false, fmt.Errorf("org %s: %w", orgGUID, ErrNotFound)
		}
		n, err := r.execCount(ctx, "INSERT INTO spaces (guid, org_guid, name, created_at, updated_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
			sp.GUID, orgGUID, name, micros(t), micros(t))
		if err != nil {
			return false, err
		}
		if n == 0 {
			return false, fmt.Errorf("space %q in org %s: %w", name, orgGUID, ErrConflict)
		}
		return true, nil
	})
	if err != nil {
		return Space{}, fmt.Errorf("create space: %w", err)
	}
	return sp, nil
}

// Spaces lists the spaces that match f, ordered by name.
func (s *Store) Spaces(ctx context.Context, f SpaceFilter) ([]Space, error) {
	return spaces(ctx, s.r(), f)
}

func spaces(ctx context.Context, r runner, f SpaceFilter) ([]Space, error) {
	w := where{r: r}
	w.in("guid", f.GUIDs)
	w.in("name", f.Names)
	w.in("org_guid", f.OrgGUIDs)
	rows, err := w.r.query(ctx, "SELECT guid, name, org_guid, created_at, updated_at FROM spaces"+w.String()+" ORDER BY name, guid", w.args...)
	if err != nil {
		return nil, fmt.Errorf("list spaces: %w", err)
	}
	defer rows.Close()
	var out []Space
	for rows.Next() {
		var sp Space
		var created, updated int64
		if err := rows.Scan(&sp.GUID, &sp.Name, &sp.OrgGUID, &created, &updated); err != nil {
			return nil, fmt.Errorf("list spaces: %w", err)
		}
		sp.CreatedAt, sp.UpdatedAt = fromMicros(created), fromMicros(updated)
		out = append(out, sp)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list spaces: %w", err)
	}
	return out, nil
}

// CreateApp creates a STOPPED app in a space. ErrNotFound if the space is
// missing, ErrConflict if the space has an app of that name.
func (s *Store) CreateApp(ctx context.Context, spaceGUID, name string) (App, error) {
	t := now()
	a := App{GUID: newGUID(), Name: name, SpaceGUID: spaceGUID, State: AppStopped, Instances: 1, CreatedAt: t, UpdatedAt: t}
	err := s.write(ctx, func(r runner) (bool, error) {
		ok, err := r.exists(ctx, "SELECT 1 FROM spaces WHERE guid = ?", spaceGUID)
		if err != nil {
			return false, err
		}
		if !ok {
			return false, fmt.Errorf("space %s: %w", spaceGUID, ErrNotFound)
		}
		n, err := r.execCount(ctx, "INSERT INTO apps (guid, space_guid, name, state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
			a.GUID, spaceGUID, name, a.State, micros(t), micros(t))
		if err != nil {
			return false, err
		}
		if n == 0 {
			return false, fmt.Errorf("app %q in space %s: %w", name, spaceGUID, ErrConflict)
		}
		return true, nil
	})
	if err != nil {
		return App{}, fmt.Errorf("create app: %w", err)
	}
	return a, nil
}

// Apps lists the apps that match f, ordered by name.
func (s *Store) Apps(ctx context.Context, f AppFilter) ([]App, error) {
	return apps(ctx, s.r(), f)
}

func apps(ctx context.Context, r runner, f AppFilter) ([]App, error) {
	w := where{r: r}
	w.in("guid", f.GUIDs)
	w.in("name", f.Names)
	w.in("space_guid", f.SpaceGUIDs)
	rows, err := w.r.query(ctx, "SELECT guid, name, space_guid, state, instances, command, env, COALESCE(cell_guid, ''), require_client_cert, created_at, updated_at FROM apps"+w.String()+" ORDER BY name, guid", w.args...)
	if err != nil {
		return nil, fmt.Errorf("list apps: %w", err)
	}
	defer rows.Close()
	var out []App
	for rows.Next() {
		var a App
		var created, updated int64
		var command, env string
		if err := rows.Scan(&a.GUID, &a.Name, &a.SpaceGUID, &a.State, &a.Instances, &command, &env, &a.CellGUID, &a.RequireClientCert, &created, &updated); err != nil {
			return nil, fmt.Errorf("list apps: %w", err)
		}
		if err := json.Unmarshal([]byte(command), &a.Command); err != nil {
			return nil, fmt.Errorf("list apps: app %s command: %w", a.GUID, err)
		}
		if err := json.Unmarshal([]byte(env), &a.Env); err != nil {
			return nil, fmt.Errorf("list apps: app %s env: %w", a.GUID, err)
		}
		if len(a.Command) == 0 {
			a.Command = nil
		}
		if len(a.Env) == 0 {
			a.Env = nil
		}
		a.CreatedAt, a.UpdatedAt = fromMicros(created), fromMicros(updated)
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list apps: %w", err)
	}
	return out, nil
}

// DeleteApp deletes an app with everything that names it, in one
// transaction: its route mappings, the routes left with no destination, every
// policy it is the source or destination of, and its tag; peers left in no
// policy lose their tags too. ErrNotFound if the app is missing.
func (s *Store) DeleteApp(ctx context.Context, guid string) error {
	err := s.write(ctx, func(r runner) (bool, error) {
		ok, err := r.exists(ctx, "SELECT 1 FROM apps WHERE guid = ?", guid)
		if err != nil {
			return false, err
		}
		if !ok {
			return false, fmt.Errorf("app %s: %w", guid, ErrNotFound)
		}
		routes, err := r.stringSet(ctx, "SELECT route_guid FROM route_destinations WHERE app_guid = ?", guid)
		if err != nil {
			return false, err
		}
		if _, err := r.exec(ctx, "DELETE FROM route_destinations WHERE app_guid = ?", guid); err != nil {
			return false, err
		}
		if len(routes) > 0 {
			cond, arg := r.in("guid", keys(routes))
			if _, err := r.exec(ctx, "DELETE FROM routes WHERE "+cond+
				" AND NOT EXISTS (SELECT 1 FROM route_destinations d WHERE d.route_guid = routes.guid)", arg); err != nil {
				return false, err
			}
		}
		peers, err := r.stringSet(ctx, "SELECT dest_app FROM policies WHERE source_app = ? UNION SELECT source_app FROM policies WHERE dest_app = ?", guid, guid)
		if err != nil {
			return false, err
		}
		if _, err := r.exec(ctx, "DELETE FROM policies WHERE source_app = ?", guid); err != nil {
			return false, err
		}
		if _, err := r.exec(ctx, "DELETE FROM policies WHERE dest_app = ?", guid); err != nil {
			return false, err
		}
		if err := freeTag(ctx, r, guid); err != nil {
			return false, err
		}
		delete(peers, guid)
		if err := recycleTags(ctx, r, keys(peers)); err != nil {
			return false, err
		}
		if _, err := r.exec(ctx, "DELETE FROM instances WHERE app_guid = ?", guid); err != nil {
			return false, err
		}
		if _, err := r.exec(ctx, "DELETE FROM apps WHERE guid = ?", guid); err != nil {
			return false, err
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("delete app: %w", err)
	}
	return nil
}

// CreateDomain creates a domain; its name is stored lowercase. ErrConflict
// if the name is taken.
func (s *Store) CreateDomain(ctx context.Context, name string, internal bool) (Domain, error) {
	t := now()
	d := Domain{GUID: newGUID(), Name: strings.ToLower(name), Internal: internal, CreatedAt: t, UpdatedAt: t}
	err := s.write(ctx, func(r runner) (bool, error) {
		n, err := r.execCount(ctx, "INSERT INTO domains (guid, name, internal, created_at, updated_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
			d.GUID, d.Name, internal, micros(t), micros(t))
		if err != nil {
			return false, err
		}
		if n == 0 {
			return false, fmt.Errorf("domain %q: %w", d.Name, ErrConflict)
		}
		return true, nil
	})
	if err != nil {
		return Domain{}, fmt.Errorf("create domain: %w", err)
	}
	return d, nil
}

// Domains lists the domains that match f (names compare case-insensitively),
// ordered by name.
func (s *Store) Domains(ctx context.Context, f DomainFilter) ([]Domain, error) {
	return domains(ctx, s.r(), f)
}

func domains(ctx context.Context, r runner, f DomainFilter) ([]Domain, error) {
	w := where{r: r}
	w.in("guid", f.GUIDs)
	w.in("name", lower(f.Names))
	rows, err := w.r.query(ctx, "SELECT guid, name, internal, created_at, updated_at FROM domains"+w.String()+" ORDER BY name"+r.bytewise(), w.args...)
	if err != nil {
		return nil, fmt.Errorf("list domains: %w", err)
	}
	defer rows.Close()
	var out []Domain
	for rows.Next() {
		var d Domain
		var created, updated int64
		if err := rows.Scan(&d.GUID, &d.Name, &d.Internal, &created, &updated); err != nil {
			return nil, fmt.Errorf("list domains: %w", err)
		}
		d.CreatedAt, d.UpdatedAt = fromMicros(created), fromMicros(updated)
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list domains: %w", err)
	}
	return out, nil
}

// CreateRoute creates the route host.domain in a space, with no
// destinations; the host is stored lowercase. ErrNotFound if the space or the
// domain is missing, ErrConflict if the route exists (in any space).
func (s *Store) CreateRoute(ctx context.Context, spaceGUID, domainGUID, host string) (Route, error) {
	t := now()
	rt := Route{GUID: newGUID(), Host: strings.ToLower(host), DomainGUID: domainGUID, SpaceGUID: spaceGUID, CreatedAt: t, UpdatedAt: t}
	err := s.write(ctx, func(r runner) (bool, error) {
		ok, err := r.exists(ctx, "SELECT 1 FROM spaces WHERE guid = ?", spaceGUID)
		if err != nil {
			return false, err
		}
		if !ok {
			return false, fmt.Errorf("space %s: %w", spaceGUID, ErrNotFound)
		}
		err = r.queryRow(ctx, "SELECT name FROM domains WHERE guid = ?", domainGUID).Scan(&rt.DomainName)
		if errors.Is(err, sql.ErrNoRows) {
			return false, fmt.Errorf("domain %s: %w", domainGUID, ErrNotFound)
		}
		if err != nil {
			return false, err
		}
		n, err := r.execCount(ctx, "INSERT INTO routes (guid, domain_guid, host, space_guid, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
			rt.GUID, domainGUID, rt.Host, spaceGUID, micros(t), micros(t))
		if err != nil {
			return false, err
		}
		if n == 0 {
			return false, fmt.Errorf("route %s.%s: %w", rt.Host, rt.DomainName, ErrConflict)
		}
		return true, nil
	})
	if err != nil {
		return Route{}, fmt.Errorf("create route: %w", err)
	}
	return rt, nil
}

// Routes lists the routes that match f, ordered by domain name and host,
// with their domain names and destinations. AppGUIDs selects routes mapped
// to any of those apps (and each lists all its destinations).
func (s *Store) Routes(ctx context.Context, f RouteFilter) ([]Route, error) {
	rs, err := routes(ctx, s.r(), f)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	return rs, nil
}

func routes(ctx context.Context, r runner, f RouteFilter) ([]Route, error) {
	w := where{r: r}
	w.in("r.guid", f.GUIDs)
	w.in("r.host", lower(f.Hosts))
	w.in("r.domain_guid", f.DomainGUIDs)
	w.in("r.space_guid", f.SpaceGUIDs)
	if len(f.AppGUIDs) > 0 {
		cond, arg := r.in("app_guid", f.AppGUIDs)
		w.add("r.guid IN (SELECT route_guid FROM route_destinations WHERE "+cond+")", arg)
	}
	rows, err := r.query(ctx, `SELECT r.guid, r.host, r.domain_guid, d.name, COALESCE(r.space_guid, ''), r.created_at, r.updated_at, rd.app_guid
		FROM routes r
		JOIN domains d ON d.guid = r.domain_guid
		LEFT JOIN route_destinations rd ON rd.route_guid = r.guid`+w.String()+`
		ORDER BY d.name`+r.bytewise()+`, r.host`+r.bytewise()+`, r.guid`+r.bytewise()+`, rd.app_guid`+r.bytewise(), w.args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Route
	for rows.Next() {
		var rt Route
		var created, updated int64
		var app sql.NullString
		if err := rows.Scan(&rt.GUID, &rt.Host, &rt.DomainGUID, &rt.DomainName, &rt.SpaceGUID, &created, &updated, &app); err != nil {
			return nil, err
		}
		if n := len(out); n == 0 || out[n-1].GUID != rt.GUID {
			rt.CreatedAt, rt.UpdatedAt = fromMicros(created), fromMicros(updated)
			out = append(out, rt)
		}
		if app.Valid {
			last := &out[len(out)-1]
			last.AppGUIDs = append(last.AppGUIDs, app.String)
		}
	}
	return out, rows.Err()
}

// DeleteRoute deletes a route and its mappings. ErrNotFound if it is missing.
func (s *Store) DeleteRoute(ctx context.Context, guid string) error {
	err := s.write(ctx, func(r runner) (bool, error) {
		n, err := r.execCount(ctx, "DELETE FROM routes WHERE guid = ?", guid)
		if err != nil {
			return false, err
		}
		if n == 0 {
			return false, fmt.Errorf("route %s: %w", guid, ErrNotFound)
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("delete route: %w", err)
	}
	return nil
}

// AddRouteDestinations maps a route to apps of its space, keeping existing
// mappings, and returns the route with all its destinations. Nothing
// changes if the route or any app is missing (ErrNotFound) or any app is in
// another space than the route (ErrOtherSpace).
func (s *Store) AddRouteDestinations(ctx context.Context, routeGUID string, appGUIDs []string) (Route, error) {
	apps := distinct(appGUIDs)
	var rt Route
	err := s.write(ctx, func(r runner) (bool, error) {
		var space sql.NullString
		err := r.queryRow(ctx, "SELECT space_guid FROM routes WHERE guid = ?", routeGUID).Scan(&space)
		if errors.Is(err, sql.ErrNoRows) {
			return false, fmt.Errorf("route %s: %w", routeGUID, ErrNotFound)
		}
		if err != nil {
			return false, err
		}
		var added int64
		if len(apps) > 0 {
			cond, arg := r.in("guid", apps)
			found, err := r.stringSet(ctx, "SELECT guid FROM apps WHERE "+cond, arg)
			if err != nil {
				return false, err
			}
			for _, a := range apps {
				if !found[a] {
					return false, fmt.Errorf("app %s: %w", a, ErrNotFound)
				}
			}
			inSpace, err := r.stringSet(ctx, "SELECT guid FROM apps WHERE "+cond+" AND space_guid = ?", arg, space.String)
			if err != nil {
				return false, err
			}
			for _, a := range apps {
				if !inSpace[a] {
					return false, fmt.Errorf("app %s, route %s in space %s: %w", a, routeGUID, space.String, ErrOtherSpace)
				}
			}
			ins, err := r.prepare(ctx, "INSERT INTO route_destinations (route_guid, app_guid) VALUES (?, ?) ON CONFLICT DO NOTHING")
			if err != nil {
				return false, err
			}
			defer ins.Close()
			for _, a := range apps {
				res, err := ins.ExecContext(ctx, routeGUID, a)
				if err != nil {
					return false, err
				}
				n, err := res.RowsAffected()
				if err != nil {
					return false, err
				}
				added += n
			}
			if added > 0 {
				if _, err := r.exec(ctx, "UPDATE routes SET updated_at = ? WHERE guid = ?", micros(now()), routeGUID); err != nil {
					return false, err
				}
			}
		}
		rs, err := routes(ctx, r, RouteFilter{GUIDs: []string{routeGUID}})
		if err != nil {
			return false, err
		}
		rt = rs[0]
		return added > 0, nil
	})
	if err != nil {
		return Route{}, fmt.Errorf("add route destinations: %w", err)
	}
	return rt, nil
}

// RemoveRouteDestination unmaps an app from a route; the route stays, even
// with no destinations. ErrNotFound if the mapping does not exist.
func (s *Store) RemoveRouteDestination(ctx context.Context, routeGUID, appGUID string) error {
	err := s.write(ctx, func(r runner) (bool, error) {
		n, err := r.execCount(ctx, "DELETE FROM route_destinations WHERE route_guid = ? AND app_guid = ?", routeGUID, appGUID)
		if err != nil {
			return false, err
		}
		if n == 0 {
			return false, fmt.Errorf("route %s to app %s: %w", routeGUID, appGUID, ErrNotFound)
		}
		_, err = r.exec(ctx, "UPDATE routes SET updated_at = ? WHERE guid = ?", micros(now()), routeGUID)
		return err == nil, err
	})
	if err != nil {
		return fmt.Errorf("remove route destination: %w", err)
	}
	return nil
}

// keys returns the members of a set, sorted.
func keys(set map[string]bool) []string { return slices.Sorted(maps.Keys(set)) }
