package cli

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
)

// User commands: the people who log in with the cf CLI (`cf auth NAME
// PASSWORD`) or trellis.

// maxPasswordFile bounds what --password-file reads.
const maxPasswordFile = 4096

// readPassword reads a password from path ("-": stdin): the file's first
// line, without its line ending.
func readPassword(e *env, path string) (string, error) {
	var r io.Reader
	if path == "-" {
		r = e.stdin
	} else {
		f, err := os.Open(path)
		if err != nil {
			return "", badInput("--password-file: %v", err)
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, maxPasswordFile+1))
	if err != nil {
		return "", badInput("--password-file %s: %v", path, err)
	}
	if len(b) > maxPasswordFile {
		return "", badInput("--password-file %s: longer than %d bytes: a password is one line", path, maxPasswordFile)
	}
	pw, _, _ := strings.Cut(string(b), "\n")
	pw = strings.TrimSuffix(pw, "\r")
	if len(pw) < 8 {
		return "", badInput("--password-file %s: the password (its first line) must be at least 8 bytes, got %d", path, len(pw))
	}
	return pw, nil
}

// randomPassword is a password for a user created without one: 144 random
// bits.
func randomPassword() string {
	var b [18]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// spacesFlag collects repeated ORG/SPACE (or SPACE, in the targeted org)
// values.
type spacesFlag []string

func (f *spacesFlag) String() string     { return strings.Join(*f, ",") }
func (f *spacesFlag) Set(v string) error { *f = append(*f, v); return nil }

var createUserCommand = &command{
	name:    "create-user",
	group:   groupControlPlane,
	summary: "Create a user who logs in with a password, as with `cf auth NAME PASSWORD` (admin only)",
	usage: "create-user NAME --admin [--password-file FILE]\n" +
		"create-user NAME --space-developer [ORG/]SPACE... [--password-file FILE]",
	example: "trellis create-user alice --space-developer my-org/my-space --password-file alice.txt\n" +
		"trellis create-user ops --admin\n" +
		"trellis create-user bob --space-developer dev --password-file -",
	config: true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		admin := fs.Bool("admin", false, "The user acts everywhere (network.admin)")
		var spaces spacesFlag
		fs.Var(&spaces, "space-developer", "The user is a developer of `[ORG/]SPACE` (network.write there; repeatable; ORG defaults to the targeted org)")
		pwFile := fs.String("password-file", "", "Read the password from the first line of `FILE` (\"-\": stdin); default: a random one, printed once")
		return func(ctx context.Context, args []string) error {
			if err := wantArgs(args, "NAME"); err != nil {
				return err
			}
			switch {
			case *admin && len(spaces) > 0:
				return badUsage("--admin takes no --space-developer: an admin user acts in every space")
			case !*admin && len(spaces) == 0:
				return badUsage("a user needs --admin or at least one --space-developer [ORG/]SPACE")
			}
			if err := checkName("user", args[0]); err != nil {
				return err
			}
			pw, shown := "", false
			if *pwFile != "" {
				var err error
				if pw, err = readPassword(e, *pwFile); err != nil {
					return err
				}
			} else {
				pw, shown = randomPassword(), true
			}
			s, err := e.session()
			if err != nil {
				return err
			}
			req := api.UserRequest{Name: args[0], Password: pw, Admin: *admin}
			var names []string
			for _, v := range spaces {
				org, space, ok := strings.Cut(v, "/")
				if !ok {
					org, space = s.orgName(), v
				}
				for _, n := range [][2]string{{"org", org}, {"space", space}} {
					if err := checkName(n[0], n[1]); err != nil {
						return err
					}
				}
				t, err := s.targetIn(ctx, org, space)
				if err != nil {
					return err
				}
				req.Spaces = append(req.Spaces, api.UserSpace{SpaceGUID: t.space.GUID, Role: api.RoleDeveloper})
				names = append(names, t.org.Name+"/"+t.space.Name)
			}
			what := "an admin"
			if !*admin {
				what = "a developer of " + strings.Join(names, ", ")
			}
			s.printf("Creating user %s, %s, as %s...\n", args[0], what, s.user())
			if _, err := s.client.CreateUser(ctx, req); err != nil {
				return err
			}
			if shown {
				s.printf("Password: %s\n", pw)
			}
			s.ok()
			return nil
		}
	},
}

