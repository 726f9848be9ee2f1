package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"

	"github.com/trellis-c2c/trellis/internal/api"
)

// Defaults of the CLI config.
const (
	defaultOrg   = "default" // the org a controller creates on first start
	defaultSpace = "default"
	defaultUser  = "admin" // the holder of admin.json's token
)

// configPath resolves the CLI config file: --config, else $TRELLIS_CONFIG,
// else ~/.trellis/config.json. shown is the path as messages print it.
func (e *env) configPath() (path, shown string, err error) {
	if e.configFlag != "" {
		return e.configFlag, e.configFlag, nil
	}
	if p := e.getenv("TRELLIS_CONFIG"); p != "" {
		return p, p, nil
	}
	home := e.getenv("HOME")
	if home == "" {
		return "", "", errors.New("HOME is not set: pass --config FILE or set TRELLIS_CONFIG")
	}
	return filepath.Join(home, ".trellis", "config.json"), "~/.trellis/config.json", nil
}

// session is a loaded CLI config and a client for its controller.
type session struct {
	*env
	path   string // the config file
	cfg    api.ClientConfig
	client *api.Client
}

// session loads the CLI config and makes a client for it. Commands call it
// after validating their arguments, so that a wrong command line is
// reported as such even without a config.
func (e *env) session() (*session, error) {
	path, shown, err := e.configPath()
	if err != nil {
		return nil, err
	}
	cfg, err := api.LoadClientConfig(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no trellis config at %s: run `trellis login --config-from STATE/admin.json` or pass --config", shown)
	}
	if err != nil {
		return nil, err
	}
	client, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", shown, err)
	}
	return &session{env: e, path: path, cfg: cfg, client: client}, nil
}

// user names the token's holder in messages.
func (s *session) user() string      { return orDefault(s.cfg.User, defaultUser) }
func (s *session) orgName() string   { return orDefault(s.cfg.Org, defaultOrg) }
func (s *session) spaceName() string { return orDefault(s.cfg.Space, defaultSpace) }

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// target is the org and space that commands act in.
type target struct {
	org   api.Organization
	space api.Space
}

// target looks up the targeted org and space.
func (s *session) target(ctx context.Context) (target, error) {
	var t target
	var err error
	if t.org, err = s.org(ctx, s.orgName()); err != nil {
		return t, withHint(err, "run `trellis target -o ORG -s SPACE`")
	}
	if t.space, err = s.space(ctx, t.org, s.spaceName()); err != nil {
		return t, withHint(err, "run `trellis target -s SPACE`")
	}
	return t, nil
}

// withHint adds what to do to a lookup that found nothing.
func withHint(err error, hint string) error {
	if isNotFound(err) {
		return fmt.Errorf("%w: %s", err, hint)
	}
	return err
}

// targetIn is the target, with the org and space replaced by those named
// (when not empty). A space name alone is looked up in the targeted org.
func (s *session) targetIn(ctx context.Context, orgName, spaceName string) (target, error) {
	if orgName == "" && spaceName == "" {
		return s.target(ctx)
	}
	var t target
	var err error
	if t.org, err = s.org(ctx, orDefault(orgName, s.orgName())); err != nil {
		return t, err
	}
	t.space, err = s.space(ctx, t.org, orDefault(spaceName, s.spaceName()))
	return t, err
}

// The lookups below match names exactly among what the server returns.

// byName is the names= filter for name. A names= filter splits at commas,
// so a name with a comma is looked for among all.
func byName(name string) []string {
	if strings.Contains(name, ",") {
		return nil
	}
	return []string{name}
}

func (s *session) org(ctx context.Context, name string) (api.Organization, error) {
	orgs, err := s.client.Orgs(ctx, api.OrgFilter{Names: byName(name)})
	if err != nil {
		return api.Organization{}, err
	}
	if i := slices.IndexFunc(orgs, func(o api.Organization) bool { return o.Name == name }); i >= 0 {
		return orgs[i], nil
	}
	return api.Organization{}, &notFoundError{"Org " + name + " not found"}
}

func (s *session) space(ctx context.Context, org api.Organization, name string) (api.Space, error) {
	ss, err := s.client.Spaces(ctx, api.SpaceFilter{Names: byName(name), OrgGUIDs: []string{org.GUID}})
	if err != nil {
		return api.Space{}, err
	}
	if i := slices.IndexFunc(ss, func(sp api.Space) bool { return sp.Name == name }); i >= 0 {
		return ss[i], nil
	}
	return api.Space{}, &notFoundError{"Space " + name + " not found in org " + org.Name}
}

