package cli

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/trellis-c2c/trellis/internal/api"
)

// result is what one run of the command line left behind.
type result struct {
	Code           int
	Stdout, Stderr string
}

// runCLI runs the trellis command line with the given environment
// variables (HOME, TRELLIS_CONFIG) and nothing else of the process's.
func runCLI(vars map[string]string, args ...string) result {
	var stdout, stderr bytes.Buffer
	e := &env{
		stdin:  strings.NewReader(""),
		stdout: &stdout,
		stderr: &stderr,
		getenv: func(k string) string { return vars[k] },
	}
	code := run(context.Background(), args, e)
	return result{code, stdout.String(), stderr.String()}
}

func TestHelpListsEveryCommand(t *testing.T) {
	for _, args := range [][]string{nil, {"help"}, {"--help"}, {"-h"}} {
		got := runCLI(nil, args...)
		if got.Code != 0 || got.Stderr != "" {
			t.Errorf("trellis %q = %+v, want exit 0 and no stderr", args, got)
		}
		for _, c := range commands {
			if !strings.Contains(got.Stdout, "   "+c.name+" ") {
				t.Errorf("trellis %q does not list %s:\n%s", args, c.name, got.Stdout)
			}
		}
		for _, title := range []string{"Control plane:", "Apps and routes:", "Network policies:"} {
			if !strings.Contains(got.Stdout, "\n"+title+"\n") {
				t.Errorf("trellis %q has no heading %q", args, title)
			}
		}
	}
}

func TestCommandHelp(t *testing.T) {
	for _, c := range commands {
		t.Run(c.name, func(t *testing.T) {
			if c.summary == "" || c.usage == "" || c.example == "" {
				t.Fatalf("command %s lacks a summary, usage or example", c.name)
			}
			got := runCLI(nil, c.name, "--help")
			if got.Code != 0 || got.Stderr != "" {
				t.Fatalf("trellis %s --help = %+v, want exit 0 and no stderr", c.name, got)
			}
			if other := runCLI(nil, "help", c.name); other != got {
				t.Errorf("trellis help %s = %+v, want the same as --help %+v", c.name, other, got)
			}
			for line := range strings.Lines(c.usage) {
				if want := "   trellis " + strings.TrimSpace(line) + "\n"; !strings.Contains(got.Stdout, want) {
					t.Errorf("help of %s lacks usage line %q:\n%s", c.name, want, got.Stdout)
				}
			}
			fs, _ := c.flagSet(&env{})
			fs.VisitAll(func(f *flag.Flag) {
				if !strings.Contains(got.Stdout, "-"+f.Name) {
					t.Errorf("help of %s lacks flag -%s:\n%s", c.name, f.Name, got.Stdout)
				}
			})
			// Every example is a well-formed command line of this command.
			for line := range strings.Lines(c.example) {
				args := strings.Fields(line)
				if len(args) < 2 || args[0] != "trellis" || args[1] != c.name {
					t.Errorf("example %q of %s does not run trellis %s", line, c.name, c.name)
					continue
				}
				if !strings.Contains(got.Stdout, "   "+strings.TrimSpace(line)+"\n") {
					t.Errorf("help of %s lacks example %q", c.name, line)
				}
				fs, _ := c.flagSet(&env{})
				if _, err := parseArgs(fs, args[2:]); err != nil {
					t.Errorf("example %q: parseArgs = %v", line, err)
				}
			}
		})
	}
}

