package cli

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/controller"
)

// realController runs a controller in this process on loopback, with
// SQLite in a temporary state directory, and returns the path of its admin
// config.
func realController(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan string, 1), make(chan error, 1)
	go func() {
		done <- controller.Run(ctx, controller.Config{StateDir: dir, Listen: "127.0.0.1:0", Ready: func(u string) { ready <- u }})
	}()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-ready:
	case err := <-done:
		done <- err
		t.Fatalf("controller.Run: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("controller not ready after 60s")
	}
	return filepath.Join(dir, controller.AdminConfigFile)
}

// TestSecurityGroupVerbs runs the security group verbs against a real
// controller and checks what each prints.
func TestSecurityGroupVerbs(t *testing.T) {
	admin := realController(t)
	rules := filepath.Join(t.TempDir(), "rules.json")
	if err := os.WriteFile(rules, []byte(`[{"protocol":"tcp","destination":"203.0.113.10","ports":"5432","description":"postgres"}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{"HOME": t.TempDir(), "TRELLIS_CONFIG": admin}
	for _, c := range []struct {
		args string
		code int
		want []string // parts of stdout (or stderr when code != 0), in order
	}{
		{"security-groups", 0, []string{"Getting security groups as admin...", "No security groups found."}},
		{"create-security-group db " + rules, 0, []string{"Creating security group db as admin...", "OK"}},
		{"create-security-group bad [{\"protocol\":\"gre\",\"destination\":\"10.0.0.1\"}]", 1, []string{"Rules[0]: protocol must be 'tcp', 'udp', 'icmp', or 'all'"}},
		{"create-security-group dns [{\"protocol\":\"udp\",\"destination\":\"0.0.0.0/0\",\"ports\":\"53\"}]", 0, []string{"OK"}},
		{"bind-security-group db default --space default", 0, []string{"Assigning running security group db to space default in org default as admin...", "OK"}},
		{"bind-security-group db default --lifecycle sideways", 2, []string{"--lifecycle must be running or staging"}},
		{"bind-running-security-group dns", 0, []string{"Binding security group dns to defaults for running as admin...", "OK"}},
		{"running-security-groups", 0, []string{"name", "dns"}},
		{"security-groups --json", 0, []string{`"name": "db"`, `"name": "dns"`}},
		{"security-group dns --json", 0, []string{`"running": true`}},
		{"security-groups", 0, []string{"name   organization   space     lifecycle", "db     default        default   running", "dns    <all>          <all>     running"}},
		{"security-group db", 0, []string{"name:    db", `"destination": "203.0.113.10"`, "organization   space     lifecycle", "default        default   running"}},
		{"create-app backend", 0, []string{"OK"}},
		{"explain backend --to 203.0.113.10:5432", 0, []string{"ALLOWED: backend -> 203.0.113.10:5432 on tcp (egress)", "rule 0 of security group db"}},
		{"explain backend --to 203.0.113.10 --port 22", 0, []string{"DENIED: backend -> 203.0.113.10:22 on tcp (egress)", "egress: no security group allows tcp to 203.0.113.10:22 for app backend in space default"}},
		{"update-security-group db [{\"protocol\":\"tcp\",\"destination\":\"203.0.113.0/24\",\"ports\":\"5432\"}]", 0, []string{"Updating security group db as admin...", "OK"}},
		{"unbind-security-group db default default", 0, []string{"Removing running security group db from org default / space default as admin...", "OK"}},
		{"unbind-security-group db default default", 0, []string{"not bound to space default"}},
		{"unbind-running-security-group dns", 0, []string{"OK"}},
		{"running-security-groups", 0, []string{"No global running security groups found."}},
		{"delete-security-group db -f", 0, []string{"Deleting security group db as admin...", "OK"}},
		{"security-group db", 1, []string{"Security group db not found"}},
	} {
		got := runCLI(vars, strings.Fields(c.args)...)
		out := got.Stdout
		if c.code != 0 {
			out = got.Stderr
		}
		if got.Code != c.code {
			t.Errorf("trellis %s: exit %d, want %d\nstdout: %s\nstderr: %s", c.args, got.Code, c.code, got.Stdout, got.Stderr)
			continue
		}
		rest := out
		for _, w := range c.want {
			i := strings.Index(rest, w)
			if i < 0 {
				t.Errorf("trellis %s: output lacks %q (in order)\n%s", c.args, w, out)
				break
			}
			rest = rest[i+len(w):]
		}
	}
	for _, verb := range []string{"create-security-group", "bind-security-group", "unbind-security-group", "security-groups", "bind-running-security-group"} {
		if got := runCLI(vars, verb, "--help"); got.Code != 0 || !strings.Contains(got.Stdout, "trellis "+verb) {
			t.Errorf("trellis %s --help = %d %q", verb, got.Code, got.Stdout)
		}
	}
}
