package launcher

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/executor"
	"golang.org/x/sys/unix"
)

// TestAppCommandIsNotRoot is the attack of issue 14, end to end: an app's
// command — which a space's developer may set — tries to take the cell:
// flush its firewall, take its link down, read the cell's and the other
// instances' keys, kill its agent, bind a privileged port. Inside the
// instance every step fails, and the app still serves $PORT (8080). `exec` runs
// as the instance's user; `exec --root` only with an admin token.
func TestAppCommandIsNotRoot(t *testing.T) {
	fd := upFoundation(t, 1)
	cell := fd.f.Cells[0]
	fd.cli(0, "push", "victim")
	attack := fmt.Sprintf(`echo "uid=$(id -u)"
		nft flush ruleset 2>/dev/null; echo "nft=$?"
		ip link set eth0 down 2>/dev/null; echo "ip=$?"
		cat %[1]s/cell.key >/dev/null 2>&1; echo "cellkey=$?"
		cat %[1]s/credentials/*/instance.key >/dev/null 2>&1; echo "keys=$?"
		kill -9 %[2]d 2>/dev/null; echo "kill=$?"
		timeout 2 busybox nc -l -p 80 >/dev/null 2>&1; echo "bind80=$?"
		test -e /proc/%[2]d; echo "seeagent=$?"
		echo "procs=$(ls -d /proc/[0-9]* | wc -l)"
		echo "links=$(ls /sys/class/net | tr '\n' ' ')"
		echo "hostname=$(hostname)"
		echo "home=$HOME $(touch "$HOME/f" && echo writable)"
		hostname > "$HOME/index.html"
		echo done
		exec busybox httpd -f -p "$PORT" -h "$HOME"`, cell.StateDir, cell.Agent.PID)
	fd.cli(0, "push", "attacker", "--", "sh", "-c", attack)
	in := fd.instances("attacker")[0]
	var log string
	waitFor(t, "the attack to finish", func() bool {
		log = fd.cli(0, "logs", "attacker")
		return strings.Contains(log, "done")
	})
	got := map[string]string{}
	for l := range strings.Lines(log) {
		if k, v, ok := strings.Cut(strings.TrimSpace(strings.TrimPrefix(l, "[attacker/0] ")), "="); ok {
			got[k] = v
		}
	}
	uid := strconv.Itoa(executor.UserID(in.GUID))
	for k, want := range map[string]string{
		"uid": uid, "nft": "1", "ip": "2", "cellkey": "1", "keys": "1", "kill": "1", "bind80": "1",
		"seeagent": "1",
		"links":    "eth0 lo",
		"hostname": in.GUID,
		"home":     executor.Home + " writable",
	} {
		if got[k] != want {
			t.Errorf("inside the instance, %s = %q, want %q", k, got[k], want)
		}
	}
	// Its own processes only: init, sh, and the pipeline counting them.
	if n, err := strconv.Atoi(got["procs"]); err != nil || n > 6 {
		t.Errorf("inside the instance, /proc lists %q processes, want its own few", got["procs"])
	}
	if err := unix.Kill(cell.Agent.PID, 0); err != nil {
		t.Errorf("the agent after the attack: %v, want it running", err)
	}
	// The app still serves $PORT, as its own user: busybox httpd, since the
	// test's trellis binary, under /tmp, is visible in an instance only as
	// its command (the private /tmp covers the rest).
	waitFor(t, "the app on $PORT", func() bool {
		c, err := dialErr(in.netns, "tcp", in.IP+":8080")
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	if code, body := get(t, in.netns, in.IP+":8080", "/"); code != 200 || !strings.Contains(body, in.GUID) {
		t.Errorf("GET / of the attacker's instance = %d %s, want its answer", code, body)
	}

	// exec runs as the instance's user; --root as root, for an admin only.
	if out := fd.cli(0, "exec", "attacker", "--", "id", "-u"); strings.TrimSpace(out) != uid {
		t.Errorf("exec id -u = %q, want %s", out, uid)
	}
	if out := fd.cli(0, "exec", "--root", "attacker", "--", "id", "-u"); strings.TrimSpace(out) != "0" {
		t.Errorf("exec --root id -u = %q, want 0", out)
	}
	cfg, err := api.LoadClientConfig(fd.f.Admin)
	if err != nil {
		t.Fatal(err)
	}
	spaces, err := fd.client().Spaces(context.Background(), api.SpaceFilter{Names: []string{"default"}})
	if err != nil || len(spaces) != 1 {
		t.Fatalf("default space: %v %v", spaces, err)
	}
	tok, err := fd.client().CreateToken(context.Background(), api.TokenRequest{Name: "dev", Scope: "network.write", Spaces: []string{spaces[0].GUID}})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Token, cfg.User = tok.Value, "dev"
	b, _ := json.Marshal(cfg)
	devConfig := filepath.Join(t.TempDir(), "dev.json")
	if err := os.WriteFile(devConfig, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(trellisBin, "exec", "--root", "attacker", "--", "id", "-u")
	cmd.Env = append(os.Environ(), "TRELLIS_CONFIG="+devConfig, "TRELLIS_STATE_DIR="+fd.f.StateDir)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "exec --root is for admins") {
		t.Errorf("exec --root with a space's token = %v: %s; want refused", err, out)
	}
	cmd = exec.Command(trellisBin, "exec", "attacker", "--", "id", "-u")
	cmd.Env = append(os.Environ(), "TRELLIS_CONFIG="+devConfig, "TRELLIS_STATE_DIR="+fd.f.StateDir)
	if out, err := cmd.Output(); err != nil || strings.TrimSpace(string(out)) != uid {
		t.Errorf("exec with a space's token = %v: %q; want uid %s", err, out, uid)
	}
}