// TestUsageErrors checks command lines that are rejected before any
// config is read or controller called: each gives one line on stderr.
func TestUsageErrors(t *testing.T) {
	tests := []struct {
		args   string
		code   int
		stderr string
	}{
		{"frobnicate", 2, `trellis: unknown command "frobnicate": run 'trellis help' for the list of commands`},
		{"--verbose", 2, `trellis: unknown flag "--verbose": run 'trellis help' for usage`},
		{"help frobnicate", 2, `trellis: unknown command "frobnicate": run 'trellis help' for the list of commands`},
		{"apps --bogus", 2, "Incorrect Usage: flag provided but not defined: -bogus"},
		{"apps extra", 2, `Incorrect Usage: unexpected argument "extra"`},
		{"target -o", 2, "Incorrect Usage: flag needs an argument: -o"},

		// Users (issue 15).
		{"create-user", 2, "Incorrect Usage: the required argument `NAME` was not provided"},
		{"create-user alice", 2, "Incorrect Usage: a user needs --admin or at least one --space-developer [ORG/]SPACE"},
		{"create-user alice --admin --space-developer dev", 2, "Incorrect Usage: --admin takes no --space-developer: an admin user acts in every space"},
		{"create-user alice --admin --password-file /nonexistent/pw", 2, "trellis: --password-file: open /nonexistent/pw: no such file or directory"},
		{"set-password alice", 2, "Incorrect Usage: the required flag `--password-file' was not specified"},
		{"delete-user", 2, "Incorrect Usage: the required argument `NAME` was not provided"},

		// add-network-policy, with the cf CLI's messages.
		{"add-network-policy frontend backend --port 8080", 2, "Incorrect Usage: --protocol and --port flags must be specified together"},
		{"add-network-policy frontend backend --protocol tcp", 2, "Incorrect Usage: --protocol and --port flags must be specified together"},
		{"add-network-policy frontend backend --protocol tcp --port abc", 2, "Incorrect Usage: PORT must be a positive integer"},
		{"add-network-policy frontend backend --protocol tcp --port 0", 2, "Incorrect Usage: PORT must be a positive integer"},
		{"add-network-policy frontend backend --protocol tcp --port 8080-", 2, "Incorrect Usage: PORT must be a positive integer"},
		{"add-network-policy frontend backend --protocol tcp --port 1-2-3", 2, "Incorrect Usage: PORT syntax must match integer[-integer]"},
		{"add-network-policy frontend backend --protocol tcp --port 70000", 2, "Incorrect Usage: invalid port 70000: must be in range 1-65535"},
		{"add-network-policy frontend backend --protocol tcp --port 9000-8000", 2, "Incorrect Usage: invalid port range 9000-8000: start must be less than or equal to end"},
		{"add-network-policy frontend backend --protocol icmp --port 80", 2, `Incorrect Usage: PROTOCOL must be "tcp" or "udp"`},
		{"add-network-policy frontend backend --port x --protocol icmp", 2, "Incorrect Usage: PORT must be a positive integer"},
		{"add-network-policy frontend", 2, "Incorrect Usage: the required argument `DESTINATION_APP` was not provided"},
		{"add-network-policy", 2, "Incorrect Usage: the required arguments `SOURCE_APP` and `DESTINATION_APP` were not provided"},
		{"add-network-policy a b c", 2, `Incorrect Usage: unexpected argument "c"`},
		{"add-network-policy frontend backend -o other", 2, "Incorrect Usage: space must be provided with org, the required flag '-s' was not specified"},
		{"add-network-policy frontend ba\x01d", 2, `trellis: invalid destination app name "ba\x01d": must not contain control characters`},
		{"add-network-policy -- -frontend backend", 1, "trellis: no trellis config at ~/.trellis/config.json: run `trellis login --config-from STATE/admin.json` or pass --config"},

		// remove-network-policy requires both flags.
		{"remove-network-policy frontend backend", 2, "Incorrect Usage: the required flags `--port' and `--protocol' were not specified"},
		{"remove-network-policy frontend backend --port 8080", 2, "Incorrect Usage: the required flag `--protocol' was not specified"},
		{"remove-network-policy frontend backend --protocol TCP", 2, "Incorrect Usage: the required flag `--port' was not specified"},
		{"remove-network-policy frontend backend --protocol tcp --port 8080-x", 2, "Incorrect Usage: PORT must be a positive integer"},

		{"network-policies --source", 2, "Incorrect Usage: flag needs an argument: -source"},
		{"create-app", 2, "Incorrect Usage: the required argument `APP` was not provided"},
		{"create-app backend -s", 2, "Incorrect Usage: flag needs an argument: -s"},
		{"create-org", 2, "Incorrect Usage: the required argument `ORG` was not provided"},
		{"delete-app", 2, "Incorrect Usage: the required argument `APP` was not provided"},
		{"create-domain apps.example", 2, "trellis: only internal domains are supported: pass --internal"},
		{"create-domain Apps.example --internal", 2, `trellis: invalid domain "Apps.example": each dot-separated label must be 1-63 characters of a-z, 0-9 and '-', not beginning or ending with '-'`},
		{"map-route backend apps.internal", 2, "Incorrect Usage: the required flag `--hostname' was not specified"},
		{"map-route backend apps.internal -n -x-", 2, `trellis: invalid hostname "-x-": must be 1-63 characters of a-z, 0-9 and '-', not beginning or ending with '-'`},
		{"unmap-route backend", 2, "Incorrect Usage: the required argument `DOMAIN` was not provided"},
		{"login", 2, "Incorrect Usage: the required flag `--config-from' was not specified"},
		{"create-token", 2, "Incorrect Usage: the required flag `--scope' was not specified"},
		{"create-token --scope root", 2, `Incorrect Usage: SCOPE must be "network.write" or "network.admin"`},
		{"create-token --scope network.write", 2, "Incorrect Usage: --scope network.write needs --space SPACE"},
		{"create-token --scope network.admin --space s", 2, "Incorrect Usage: --scope network.admin takes no --space: an admin token acts everywhere"},
		{"create-token --scope network.write --org o", 2, "Incorrect Usage: --org needs --space: it names the org of the space"},
		{"create-token --scope network.admin --ttl 8761h", 2, "Incorrect Usage: --ttl must be from 1s to 8760h (365 days), got 8761h0m0s"},
		{"revoke-token", 2, "Incorrect Usage: the required argument `GUID` was not provided"},
		{"tokens x", 2, "Incorrect Usage: tokens takes no arguments"},
		{"rotate-admin-token x", 2, `Incorrect Usage: unexpected argument "x"`},
	}
	home := t.TempDir() // empty: no config
	for _, tt := range tests {
		args := strings.Fields(tt.args)
		got := runCLI(map[string]string{"HOME": home}, args...)
		want := result{Code: tt.code, Stderr: tt.stderr + "\n"}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("trellis %s (-want +got):\n%s", tt.args, diff)
		}
	}
}

