package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
)

// API token commands beyond create-token: list, revoke, rotate the admin's.

var tokensCommand = listCommand(listing[api.Token]{
	command: command{name: "tokens", group: groupControlPlane,
		summary: "List API tokens, never their values (admin: all; others: their own)",
		usage:   "tokens [--json]", example: "trellis tokens\ntrellis tokens --json"},
	argsError: "tokens takes no arguments",
	fetch: func(ctx context.Context, l *listRun) ([]api.Token, error) {
		l.heading("Getting tokens as %s...", l.user())
		return l.client.Tokens(ctx)
	},
	noun:   "tokens",
	header: []string{"guid", "name", "scope", "spaces", "created", "expires", "last used"},
	rows: func(ctx context.Context, l *listRun, ts []api.Token) ([][]string, error) {
		var guids []string
		for _, t := range ts {
			guids = append(guids, t.Spaces...)
		}
		names, err := l.spaceNamesByGUID(ctx, guids)
		if err != nil {
			return nil, err
		}
		rows := make([][]string, len(ts))
		for i, t := range ts {
			spaces := make([]string, len(t.Spaces))
			for j, g := range t.Spaces {
				spaces[j] = orDefault(names[g], g)
			}
			name := t.Name
			if t.Bootstrap {
				name += " (admin.json)"
			}
			rows[i] = []string{t.GUID, name, t.Scope, strings.Join(spaces, ","),
				t.CreatedAt.Format(time.RFC3339), timeOr(t.ExpiresAt, "never"), timeOr(t.LastUsedAt, "never")}
		}
		return rows, nil
	},
})

// timeOr formats t, or says def when there is none.
func timeOr(t *time.Time, def string) string {
	if t == nil {
		return def
	}
	return t.Format(time.RFC3339)
}

var revokeTokenCommand = &command{
	name:    "revoke-token",
	group:   groupControlPlane,
	summary: "Revoke an API token: it stops working at once (admin: any; others: their own)",
	usage:   "revoke-token GUID",
	example: "trellis revoke-token 5f0c2b1e-8d1a-4c36-9a53-0f6b1d2e7c44",
	config:  true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		return func(ctx context.Context, args []string) error {
			if err := wantArgs(args, "GUID"); err != nil {
				return err
			}
			if args[0] == "" || strings.ContainsAny(args[0], "/?#") {
				return badInput("invalid token GUID %q: see `trellis tokens`", args[0])
			}
			s, err := e.session()
			if err != nil {
				return err
			}
			s.printf("Revoking token %s as %s...\n", args[0], s.user())
			if err := s.client.RevokeToken(ctx, args[0]); err != nil {
				if api.IsNotFound(err) {
					return fmt.Errorf("token %s not found: see `trellis tokens`", args[0])
				}
				return err
			}
			s.ok()
			return nil
		}
	},
}

var rotateAdminTokenCommand = &command{
	name:    "rotate-admin-token",
	group:   groupControlPlane,
	summary: "Replace the admin token of admin.json (admin only); the old one stops working at once",
	usage:   "rotate-admin-token [--admin-config FILE] [--json]",
	example: "trellis rotate-admin-token\n" +
		"trellis rotate-admin-token --admin-config /var/lib/trellis/admin.json",
	config: true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		adminConfig := fs.String("admin-config", "", "Also write the new admin config to `FILE` (a controller's STATE/admin.json)")
		asJSON := fs.Bool("json", false, "Print the new token as JSON")
		return func(ctx context.Context, args []string) error {
			if err := wantArgs(args); err != nil {
				return err
			}
			s, err := e.session()
			if err != nil {
				return err
			}
			if !*asJSON {
				s.printf("Rotating the admin token as %s...\n", s.user())
			}
			tok, err := s.client.RotateAdminToken(ctx)
			if err != nil {
				return err
			}
			// The config's token was the one replaced if it no longer works:
			// then the config gets the new one (another admin token is kept).
			saved := false
			if _, err := s.client.Tokens(ctx); err != nil {
				var he *api.HTTPError
				if !errors.As(err, &he) || he.Status != http.StatusUnauthorized {
					return err
				}
				s.cfg.Token = tok.Value
				if err := s.cfg.Save(s.path); err != nil {
					return fmt.Errorf("save config: %w (the new admin token is %s)", err, tok.Value)
				}
				saved = true
			}
			if *adminConfig != "" {
				cfg := api.ClientConfig{APIURL: s.cfg.APIURL, APIURLs: s.cfg.APIURLs, CACert: s.cfg.CACert, Token: tok.Value}
				if err := cfg.Save(*adminConfig); err != nil {
					return fmt.Errorf("write %s: %w (the new admin token is %s)", *adminConfig, err, tok.Value)
				}
				saved = true
			}
			if *asJSON {
				return s.printJSON(tok)
			}
			if saved {
				if s.cfg.Token == tok.Value {
					s.printf("Saved the new admin token in %s\n", s.path)
				}
				if *adminConfig != "" {
					s.printf("Wrote the new admin config to %s\n", *adminConfig)
				}
			} else {
				s.printf("%s\n", tok.Value)
			}
			s.printf("TIP: copy the new admin config to STATE/admin.json of every controller; the old admin token no longer works\n")
			s.ok()
			return nil
		}
	},
}
