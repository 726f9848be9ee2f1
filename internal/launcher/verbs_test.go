package launcher

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/cni"
	"github.com/trellis-c2c/trellis/internal/executor"
)

// run runs the trellis CLI with env added to the test's environment (in
// which TRELLIS_CONFIG and TRELLIS_STATE_DIR are unset, so that nothing
// reaches ~/.trellis or the default state dir by accident), and returns
// its exit status, stdout and stderr.
func run(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(trellisBin, args...)
	cmd.Env = append(os.Environ(), "TRELLIS_CONFIG=", "TRELLIS_STATE_DIR=")
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("trellis %v: %v", args, err)
	}
	return code, stdout.String(), stderr.String()
}

// netnsList is `ip netns list`: the names only.
func netnsList(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatalf("ip netns list: %v", err)
	}
	var names []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names
}

// tableRow is the row of a CLI table whose first column is first, split
// into its columns (no column here has spaces).
func tableRow(table, first string) []string {
	for _, l := range strings.Split(table, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == first {
			return f
		}
	}
	return nil
}

// serving waits until the app of in accepts connections on 8080 (an
// instance is RUNNING once attached, a moment before its app listens).
func serving(t *testing.T, in instance) {
	t.Helper()
	waitFor(t, "instance "+in.GUID+" to listen on 8080", func() bool {
		c, err := dialErr(in.netns, "tcp", in.IP+":8080")
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// TestLocalFoundationVerbs drives one foundation through the CLI as an
// operator would, verb by verb: `up --detach` (its admin.json and the
// hints it prints, run as printed), `status` and `status --json`,
// `cni-config --cell`, `push --env` and the CF_INSTANCE_* environment seen
// through `exec`, `stop`/`start`/`restart`, `delete-app` of a running app,
// and `down`, after which nothing of it is left.
func TestLocalFoundationVerbs(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	config := filepath.Join(dir, "cli.json")
	t.Cleanup(func() {
		f, err := Load(dir)
		if err != nil {
			return // taken down by the test (or never up)
		}
		if err := Down(context.Background(), dir, true, testWriter{t}); err != nil {
			t.Errorf("Down = %v", err)
		}
		if left := ownNamespaces(f.Prefix); len(left) > 0 {
			t.Errorf("namespaces left after Down: %v", left)
		}
	})
	code, upOut, upErr := run(t, nil, "up", "--cells", "2", "--detach", "--state-dir", dir, "--config", config)
	if code != 0 {
		t.Fatalf("trellis up --detach = exit %d:\n%s\n%s", code, upOut, upErr)
	}
	f, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("up/admin.json", func(t *testing.T) {
		admin := filepath.Join(dir, "admin.json")
		if f.Admin != admin {
			t.Errorf("foundation admin config = %s, want %s", f.Admin, admin)
		}
		st, err := os.Stat(admin)
		if err != nil {
			t.Fatalf("STATE/admin.json: %v", err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("STATE/admin.json mode = %v, want 0600", st.Mode().Perm())
		}
		top, err := os.ReadFile(admin)
		if err != nil {
			t.Fatal(err)
		}
		ctrl, err := os.ReadFile(filepath.Join(dir, "controller", "admin.json"))
		if err != nil {
			t.Fatalf("STATE/controller/admin.json (the controller's own) is gone: %v", err)
		}
		if !bytes.Equal(top, ctrl) {
			t.Errorf("STATE/admin.json differs from STATE/controller/admin.json")
		}
		if !strings.Contains(upOut, "admin config: "+admin) {
			t.Errorf("up's output does not name %s:\n%s", admin, upOut)
		}
		cfg, err := api.LoadClientConfig(config)
		if err != nil {
			t.Fatalf("the CLI config up wrote: %v", err)
		}
		if cfg.APIURL != f.APIURL {
			t.Errorf("CLI config API URL = %s, want %s", cfg.APIURL, f.APIURL)
		}
		// Any shell logs in with it.
		other := filepath.Join(t.TempDir(), "other.json")
		if code, out, errOut := run(t, nil, "login", "--config-from", admin, "--config", other); code != 0 {
			t.Errorf("trellis login --config-from STATE/admin.json = exit %d: %s%s", code, out, errOut)
		}
		if code, out, errOut := run(t, []string{"TRELLIS_CONFIG=" + other}, "cells"); code != 0 || !strings.Contains(out, "cell2") {
			t.Errorf("trellis cells with the login's config = exit %d: %s%s", code, out, errOut)
		}
	})

	// The admin user (issue 15): its password in a 0600 file, the cf
	// CLI's login line printed, and the password logs in.
	t.Run("up/admin user", func(t *testing.T) {
		pwFile := filepath.Join(dir, AdminPasswordFile)
		if f.AdminPassword != pwFile {
			t.Errorf("foundation admin password file = %s, want %s", f.AdminPassword, pwFile)
		}
		st, err := os.Stat(pwFile)
		if err != nil {
			t.Fatalf("STATE/%s: %v", AdminPasswordFile, err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("STATE/%s mode = %v, want 0600", AdminPasswordFile, st.Mode().Perm())
		}
		if want := "cf api " + f.APIURL + " --skip-ssl-validation && cf auth admin \"$(cat " + pwFile + ")\""; !strings.Contains(upOut, want) {
			t.Errorf("up's output lacks the cf CLI's login line %s:\n%s", want, upOut)
		}
		b, err := os.ReadFile(pwFile)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := api.LoadClientConfig(filepath.Join(dir, "admin.json"))
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM([]byte(cfg.CACert))
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		form := url.Values{"grant_type": {"password"}, "username": {AdminUser}, "password": {strings.TrimSpace(string(b))}}
		req, _ := http.NewRequest("POST", f.APIURL+"/oauth/token", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth("cf", "")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("log in as admin with STATE/%s = %s, want 200", AdminPasswordFile, resp.Status)
		}
	})

	fd := func(t *testing.T) *foundation { return &foundation{t: t, f: f} }

	t.Run("status", func(t *testing.T) {
		cells, err := fd(t).client().Cells(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		subnets := map[string]string{}
		for _, c := range cells {
			subnets[c.Name] = c.Subnet.String()
		}
		namespaces := netnsList(t)
		out := fd(t).cli(0, "status")
		for _, want := range []string{f.APIURL + "   healthy: true", f.Underlay, f.CNIPlugin} {
			if !strings.Contains(out, want) {
				t.Errorf("status lacks %q:\n%s", want, out)
			}
		}
		for _, c := range f.Cells {
			want := []string{c.Name, c.NetNS, c.UnderlayIP, subnets[c.Name], "true", f.APIURL, "off", c.CNIConfList}
			if row := tableRow(out, c.Name); !slices.Equal(row, want) {
				t.Errorf("status row of %s = %q, want %q:\n%s", c.Name, row, want, out)
			}
		}

		var st struct {
			APIURL     string `json:"api_url"`
			Controller struct {
				PID int `json:"pid"`
			} `json:"controller"`
			ControllerHealthy bool   `json:"controller_healthy"`
			Underlay          string `json:"underlay_netns"`
			CNIPlugin         string `json:"cni_plugin"`
			Cells             []struct {
				Name        string `json:"name"`
				NetNS       string `json:"netns"`
				UnderlayIP  string `json:"underlay_ip"`
				Subnet      string `json:"subnet"`
				Healthy     bool   `json:"healthy"`
				CNIConfList string `json:"cni_conflist"`
				Socket      string `json:"agent_socket"`
				Controller  string `json:"controller"`
			} `json:"cells"`
		}
		if err := json.Unmarshal([]byte(fd(t).cli(0, "status", "--json")), &st); err != nil {
			t.Fatalf("status --json: %v", err)
		}
		if st.APIURL != f.APIURL || !st.ControllerHealthy || !(Process{PID: st.Controller.PID}).alive("controller") {
			t.Errorf("status --json controller = %s pid %d healthy %v, want %s, a running controller, healthy",
				st.APIURL, st.Controller.PID, st.ControllerHealthy, f.APIURL)
		}
		if !slices.Contains(namespaces, st.Underlay) {
			t.Errorf("status --json underlay_netns %q is not in ip netns list %v", st.Underlay, namespaces)
		}
		if fi, err := os.Stat(st.CNIPlugin); err != nil || fi.Mode()&0o111 == 0 {
			t.Errorf("status --json cni_plugin %q: %v, want an executable", st.CNIPlugin, err)
		}
		// The plugin up installs, and the one each agent runs for its
		// instances, is the trellis-cni binary built next to trellis.
		built := filepath.Join(filepath.Dir(trellisBin), cni.PluginType)
		want, err := os.ReadFile(built)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := os.ReadFile(st.CNIPlugin); err != nil || !bytes.Equal(got, want) {
			t.Errorf("status --json cni_plugin %q (%d bytes, %v) is not %s (%d bytes)", st.CNIPlugin, len(got), err, built, len(want))
		}
		real, err := filepath.EvalSymlinks(built)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range f.Cells {
			link := filepath.Join(c.StateDir, "bin", cni.PluginType)
			if got, err := filepath.EvalSymlinks(link); err != nil || got != real {
				t.Errorf("the agent of %s runs %s = %s (%v), want %s", c.Name, link, got, err, real)
			}
		}
		overlay := netip.MustParsePrefix("10.255.0.0/16")
		underlay := netip.MustParsePrefix("198.51.100.0/24")
		if len(st.Cells) != 2 {
			t.Fatalf("status --json has %d cells, want 2", len(st.Cells))
		}
		for i, c := range st.Cells {
			want := f.Cells[i]
			if c.Name != want.Name || c.NetNS != want.NetNS || c.UnderlayIP != want.UnderlayIP || c.Socket != want.Socket || c.Controller != f.APIURL {
				t.Errorf("status --json cell %d = %+v, want %s %s %s, controller %s", i, c, want.Name, want.NetNS, want.UnderlayIP, f.APIURL)
			}
			if !slices.Contains(namespaces, c.NetNS) {
				t.Errorf("cell %s namespace %q is not in ip netns list", c.Name, c.NetNS)
			}
			if ip, err := netip.ParseAddr(c.UnderlayIP); err != nil || !underlay.Contains(ip) {
				t.Errorf("cell %s underlay IP %q is not in %s", c.Name, c.UnderlayIP, underlay)
			}
			if p, err := netip.ParsePrefix(c.Subnet); err != nil || p.Bits() != 24 || !overlay.Contains(p.Addr()) || c.Subnet != subnets[c.Name] {
				t.Errorf("cell %s subnet %q, want the /24 of 10.255.0.0/16 that `trellis cells` shows (%s)", c.Name, c.Subnet, subnets[c.Name])
			}
			if !c.Healthy {
				t.Errorf("cell %s is not healthy", c.Name)
			}
			if c.CNIConfList != want.CNIConfList {
				t.Errorf("cell %s cni_conflist = %q, want %q", c.Name, c.CNIConfList, want.CNIConfList)
			}
		}
	})

	t.Run("cni-config", func(t *testing.T) {
		for _, c := range f.Cells {
			file, err := os.ReadFile(c.CNIConfList)
			if err != nil {
				t.Fatal(err)
			}
			// $TRELLIS_STATE_DIR, as fd.cli sets it, and --state-dir alone.
			viaEnv := fd(t).cli(0, "cni-config", "--cell", c.Name)
			code, viaFlag, errOut := run(t, nil, "cni-config", "--cell", c.Name, "--state-dir", dir)
			if code != 0 {
				t.Fatalf("cni-config --cell %s --state-dir = exit %d: %s", c.Name, code, errOut)
			}
			for _, got := range []string{viaEnv, viaFlag} {
				if got != string(file) {
					t.Errorf("cni-config --cell %s =\n%s\nwant the conflist up installed (%s):\n%s", c.Name, got, c.CNIConfList, file)
				}
				var list struct {
					Plugins []struct {
						Type   string `json:"type"`
						Socket string `json:"agent_socket"`
					} `json:"plugins"`
				}
				if err := json.Unmarshal([]byte(got), &list); err != nil || len(list.Plugins) == 0 ||
					list.Plugins[0].Socket != filepath.Join(dir, "cells", c.Name, "agent.sock") {
					t.Errorf("cni-config --cell %s agent socket = %+v (%v), want STATE/cells/%s/agent.sock", c.Name, list.Plugins, err, c.Name)
				}
			}
			if _, err := AgentStatus(context.Background(), c.Socket); err != nil {
				t.Errorf("the socket cni-config names for %s does not answer: %v", c.Name, err)
			}
		}
		for _, tt := range []struct {
			args []string
			code int
			want string
		}{
			{[]string{"--cell", "cell9", "--state-dir", dir}, 1, "trellis: cell cell9 is not in the local foundation in " + dir + " (its cells: cell1, cell2)\n"},
			{[]string{"--state-dir", dir}, 2, "Incorrect Usage: the local foundation in " + dir + " has cells cell1, cell2: choose one with --cell\n"},
			{[]string{"--cell", "cell1", "--state-dir", filepath.Join(dir, "nope")}, 1, "trellis: no local foundation in " + filepath.Join(dir, "nope") + ": start one with `trellis up`, or give a real cell's agent socket with --socket\n"},
		} {
			code, out, errOut := run(t, nil, append([]string{"cni-config"}, tt.args...)...)
			if code != tt.code || out != "" || errOut != tt.want {
				t.Errorf("cni-config %v = exit %d, %q, %q; want exit %d, no output, %q", tt.args, code, out, errOut, tt.code, tt.want)
			}
		}
	})

	// The hints up printed, run as printed: the request before the policy
	// is refused, the one after it answers.
	t.Run("up/hints", func(t *testing.T) {
		_, hints, ok := strings.Cut(upOut, "Try:\n")
		if !ok {
			t.Fatalf("up printed no hints:\n%s", upOut)
		}
		hints, _, _ = strings.Cut(hints, "\n\n")
		lines := strings.Split(hints, "\n")
		// This foundation has its own config and state dir: the first
		// hint must say so, or the others would reach the defaults.
		if !strings.HasPrefix(lines[0], "  export ") {
			t.Fatalf("first hint = %q, want the export of TRELLIS_CONFIG and TRELLIS_STATE_DIR", lines[0])
		}
		env := strings.Fields(strings.TrimPrefix(lines[0], "  export "))
		if !slices.Contains(env, "TRELLIS_CONFIG="+config) || !slices.Contains(env, "TRELLIS_STATE_DIR="+dir) {
			t.Fatalf("export hint %q, want TRELLIS_CONFIG=%s TRELLIS_STATE_DIR=%s", lines[0], config, dir)
		}
		sawRefused, sawAnswer, sawPolicy := false, false, false
		for _, line := range lines[1:] {
			command, comment, _ := strings.Cut(strings.TrimSpace(line), "#")
			args := strings.Fields(command)
			if len(args) < 2 || args[0] != "trellis" {
				t.Fatalf("hint %q is not a trellis command", line)
			}
			args = args[1:]
			t.Logf("hint: trellis %s", strings.Join(args, " "))
			switch {
			case strings.Contains(comment, "refused"):
				// Until the route reaches the cells' DNS, the name does
				// not resolve: poll for the refusal itself.
				var last string
				waitFor(t, "hint "+line+" to show the refusal", func() bool {
					code, out, errOut := run(t, env, args...)
					last = out + errOut
					return code != 0 && strings.Contains(errOut, "Connection refused")
				})
				t.Logf("%s", last)
				sawRefused = true
			case strings.Contains(comment, "answers"):
				if !sawRefused || !sawPolicy {
					t.Errorf("hint %q comes before the refusal and the policy", line)
				}
				waitFor(t, "hint "+line+" to answer", func() bool {
					code, out, _ := run(t, env, args...)
					return code == 0 && strings.Contains(out, `"app":"backend"`)
				})
				sawAnswer = true
			default:
				if code, out, errOut := run(t, env, args...); code != 0 {
					t.Fatalf("hint %q = exit %d:\n%s%s", line, code, out, errOut)
				}
				sawPolicy = sawPolicy || args[0] == "add-network-policy"
			}
		}
		if !sawRefused || !sawPolicy || !sawAnswer {
			t.Errorf("hints show refused %v, a policy %v, an answer %v; want all three:\n%s", sawRefused, sawPolicy, sawAnswer, hints)
		}
	})

	t.Run("delete-app", func(t *testing.T) {
		fd := fd(t)
		// The cells are equally loaded (backend and frontend of the
		// hints, or nothing): the two instances go one to each.
		fd.cli(0, "push", "doomed", "-i", "2")
		ins := fd.instances("doomed")
		if len(ins) != 2 || ins[0].CellName == ins[1].CellName {
			t.Fatalf("doomed instances = %+v, want one on each cell", ins)
		}
		var pids []int
		for _, in := range ins {
			c, _ := f.Cell(in.CellName)
			var p *executor.Process
			waitFor(t, "the process record of instance "+in.GUID, func() bool {
				var err error
				p, err = executor.Adopt(filepath.Join(c.StateDir, "instances", in.GUID))
				return err == nil
			})
			pids = append(pids, p.PID())
		}
		guid := ins[0].AppGUID
		code, out, errOut := run(t, []string{"TRELLIS_CONFIG=" + f.Admin, "TRELLIS_STATE_DIR=" + dir}, "delete-app", "doomed")
		if code != 0 || !strings.Contains(out, "Stopping app doomed") || !strings.HasSuffix(out, "OK\n") {
			t.Fatalf("delete-app doomed = exit %d:\n%s%s", code, out, errOut)
		}
		// Agents may stop an instance before delete-app looks: the
		// progress names the cells it still saw, if any, then the end.
		if errOut != "" && (!strings.Contains(errOut, "stopping on cell") || !strings.HasSuffix(errOut, "instances of doomed: all stopped\n")) {
			t.Errorf("delete-app progress = %q, want the cells it waits for, then all stopped", errOut)
		}
		t.Logf("delete-app doomed:\n%s%s", out, errOut)
		// Once delete-app returns, no instance of it is left: no waiting.
		for i, in := range ins {
			if _, err := os.Stat(in.netns); !os.IsNotExist(err) {
				t.Errorf("instance %s's namespace is still there after delete-app (%v)", in.GUID, err)
			}
			if running(pids[i]) {
				t.Errorf("instance %s's process %d still runs after delete-app", in.GUID, pids[i])
			}
		}
		if left := f.AppInstances(guid); len(left) > 0 {
			t.Errorf("cells still hold instances of doomed: %+v", left)
		}
		if apps, err := fd.client().Apps(context.Background(), api.AppFilter{Names: []string{"doomed"}}); err != nil || len(apps) != 0 {
			t.Errorf("apps named doomed after delete-app = %v, %v", apps, err)
		}
	})

	t.Run("push --env", func(t *testing.T) {
		fd := fd(t)
		fd.cli(0, "push", "envapp", "-i", "2", "--cell", "cell2", "--env", "GREETING=hello", "--env", "QUERY=a=b c")
		cell2, _ := f.Cell("cell2")
		ins := fd.instances("envapp")
		if len(ins) != 2 {
			t.Fatalf("envapp has %d instances, want 2", len(ins))
		}
		for _, in := range ins {
			env := map[string]string{}
			for _, l := range strings.Split(fd.cli(0, "exec", "envapp", "-i", strconv.Itoa(in.Index), "--", "env"), "\n") {
				if k, v, ok := strings.Cut(l, "="); ok {
					env[k] = v
				}
			}
			port := "8080"
			for k, want := range map[string]string{
				"GREETING":                "hello",
				"QUERY":                   "a=b c",
				"PORT":                    port,
				"CF_INSTANCE_GUID":        in.GUID,
				"CF_INSTANCE_INDEX":       strconv.Itoa(in.Index),
				"CF_INSTANCE_IP":          cell2.UnderlayIP,
				"CF_INSTANCE_INTERNAL_IP": in.IP,
				"CF_INSTANCE_PORT":        port,
				"CF_INSTANCE_ADDR":        in.IP + ":" + port,
				"CF_INSTANCE_PORTS":       `[{"internal":8080}]`,
				"CF_INSTANCE_CERT":        "/etc/cf-instance-credentials/instance.crt",
				"CF_INSTANCE_KEY":         "/etc/cf-instance-credentials/instance.key",
				"CF_SYSTEM_CERT_PATH":     "/etc/cf-system-certificates",
			} {
				if env[k] != want {
					t.Errorf("instance %d: %s = %q, want %q", in.Index, k, env[k], want)
				}
			}
			// The files the variables name are there inside the instance
			// (credentials arrive just after the start: poll).
			waitFor(t, "the instance's credentials", func() bool {
				code, _, _ := run(t, []string{"TRELLIS_CONFIG=" + f.Admin, "TRELLIS_STATE_DIR=" + dir}, "exec", "envapp", "-i", strconv.Itoa(in.Index), "--",
					"sh", "-c", `test -s "$CF_INSTANCE_CERT" && test -s "$CF_INSTANCE_KEY" && test -d "$CF_SYSTEM_CERT_PATH"`)
				return code == 0
			})
			// The app's own process has them too: the sample app answers
			// with its instance GUID, index and address.
			serving(t, in)
			code, body := get(t, in.netns, in.IP+":8080", "/")
			for _, want := range []string{`"instance_guid":"` + in.GUID + `"`, `"index":` + strconv.Itoa(in.Index), `"ip":"` + in.IP + `"`} {
				if code != 200 || !strings.Contains(body, want) {
					t.Errorf("GET / of instance %d = %d %s, want %s", in.Index, code, body, want)
				}
			}
		}
	})

	t.Run("stop start restart", func(t *testing.T) {
		fd := fd(t)
		gone := func(ins []instance) {
			t.Helper()
			for _, in := range ins {
				waitFor(t, "the namespace of instance "+in.GUID+" to go", func() bool {
					_, err := os.Stat(in.netns)
					return os.IsNotExist(err)
				})
			}
		}
		answers := func(ins []instance) {
			t.Helper()
			for _, in := range ins {
				serving(t, in)
				if code, body := get(t, in.netns, in.IP+":8080", "/"); code != 200 || !strings.Contains(body, in.GUID) {
					t.Errorf("GET / of instance %s = %d %s", in.GUID, code, body)
				}
			}
		}
		before := fd.instances("envapp")
		fd.cli(0, "stop", "envapp")
		gone(before)
		if out := fd.cli(0, "apps"); !slices.Equal(tableRow(out, "envapp"), []string{"envapp", "stopped", "0/0"}) {
			t.Errorf("apps after stop:\n%s", out)
		}

		out := fd.cli(0, "start", "envapp")
		started := fd.instances("envapp")
		if len(started) != 2 || !strings.Contains(out, "running") {
			t.Fatalf("start envapp = %d instances:\n%s", len(started), out)
		}
		answers(started)
		// The app keeps its environment across stop and start.
		if got := fd.cli(0, "exec", "envapp", "--", "sh", "-c", "echo $GREETING"); got != "hello\n" {
			t.Errorf("GREETING after start = %q", got)
		}

		fd.cli(0, "restart", "envapp")
		restarted := fd.instances("envapp")
		if len(restarted) != 2 {
			t.Fatalf("restart envapp = %d instances, want 2", len(restarted))
		}
		for _, in := range restarted {
			if slices.ContainsFunc(started, func(s instance) bool { return s.GUID == in.GUID }) {
				t.Errorf("instance %s survived the restart", in.GUID)
			}
		}
		gone(started)
		answers(restarted)
	})

	t.Run("down", func(t *testing.T) {
		// Everything that runs: daemons, and every process in the
		// foundation's namespaces (instances and what they started).
		pids := processesIn(ownNamespaces(f.Prefix))
		pids = append(pids, f.Controller.PID)
		for _, c := range f.Cells {
			pids = append(pids, c.Agent.PID)
		}
		if len(pids) < 2+len(f.Cells) {
			t.Fatalf("processes of the foundation before down = %v, want its instances too", pids)
		}
		code, out, errOut := run(t, nil, "down", "--state-dir", dir)
		if code != 0 || out != "OK\n" {
			t.Fatalf("trellis down = exit %d:\n%s%s", code, out, errOut)
		}
		for _, n := range netnsList(t) {
			if strings.HasPrefix(n, f.Prefix) {
				t.Errorf("namespace %s is still in ip netns list after down", n)
			}
		}
		for _, pid := range pids {
			if running(pid) {
				t.Errorf("process %d of the foundation still runs after down", pid)
			}
		}
		if left := daemons("controller", filepath.Join(dir, "controller")); len(left) > 0 {
			t.Errorf("controller left after down: %v", left)
		}
		for _, c := range f.Cells {
			if left := daemons("agent", c.StateDir); len(left) > 0 {
				t.Errorf("agent of %s left after down: %v", c.Name, left)
			}
		}
		mounts, err := os.ReadFile("/proc/self/mountinfo")
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(mounts), "\n") {
			if strings.Contains(l, f.Prefix) || strings.Contains(l, dir) {
				t.Errorf("mount left after down: %s", l)
			}
		}
		// The state stays (without --purge); the admin config with it.
		if _, err := os.Stat(filepath.Join(dir, "admin.json")); err != nil {
			t.Errorf("STATE/admin.json after down: %v", err)
		}
		if code, _, errOut := run(t, nil, "status", "--state-dir", dir); code != 1 || !strings.Contains(errOut, "no local foundation in "+dir) {
			t.Errorf("status after down = exit %d, %q; want exit 1, no local foundation", code, errOut)
		}
		if code, _, errOut := run(t, nil, "down", "--state-dir", dir); code != 1 || errOut != "trellis: no foundation in "+dir+" (nothing to take down)\n" {
			t.Errorf("second down = exit %d, %q; want exit 1, nothing to take down", code, errOut)
		}
	})
}