var usersCommand = listCommand(listing[api.User]{
	command: command{name: "users", group: groupControlPlane,
		summary: "List the users and their spaces (admin only)",
		usage:   "users [--json]", example: "trellis users\ntrellis users --json"},
	argsError: "users takes no arguments",
	fetch: func(ctx context.Context, l *listRun) ([]api.User, error) {
		l.heading("Getting users as %s...", l.user())
		return l.client.Users(ctx)
	},
	noun:   "users",
	header: []string{"name", "guid", "role", "spaces", "created"},
	rows: func(ctx context.Context, l *listRun, us []api.User) ([][]string, error) {
		var guids []string
		for _, u := range us {
			for _, sp := range u.Spaces {
				guids = append(guids, sp.SpaceGUID)
			}
		}
		names, err := l.spaceNamesByGUID(ctx, guids)
		if err != nil {
			return nil, err
		}
		rows := make([][]string, len(us))
		for i, u := range us {
			role, spaces := "admin", []string{}
			if !u.Admin {
				role = api.RoleDeveloper
				for _, sp := range u.Spaces {
					spaces = append(spaces, orDefault(names[sp.SpaceGUID], sp.SpaceGUID))
				}
			}
			rows[i] = []string{u.Name, u.GUID, role, strings.Join(spaces, ","), u.CreatedAt.Format(time.RFC3339)}
		}
		return rows, nil
	},
})

// userByName finds a user among those the admin lists.
func userByName(ctx context.Context, s *session, name string) (api.User, error) {
	us, err := s.client.Users(ctx)
	if err != nil {
		return api.User{}, err
	}
	for _, u := range us {
		if u.Name == name {
			return u, nil
		}
	}
	return api.User{}, fmt.Errorf("user %s not found", name)
}

var deleteUserCommand = &command{
	name:    "delete-user",
	group:   groupControlPlane,
	summary: "Delete a user: its tokens stop working at once (admin only)",
	usage:   "delete-user NAME",
	example: "trellis delete-user alice",
	config:  true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		return func(ctx context.Context, args []string) error {
			if err := wantArgs(args, "NAME"); err != nil {
				return err
			}
			if err := checkName("user", args[0]); err != nil {
				return err
			}
			s, err := e.session()
			if err != nil {
				return err
			}
			s.printf("Deleting user %s as %s...\n", args[0], s.user())
			u, err := userByName(ctx, s, args[0])
			if err != nil {
				return err
			}
			if err := s.client.DeleteUser(ctx, u.GUID); err != nil {
				return err
			}
			s.ok()
			return nil
		}
	},
}

var setPasswordCommand = &command{
	name:    "set-password",
	group:   groupControlPlane,
	summary: "Set a user's password: the user's tokens from before stop working (admin only)",
	usage:   "set-password NAME --password-file FILE",
	example: "trellis set-password alice --password-file alice.txt\ntrellis set-password alice --password-file -",
	config:  true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		pwFile := fs.String("password-file", "", "Read the new password from the first line of `FILE` (\"-\": stdin)")
		return func(ctx context.Context, args []string) error {
			if err := wantArgs(args, "NAME"); err != nil {
				return err
			}
			if err := requireFlags(fs, "password-file"); err != nil {
				return err
			}
			if err := checkName("user", args[0]); err != nil {
				return err
			}
			pw, err := readPassword(e, *pwFile)
			if err != nil {
				return err
			}
			s, err := e.session()
			if err != nil {
				return err
			}
			s.printf("Setting the password of user %s as %s...\n", args[0], s.user())
			u, err := userByName(ctx, s, args[0])
			if err != nil {
				return err
			}
			if err := s.client.SetUserPassword(ctx, u.GUID, pw); err != nil {
				return err
			}
			s.ok()
			return nil
		}
	},
}
