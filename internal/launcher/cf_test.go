package launcher

import (
	"os"
	"os/exec"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/trellis-c2c/trellis/internal/cftest"
)

// TestCFCLIOnFoundation is issue 15's end-to-end proof: Cloud Foundry's
// own cf CLI (unmodified), logged in as the foundation's admin user
// (STATE/admin-password), drives a local foundation of two cells: it
// sees the apps trellis pushed running across both cells, makes the
// internal route backend.apps.internal, maps it, and adds a network
// policy, which the cells then enforce: an instance of frontend on each
// cell reaches backend.apps.internal:8080. After cf remove-network-policy
// it is refused again; cf stop and cf start stop and start an app on the
// cells. (Apps are pushed with trellis: cf push is not part of trellis.)
func TestCFCLIOnFoundation(t *testing.T) {
	cf := cftest.Path(t)
	if cf == "" {
		t.Skip("no cf CLI: set TRELLIS_CF_CLI (under CI=true a missing one fails)")
	}
	fd := upFoundation(t, 2)
	fd.cli(0, "push", "backend", "-i", "2")
	// Not pinned: placed on the cell with the fewest instances, one each.
	fd.cli(0, "push", "frontend", "-i", "2")

	home := t.TempDir()
	run := func(want int, args ...string) string {
		t.Helper()
		cmd := exec.Command(cf, args...)
		cmd.Env = append(os.Environ(), "CF_HOME="+home, "CF_COLOR=false")
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("cf %v: %v", args, err)
		}
		t.Logf("$ cf %s\n%s", strings.Join(args, " "), out)
		if code != want {
			t.Fatalf("cf %s = exit %d, want %d:\n%s", strings.Join(args, " "), code, want, out)
		}
		return string(out)
	}
	has := func(out, re string) {
		t.Helper()
		if !regexp.MustCompile("(?m)" + re).MatchString(out) {
			t.Errorf("cf output lacks %q:\n%s", re, out)
		}
	}

	pw, err := os.ReadFile(fd.f.AdminPassword)
	if err != nil {
		t.Fatal(err)
	}
	run(0, "api", fd.f.APIURL, "--skip-ssl-validation")
	has(run(0, "auth", AdminUser, strings.TrimSpace(string(pw))), `^OK$`)
	has(run(0, "target", "-o", "default", "-s", "default"), `^space:\s+default$`)

	// cf apps: both apps' instances run, one on each cell.
	var cells []string
	for _, c := range fd.f.Cells {
		cells = append(cells, c.Name)
	}
	sort.Strings(cells)
	for _, app := range []string{"backend", "frontend"} {
		var on []string
		for _, in := range fd.instances(app) {
			on = append(on, in.CellName)
		}
		if sort.Strings(on); !slices.Equal(on, cells) {
			t.Fatalf("%s's instances are on cells %v, want one on each of %v", app, on, cells)
		}
	}
	out := run(0, "apps")
	has(out, `^backend\s+started\s+web:2/2\s*$`)
	has(out, `^frontend\s+started\s+web:2/2\s*$`)
	has(run(0, "app", "backend"), `^instances:\s+2/2$`)

	// The internal route, made and mapped with cf.
	has(run(0, "create-route", "apps.internal", "--hostname", "backend"), `^Route backend\.apps\.internal has been created\.$`)
	has(run(0, "map-route", "backend", "apps.internal", "--hostname", "backend"), `^OK$`)
	has(run(0, "routes"), `^default\s+backend\s+apps\.internal\s+http\s+http1\s+8080\s+backend\s*$`)

	// From each cell's frontend, through the sample app's /proxy/ (Go's
	// resolver and a TCP connection inside the frontend instance).
	fe := byIndex(fd.instances("frontend"))
	proxy := func(f instance) (int, string) {
		t.Helper()
		return get(t, f.netns, f.IP+":8080", "/proxy/backend.apps.internal:8080/")
	}
	refused := func(why string) {
		t.Helper()
		for _, f := range fe {
			var last string
			waitFor(t, "frontend on "+f.CellName+" to be refused by backend.apps.internal:8080 "+why, func() bool {
				_, last = proxy(f)
				return strings.Contains(last, "connection refused")
			})
			t.Logf("from frontend #%d on %s %s: %s", f.Index, f.CellName, why, strings.TrimSpace(last))
		}
	}
	refused("without a policy")

	has(run(0, "add-network-policy", "frontend", "backend", "--protocol", "tcp", "--port", "8080"), `^OK$`)
	for _, f := range fe {
		var last string
		waitFor(t, "frontend on "+f.CellName+" to reach backend.apps.internal:8080", func() bool {
			var code int
			code, last = proxy(f)
			return code == 200 && strings.Contains(last, `"app":"backend"`)
		})
		t.Logf("from frontend #%d on %s with the policy: %s", f.Index, f.CellName, strings.TrimSpace(last))
	}
	has(run(0, "network-policies"), `^frontend\s+backend\s+tcp\s+8080\s+default\s+default$`)
	has(run(0, "network-policies", "--source", "frontend"), `^frontend\s+backend\s+tcp\s+8080\s+default\s+default$`)

	has(run(0, "remove-network-policy", "frontend", "backend", "--protocol", "tcp", "--port", "8080"), `^OK$`)
	refused("after cf remove-network-policy")
	if out := run(0, "network-policies"); strings.Contains(out, "backend") {
		t.Errorf("cf network-policies after remove-network-policy still lists it:\n%s", out)
	}

	// Instance counts as the cf CLI shows them, by index.
	for _, in := range byIndex(fd.instances("backend")) {
		has(run(0, "app", "backend"), `^#`+strconv.Itoa(in.Index)+`\s+running\s`)
	}

	// cf stop and cf start: the cells stop the instances and start them
	// again, and cf start waits until they run.
	has(run(0, "stop", "frontend"), `^OK$`)
	waitFor(t, "frontend's instances to stop", func() bool { return len(fd.instances("frontend")) == 0 })
	has(run(0, "apps"), `^frontend\s+stopped\s+web:0/2\s*$`)
	has(run(0, "start", "frontend"), `^requested state:\s+started$`)
	has(run(0, "apps"), `^frontend\s+started\s+web:2/2\s*$`)
}