func TestParsePort(t *testing.T) {
	tests := []struct {
		in   string
		want api.Ports
		err  string
	}{
		{"8080", api.Ports{Start: 8080, End: 8080}, ""},
		{"1", api.Ports{Start: 1, End: 1}, ""},
		{"65535", api.Ports{Start: 65535, End: 65535}, ""},
		{"8080-8090", api.Ports{Start: 8080, End: 8090}, ""},
		{"1-65535", api.Ports{Start: 1, End: 65535}, ""},
		{"8080-8080", api.Ports{Start: 8080, End: 8080}, ""},
		{"", api.Ports{}, "PORT must be a positive integer"},
		{"0", api.Ports{}, "PORT must be a positive integer"},
		{"-8080", api.Ports{}, "PORT must be a positive integer"},
		{"http", api.Ports{}, "PORT must be a positive integer"},
		{"80-http", api.Ports{}, "PORT must be a positive integer"},
		{"80-0", api.Ports{}, "PORT must be a positive integer"},
		{"1-2-3", api.Ports{}, "PORT syntax must match integer[-integer]"},
		{"x-2-3", api.Ports{}, "PORT must be a positive integer"}, // cf reads the start first
		{"65536", api.Ports{}, "invalid port 65536: must be in range 1-65535"},
		{"1-65536", api.Ports{}, "invalid port 65536: must be in range 1-65535"},
		{"8090-8080", api.Ports{}, "invalid port range 8090-8080: start must be less than or equal to end"},
	}
	for _, tt := range tests {
		got, err := parsePort(tt.in)
		gotErr := ""
		if err != nil {
			gotErr = err.Error()
		}
		if got != tt.want || gotErr != tt.err {
			t.Errorf("parsePort(%q) = %v, %q, want %v, %q", tt.in, got, gotErr, tt.want, tt.err)
		}
	}
}