// notFoundError is a name lookup that matched nothing. Its message is
// shaped like the cf CLI's: "App backend not found".
type notFoundError struct{ msg string }

func (e *notFoundError) Error() string { return e.msg }

// isNotFound reports whether err is a lookup that matched nothing, as
// opposed to a failed call.
func isNotFound(err error) bool {
	var nf *notFoundError
	return errors.As(err, &nf)
}

func (s *session) app(ctx context.Context, space api.Space, name string) (api.App, error) {
	as, err := s.client.Apps(ctx, api.AppFilter{Names: byName(name), SpaceGUIDs: []string{space.GUID}})
	if err != nil {
		return api.App{}, err
	}
	if i := slices.IndexFunc(as, func(a api.App) bool { return a.Name == name }); i >= 0 {
		return as[i], nil
	}
	return api.App{}, &notFoundError{"App " + name + " not found"}
}

func (s *session) domain(ctx context.Context, name string) (api.Domain, error) {
	ds, err := s.client.Domains(ctx, api.DomainFilter{Names: byName(name)})
	if err != nil {
		return api.Domain{}, err
	}
	if i := slices.IndexFunc(ds, func(d api.Domain) bool { return d.Name == name }); i >= 0 {
		return ds[i], nil
	}
	return api.Domain{}, &notFoundError{"Domain " + name + " not found"}
}

// guidChunk bounds the GUIDs sent in one query string.
const guidChunk = 50

// inChunks calls f with successive slices of at most guidChunk GUIDs, and
// never with none: an empty filter would match everything.
func inChunks(guids []string, f func([]string) error) error {
	for c := range slices.Chunk(guids, guidChunk) {
		if err := f(c); err != nil {
			return err
		}
	}
	return nil
}

// appsByGUID looks up apps by GUID; those the caller may not see are
// missing from the map.
func (s *session) appsByGUID(ctx context.Context, guids []string) (map[string]api.App, error) {
	m := map[string]api.App{}
	err := byGUID(guids, m, func(c []string) ([]api.App, error) {
		return s.client.Apps(ctx, api.AppFilter{GUIDs: c})
	}, func(a api.App) string { return a.GUID })
	return m, err
}

// spaceNamesByGUID returns the names of the spaces guids, by GUID.
func (s *session) spaceNamesByGUID(ctx context.Context, guids []string) (map[string]string, error) {
	spaces := map[string]api.Space{}
	err := byGUID(guids, spaces, func(c []string) ([]api.Space, error) {
		return s.client.Spaces(ctx, api.SpaceFilter{GUIDs: c})
	}, func(sp api.Space) string { return sp.GUID })
	names := make(map[string]string, len(spaces))
	for g, sp := range spaces {
		names[g] = sp.Name
	}
	return names, err
}

// byGUID looks up the distinct guids with list, in chunks, and adds what
// it returns to m by the GUID of each (guid).
func byGUID[T any](guids []string, m map[string]T, list func([]string) ([]T, error), guid func(T) string) error {
	return inChunks(uniq(guids), func(c []string) error {
		items, err := list(c)
		for _, it := range items {
			m[guid(it)] = it
		}
		return err
	})
}

// uniq returns the distinct non-empty strings of ss, sorted.
func uniq(ss []string) []string {
	out := slices.DeleteFunc(slices.Clone(ss), func(s string) bool { return s == "" })
	slices.Sort(out)
	return slices.Compact(out)
}

// ensure ends the create verbs, which succeed when what they create
// exists: it says exists when find finds it, calls create when find finds
// nothing, and prints OK.
func ensure[T any](s *session, exists string, find, create func() (T, error)) error {
	_, err := find()
	switch {
	case err == nil:
		s.printf("%s\n", exists)
	case isNotFound(err):
		if _, err := create(); err != nil {
			return err
		}
	default:
		return err
	}
	s.ok()
	return nil
}

// targetSession loads the session and looks up the target: what verbs
// that act in the target space start with.
func (e *env) targetSession(ctx context.Context) (*session, target, error) {
	s, err := e.session()
	if err != nil {
		return nil, target{}, err
	}
	t, err := s.target(ctx)
	return s, t, err
}

// targetApp loads the session and finds the app named name in the target
// space: what most app verbs start with.
func (e *env) targetApp(ctx context.Context, name string) (*session, target, api.App, error) {
	s, t, err := e.targetSession(ctx)
	if err != nil {
		return s, t, api.App{}, err
	}
	app, err := s.app(ctx, t.space, name)
	return s, t, app, err
}