func TestFormatPorts(t *testing.T) {
	for _, tt := range []struct {
		in   api.Ports
		want string
	}{
		{api.Ports{Start: 8080, End: 8080}, "8080"},
		{api.Ports{Start: 8080, End: 8090}, "8080-8090"},
	} {
		if got := formatPorts(tt.in); got != tt.want {
			t.Errorf("formatPorts(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestParseProtocol(t *testing.T) {
	for _, tt := range []struct{ in, want, err string }{
		{"tcp", "tcp", ""},
		{"UDP", "udp", ""},
		{"Tcp", "tcp", ""},
		{"icmp", "", `PROTOCOL must be "tcp" or "udp"`},
		{"", "", `PROTOCOL must be "tcp" or "udp"`},
	} {
		got, err := parseProtocol(tt.in)
		gotErr := ""
		if err != nil {
			gotErr = err.Error()
		}
		if got != tt.want || gotErr != tt.err {
			t.Errorf("parseProtocol(%q) = %q, %q, want %q, %q", tt.in, got, gotErr, tt.want, tt.err)
		}
	}
}

func TestParseArgs(t *testing.T) {
	tests := []struct {
		args     string
		wantPos  []string
		wantPort string
		wantF    bool
	}{
		{"a b", []string{"a", "b"}, "", false},
		{"--port 80 a b", []string{"a", "b"}, "80", false},
		{"a --port 80 b", []string{"a", "b"}, "80", false},
		{"a b --port 80", []string{"a", "b"}, "80", false},
		{"a b --port=80 -f", []string{"a", "b"}, "80", true},
		{"-f a -- b --port 80", []string{"a", "b", "--port", "80"}, "", true},
		{"-- -f", []string{"-f"}, "", false},
		{"a - b", []string{"a", "-", "b"}, "", false},
		{"", nil, "", false},
	}
	for _, tt := range tests {
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		port := fs.String("port", "", "")
		f := fs.Bool("f", false, "")
		pos, err := parseArgs(fs, strings.Fields(tt.args))
		if err != nil {
			t.Errorf("parseArgs(%q) error = %v", tt.args, err)
			continue
		}
		if !cmp.Equal(pos, tt.wantPos) || *port != tt.wantPort || *f != tt.wantF {
			t.Errorf("parseArgs(%q) = %q, port %q, f %v; want %q, port %q, f %v",
				tt.args, pos, *port, *f, tt.wantPos, tt.wantPort, tt.wantF)
		}
	}
}

func TestCheckName(t *testing.T) {
	tests := []struct{ name, err string }{
		{"backend", ""},
		{"my app", ""},
		{"ünïcode", ""},
		{strings.Repeat("x", 255), ""},
		{"", `invalid app name "": must not be empty`},
		{" backend", `invalid app name " backend": must not begin or end with a space`},
		{"backend ", `invalid app name "backend ": must not begin or end with a space`},
		{"back\tend", `invalid app name "back\tend": must not contain control characters`},
		{"back\x7fend", `invalid app name "back\x7fend": must not contain control characters`},
		{"\xff", `invalid app name "\xff": must be valid UTF-8`},
		{strings.Repeat("é", 256), `invalid app name "` + strings.Repeat("é", 256) + `": must be at most 255 characters`},
	}
	for _, tt := range tests {
		err := checkName("app", tt.name)
		gotErr := ""
		if err != nil {
			gotErr = err.Error()
		}
		if gotErr != tt.err {
			t.Errorf("checkName(app, %q) = %q, want %q", tt.name, gotErr, tt.err)
		}
	}
}

func TestCheckHostAndDomain(t *testing.T) {
	for _, tt := range []struct {
		in        string
		host, dom bool
	}{
		{"backend", true, true},
		{"a", true, true},
		{"my-app-2", true, true},
		{strings.Repeat("a", 63), true, true},
		{strings.Repeat("a", 64), false, false},
		{"apps.internal", false, true},
		{"a.b.c", false, true},
		{"", false, false},
		{"-a", false, false},
		{"a-", false, false},
		{"Backend", false, false},
		{"a_b", false, false},
		{"apps..internal", false, false},
		{".apps.internal", false, false},
		{"apps.internal.", false, false},
		{strings.Repeat(strings.Repeat("a", 63)+".", 4) + "a", false, false}, // 257 characters
	} {
		if got := checkHost(tt.in) == nil; got != tt.host {
			t.Errorf("checkHost(%q) ok = %v, want %v", tt.in, got, tt.host)
		}
		if got := checkDomain(tt.in) == nil; got != tt.dom {
			t.Errorf("checkDomain(%q) ok = %v, want %v", tt.in, got, tt.dom)
		}
	}
}

func TestConfigPath(t *testing.T) {
	tests := []struct {
		name              string
		flag              string
		vars              map[string]string
		wantPath, wantErr string
	}{
		{"flag wins", "/etc/c.json", map[string]string{"TRELLIS_CONFIG": "/env.json", "HOME": "/home/u"}, "/etc/c.json", ""},
		{"env next", "", map[string]string{"TRELLIS_CONFIG": "/env.json", "HOME": "/home/u"}, "/env.json", ""},
		{"home last", "", map[string]string{"HOME": "/home/u"}, "/home/u/.trellis/config.json", ""},
		{"no home", "", nil, "", "HOME is not set: pass --config FILE or set TRELLIS_CONFIG"},
	}
	for _, tt := range tests {
		e := &env{configFlag: tt.flag, getenv: func(k string) string { return tt.vars[k] }}
		path, _, err := e.configPath()
		gotErr := ""
		if err != nil {
			gotErr = err.Error()
		}
		if path != tt.wantPath || gotErr != tt.wantErr {
			t.Errorf("%s: configPath() = %q, %q, want %q, %q", tt.name, path, gotErr, tt.wantPath, tt.wantErr)
		}
	}
}

func TestMissingConfigNamesThePath(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "nope.json")
	tests := []struct {
		args []string
		vars map[string]string
		want string
	}{
		{[]string{"orgs"}, map[string]string{"HOME": dir},
			"trellis: no trellis config at ~/.trellis/config.json: run `trellis login --config-from STATE/admin.json` or pass --config\n"},
		{[]string{"orgs"}, map[string]string{"HOME": dir, "TRELLIS_CONFIG": missing},
			"trellis: no trellis config at " + missing + ": run `trellis login --config-from STATE/admin.json` or pass --config\n"},
		{[]string{"orgs", "--config", missing}, map[string]string{"HOME": dir},
			"trellis: no trellis config at " + missing + ": run `trellis login --config-from STATE/admin.json` or pass --config\n"},
	}
	for _, tt := range tests {
		got := runCLI(tt.vars, tt.args...)
		if diff := cmp.Diff(result{Code: 1, Stderr: tt.want}, got); diff != "" {
			t.Errorf("trellis %q with %v (-want +got):\n%s", tt.args, tt.vars, diff)
		}
	}
}

func TestCommandNamesAreUnique(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range commands {
		if seen[c.name] {
			t.Errorf("command %s is in the command table twice", c.name)
		}
		seen[c.name] = true
	}
}

func TestAddedCommandRuns(t *testing.T) {
	saved := commands
	t.Cleanup(func() { commands = saved })
	commands = append(slices.Clip(commands), &command{
		name:    "frobnicate",
		group:   groupLocal,
		summary: "Frobnicate a local foundation",
		usage:   "frobnicate [--cells N]",
		example: "trellis frobnicate --cells 2",
		setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
			cells := fs.Int("cells", 1, "Run `N` cells")
			return func(ctx context.Context, args []string) error {
				e.printf("starting %d cells\n", *cells)
				return nil
			}
		},
	})
	if got := runCLI(nil, "help"); !strings.Contains(got.Stdout, "   frobnicate ") {
		t.Errorf("help does not list the added command:\n%s", got.Stdout)
	}
	if got, want := runCLI(nil, "frobnicate", "--cells", "3"), (result{Stdout: "starting 3 cells\n"}); got != want {
		t.Errorf("trellis frobnicate --cells 3 = %+v, want %+v", got, want)
	}
	if got := runCLI(nil, "frobnicate", "--config", "x"); got.Code != 2 {
		t.Errorf("trellis frobnicate --config x = %+v, want exit 2: it takes no config", got)
	}
}

func TestLoginSavesPrivateConfig(t *testing.T) {
	f := newFakeController(t)
	home := t.TempDir()
	admin := f.adminJSON(t, t.TempDir())
	got := runCLI(map[string]string{"HOME": home}, "login", "--config-from", admin)
	if want := (result{Stdout: "Logged in to " + f.srv.URL + "\nOK\n"}); got != want {
		t.Fatalf("trellis login = %+v, want %+v", got, want)
	}
	path := filepath.Join(home, ".trellis", "config.json")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", path, fi.Mode().Perm())
	}
	cfg, err := api.LoadClientConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.APIURL != f.srv.URL || cfg.Token != fakeToken {
		t.Errorf("saved config = %+v, want the admin.json's URL and token", cfg)
	}
}

func TestLoginRefusesBadToken(t *testing.T) {
	f := newFakeController(t)
	home := t.TempDir()
	admin := f.adminJSON(t, t.TempDir())
	got := runCLI(map[string]string{"HOME": home}, "login", "--config-from", admin, "--token", "trls_wrong", "--user", "ci")
	want := result{Code: 1, Stderr: "trellis: controller at " + f.srv.URL + " refused the token: failed to verify token with uaa\n"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("trellis login with a bad token (-want +got):\n%s", diff)
	}
	if _, err := os.Stat(filepath.Join(home, ".trellis")); !os.IsNotExist(err) {
		t.Errorf("a refused login wrote a config (stat: %v)", err)
	}
}
