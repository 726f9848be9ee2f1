// Package demo is `trellis demo`: the story of encrypted container-to-
// container networking told on a real two-cell local foundation, with the
// real commands it runs printed before their output. Every step checks
// that the system behaves as the step says; the first that does not makes
// the demo fail.
package demo

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/trellis-c2c/trellis/internal/agent"
	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/capture"
	"github.com/trellis-c2c/trellis/internal/launcher"
	"github.com/trellis-c2c/trellis/internal/netns"
)

// DefaultStateDir is where the demo keeps its foundation, apart from the one
// `trellis up` makes.
const DefaultStateDir = "/var/lib/trellis/demo"

// Options configure a demo run.
type Options struct {
	StateDir string
	// Keep leaves the foundation up at the end and prints what to try next.
	Keep bool
	// Exe is the trellis binary whose commands the demo runs; default the
	// running one.
	Exe string
	Out io.Writer
}

// demo is one run.
type demo struct {
	o      Options
	env    []string
	f      *launcher.Foundation
	client *api.Client
	step   int
	start  time.Time
	// lastTLS is the first TLS record the last capture saw.
	lastTLS []byte
	ctx     context.Context
}

// Run tells the story; it returns an error naming the first step that did
// not behave as it says. Unless Keep, it takes the foundation down at the
// end, also after a failure or when ctx is cancelled (Ctrl-C).
func Run(ctx context.Context, o Options) (err error) {
	if o.Exe == "" {
		if o.Exe, err = os.Executable(); err != nil {
			return err
		}
	}
	if o.StateDir == "" {
		o.StateDir = DefaultStateDir
	}
	if o.Out == nil {
		o.Out = os.Stdout
	}
	if err := preflight(o); err != nil {
		return err
	}
	d := &demo{o: o, start: time.Now()}
	d.env = append(os.Environ(), "TRELLIS_STATE_DIR="+o.StateDir, "TRELLIS_CONFIG="+filepath.Join(o.StateDir, "cli.json"))
	defer func() {
		if o.Keep && err == nil {
			d.next()
			return
		}
		fmt.Fprintf(o.Out, "\n== tearing down\n")
		dctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		d.show("trellis down --purge")
		if derr := launcher.Down(dctx, o.StateDir, true, o.Out); derr != nil {
			err = errors.Join(err, fmt.Errorf("tear down: %w", derr))
		}
	}()
	return d.story(ctx)
}

// preflight says exactly what is missing or left over, and how to fix it.
func preflight(o Options) error {
	var problems []string
	if os.Geteuid() != 0 {
		problems = append(problems, "the demo needs root: it creates network namespaces (run it as root, e.g. `sudo ./trellis demo`)")
	}
	for _, tool := range []struct{ bin, pkg string }{{"curl", "curl"}, {"getent", "libc-bin"}} {
		if _, err := exec.LookPath(tool.bin); err != nil {
			problems = append(problems, fmt.Sprintf("%s is missing (the demo runs it inside app instances): apt-get install %s", tool.bin, tool.pkg))
		}
	}
	if f, err := launcher.Load(o.StateDir); err == nil {
		if f.Running() {
			problems = append(problems, fmt.Sprintf("a demo foundation is already running in %s (left by --keep?): stop it with `trellis down --purge --state-dir %s`", o.StateDir, o.StateDir))
		} else if err := launcher.Down(context.Background(), o.StateDir, true, io.Discard); err != nil {
			problems = append(problems, fmt.Sprintf("a stale demo foundation in %s could not be cleaned up: %v", o.StateDir, err))
		} else {
			fmt.Fprintf(o.Out, "cleaned up a stale demo foundation in %s (its namespaces and processes)\n", o.StateDir)
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("cannot run the demo:\n  - %s", strings.Join(problems, "\n  - "))
	}
	return nil
}

// story is the announcement, step by step.
func (d *demo) story(ctx context.Context) error {
	d.ctx = ctx
	d.title("a local foundation: two cells (network namespaces on a private underlay), a controller, an agent per cell")
	if _, err := d.run(ctx, "up", "--cells", "2", "--detach", "--config", filepath.Join(d.o.StateDir, "cli.json")); err != nil {
		return d.fail("bring up the foundation", err)
	}
	f, err := launcher.Load(d.o.StateDir)
	if err != nil {
		return err
	}
	d.f = f
	cfg, err := api.LoadClientConfig(filepath.Join(d.o.StateDir, "cli.json"))
	if err != nil {
		return err
	}
	if d.client, err = api.NewClient(cfg); err != nil {
		return err
	}

	d.title("push backend on cell2 and frontend on cell1 (the sample app), and give backend an internal route")
	for _, c := range [][]string{
		{"push", "backend", "--cell", "cell2"},
		{"push", "frontend", "--cell", "cell1"},
		{"map-route", "backend", "apps.internal", "--hostname", "backend"},
	} {
		if _, err := d.run(ctx, c...); err != nil {
			return d.fail(strings.Join(c, " "), err)
		}
	}

	d.title("the name resolves (internal DNS on every cell)…")
	out, err := d.run(ctx, "exec", "frontend", "--", "getent", "hosts", "backend.apps.internal")
	if err != nil {
		return d.fail("resolve backend.apps.internal", err)
	}
	backendIP, err := netip.ParseAddr(strings.Fields(out + " x")[0])
	if err != nil {
		return d.fail("resolve backend.apps.internal", fmt.Errorf("getent printed %q, want an address", out))
	}
	d.say("backend.apps.internal is %s, an overlay address on cell2", backendIP)

	d.title("…but the connection is refused: nothing talks until a policy allows it")
	if _, err := d.run(ctx, "exec", "frontend", "--", "curl", "-sS", "-m", "3", "http://backend.apps.internal:8080/"); err == nil {
		return d.fail("default deny", errors.New("frontend reached backend without a policy"))
	}
	d.say("refused at once (a TCP reset from cell2), not a hang")

	frontendNS, err := d.instanceNetNS(ctx, "frontend")
	if err != nil {
		return err
	}
	d.title("allow it: frontend may reach backend on tcp/8080")
	probe := d.probe(ctx, frontendNS, netip.AddrPortFrom(backendIP, 8080))
	t0 := time.Now()
	if _, err := d.run(ctx, "add-network-policy", "frontend", "backend", "--protocol", "tcp", "--port", "8080"); err != nil {
		return d.fail("add-network-policy", err)
	}
	select {
	case at := <-probe:
		d.say("from the policy command to frontend's first successful connection: %.1f ms (probing every 2 ms from frontend's namespace)", float64(at.Sub(t0).Microseconds())/1000)
	case <-time.After(10 * time.Second):
		return d.fail("policy propagation", errors.New("frontend could not connect 10 s after the policy was added"))
	}
	if _, err := d.run(ctx, "exec", "frontend", "--", "curl", "-sS", "-m", "3", "http://backend.apps.internal:8080/"); err != nil {
		return d.fail("connect after the policy", err)
	}

	cell1 := d.f.Cells[0]
	d.title("plaintext on 8080 is readable by anyone on the underlay (capturing cell1's eth0)")
	marker := fmt.Sprintf("secret-pin-%04d", time.Now().UnixNano()%10000)
	plain, err := d.captured(ctx, netns.Path(cell1.NetNS), marker, "curl", "-sS", "-m", "3", "http://backend.apps.internal:8080/?q="+marker)
	if err != nil {
		return d.fail("capture 8080", err)
	}
	if plain == nil {
		return d.fail("capture 8080", fmt.Errorf("marker %s not seen on the underlay", marker))
	}
	d.say("the request, as it crossed the underlay inside VXLAN:")
	d.dump(plain.frame, plain.at-24, 80)

	d.title("encrypt it: allow tcp/61443, where the platform terminates TLS for backend")
	if _, err := d.run(ctx, "add-network-policy", "frontend", "backend", "--protocol", "tcp", "--port", "61443"); err != nil {
		return d.fail("add-network-policy 61443", err)
	}
	https := "https://backend.apps.internal:61443/"
	if err := d.retry(ctx, 10*time.Second, func() error {
		_, err := d.runQuiet(ctx, "exec", "frontend", "--", "curl", "-sS", "-m", "3", "-o", "/dev/null", https)
		return err
	}); err != nil {
		return d.fail("reach 61443", err)
	}
	enc, err := d.captured(ctx, netns.Path(cell1.NetNS), marker, "curl", "-sS", "-m", "3", https+"?q="+marker)
	if err != nil {
		return d.fail("https through 61443", err)
	}
	if enc != nil {
		return d.fail("encryption", fmt.Errorf("marker %s seen in clear on the underlay through 61443", marker))
	}
	d.say("curl verified backend's certificate against the platform CA (no -k); the marker never appeared on the underlay. What it saw instead:")
	if len(d.lastTLS) > 0 {
		d.dump(d.lastTLS, 0, 64)
	}
	if err := d.certificate(ctx, frontendNS, netip.AddrPortFrom(backendIP, 61443), cell1); err != nil {
		return d.fail("backend's certificate", err)
	}

	d.title("why was it refused? the flow log")
	out, err = d.runShort(ctx, 4, "flows", "--denied", "--app", "backend")
	if err != nil {
		return d.fail("flows", err)
	}
	if !strings.Contains(out, "no policy from frontend to backend") {
		return d.fail("flows", errors.New("the refused attempt is not in the flow log"))
	}
	if _, err := d.run(ctx, "explain", "frontend", "backend", "--port", "9000"); err != nil {
		return d.fail("explain", err)
	}

	d.title("egress: the outside host 203.0.113.10 is out of reach until a security group allows it")
	outside := "http://203.0.113.10/"
	if _, err := d.run(ctx, "exec", "frontend", "--", "curl", "-sS", "-m", "3", "-o", "/dev/null", outside); err == nil {
		return d.fail("default deny egress", errors.New("frontend reached the outside host without a security group"))
	}
	if _, err := d.run(ctx, "create-security-group", "web", `[{"protocol":"tcp","destination":"203.0.113.10","ports":"80"}]`); err != nil {
		return d.fail("create-security-group", err)
	}
	egressProbe := d.probe(ctx, frontendNS, netip.MustParseAddrPort("203.0.113.10:80"))
	t1 := time.Now()
	if _, err := d.run(ctx, "bind-security-group", "web", "default", "--space", "default"); err != nil {
		return d.fail("bind-security-group", err)
	}
	select {
	case at := <-egressProbe:
		d.say("from the bind command to frontend's first connection out: %.1f ms (probing every 2 ms)", float64(at.Sub(t1).Microseconds())/1000)
	case <-time.After(10 * time.Second):
		return d.fail("egress propagation", errors.New("frontend could not connect out 10 s after the bind"))
	}
	if err := d.retry(ctx, 10*time.Second, func() error {
		_, err := d.runQuiet(ctx, "exec", "frontend", "--", "curl", "-sS", "-m", "3", "-o", "/dev/null", outside)
		return err
	}); err != nil {
		return d.fail("egress after the security group", err)
	}
	d.say("frontend now reaches the outside host, masqueraded to cell1's underlay address %s", cell1.UnderlayIP)
	if _, err := d.run(ctx, "explain", "frontend", "--to", "203.0.113.10:80"); err != nil {
		return d.fail("explain --to", err)
	}
	fmt.Fprintf(d.o.Out, "\n== every step behaved as it says (%.1f s)\n", time.Since(d.start).Seconds())
	return nil
}

// next prints what to try on a kept foundation.
func (d *demo) next() {
	fmt.Fprintf(d.o.Out, `
The foundation is still up. Try:
  export TRELLIS_STATE_DIR=%[1]s TRELLIS_CONFIG=%[1]s/cli.json
  trellis apps
  trellis exec frontend -- curl -sS https://backend.apps.internal:61443/
  trellis exec frontend -- cat /etc/cf-instance-credentials/instance.crt
  trellis remove-network-policy frontend backend --protocol tcp --port 8080
  trellis flows --follow
Stop it with: trellis down --purge --state-dir %[1]s
`, d.o.StateDir)
}

func (d *demo) title(s string) {
	d.step++
	fmt.Fprintf(d.o.Out, "\n== %d. %s\n", d.step, s)
}

func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.o.Out, "   → "+format+"\n", args...)
}

func (d *demo) show(cmd string) { fmt.Fprintf(d.o.Out, "$ %s\n", cmd) }

func (d *demo) fail(what string, err error) error {
	if d.ctx != nil && d.ctx.Err() != nil {
		return fmt.Errorf("demo interrupted at step %d (%s); what it made is taken down", d.step, what)
	}
	return fmt.Errorf("demo step %d (%s) did not behave as it says: %w", d.step, what, err)
}

// run runs `trellis args...`, printing the command and its output.
func (d *demo) run(ctx context.Context, args ...string) (string, error) {
	d.show("trellis " + shellJoin(args))
	out, err := d.runQuiet(ctx, args...)
	if out != "" {
		fmt.Fprint(d.o.Out, indent(out))
	}
	if err != nil {
		fmt.Fprintf(d.o.Out, "   (%v)\n", err)
	}
	return out, err
}

// runShort is run, printing only the last n lines of the output.
func (d *demo) runShort(ctx context.Context, n int, args ...string) (string, error) {
	d.show("trellis " + shellJoin(args))
	out, err := d.runQuiet(ctx, args...)
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) > n {
		fmt.Fprintf(d.o.Out, "   … %d earlier lines (the probe of step 5 knocked every 2 ms)\n", len(lines)-n)
		lines = lines[len(lines)-n:]
	}
	fmt.Fprint(d.o.Out, indent(strings.Join(lines, "\n")))
	if err != nil {
		fmt.Fprintf(d.o.Out, "   (%v)\n", err)
	}
	return out, err
}

// runQuiet runs `trellis args...` and returns its combined output.
func (d *demo) runQuiet(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, d.o.Exe, args...)
	cmd.Env = d.env
	// Ctrl-C reaches the command as an interrupt, so that it cleans up
	// what it made (`trellis up` takes down a half-built foundation).
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	return b.String(), err
}

func (d *demo) retry(ctx context.Context, limit time.Duration, fn func() error) error {
	deadline := time.Now().Add(limit)
	for {
		err := fn()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// instanceNetNS is the network namespace path of app's instance 0.
func (d *demo) instanceNetNS(ctx context.Context, app string) (string, error) {
	apps, err := d.client.Apps(ctx, api.AppFilter{Names: []string{app}})
	if err != nil || len(apps) != 1 {
		return "", fmt.Errorf("find app %s: %v", app, err)
	}
	ins, err := d.client.Instances(ctx, apps[0].GUID)
	if err != nil || len(ins) == 0 {
		return "", fmt.Errorf("find the instance of %s: %v", app, err)
	}
	ci := slices.IndexFunc(d.f.Cells, func(c launcher.Cell) bool { return c.Name == ins[0].CellName })
	if ci < 0 {
		return "", fmt.Errorf("instance of %s is on unknown cell %q", app, ins[0].CellName)
	}
	spec, err := agent.InstanceSpec(d.f.Cells[ci].StateDir, ins[0].GUID)
	if err != nil {
		return "", err
	}
	return spec.NetNS, nil
}

// probe connects to dst from the namespace at nsPath every 2 ms and sends
// the time of the first success.
func (d *demo) probe(ctx context.Context, nsPath string, dst netip.AddrPort) <-chan time.Time {
	ch := make(chan time.Time, 1)
	go func() {
		deadline := time.Now().Add(15 * time.Second)
		for ctx.Err() == nil && time.Now().Before(deadline) {
			var ok bool
			netns.Do(nsPath, func() error {
				c, err := net.DialTimeout("tcp", dst.String(), 100*time.Millisecond)
				if err == nil {
					ok = true
					c.Close()
				}
				return nil
			})
			if ok {
				ch <- time.Now()
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return ch
}

// seen is where a marker was captured.
type seen struct {
	frame []byte
	at    int
}

// captured runs command in frontend while capturing the underlay side of
// the cell at nsPath, and says where marker was seen (nil: not at all).
// It keeps the first TLS application-data record it saw for the dump.
func (d *demo) captured(ctx context.Context, nsPath, marker string, command ...string) (*seen, error) {
	c, err := capture.Start(nsPath, "eth0")
	if err != nil {
		return nil, err
	}
	_, runErr := d.run(ctx, append([]string{"exec", "frontend", "--"}, command...)...)
	frames, err := c.Stop()
	if runErr != nil {
		return nil, runErr
	}
	if err != nil {
		return nil, err
	}
	d.lastTLS = nil
	for _, p := range capture.UDPPayloads(frames, 4789) {
		if i := bytes.Index(p, []byte{0x17, 0x03, 0x03}); i >= 0 && d.lastTLS == nil {
			d.lastTLS = p[i:]
		}
	}
	frame, at := capture.Find(frames, []byte(marker))
	if at < 0 {
		return nil, nil
	}
	return &seen{frame, at}, nil
}

// certificate shakes hands with backend's 61443 from frontend's namespace,
// verifying against the bundle cell1's instances trust, and prints what the
// certificate says.
func (d *demo) certificate(ctx context.Context, nsPath string, dst netip.AddrPort, cell launcher.Cell) error {
	bundle, err := os.ReadFile(filepath.Join(cell.StateDir, "system-certs", "trusted-ca.crt"))
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(bundle)
	var state tls.ConnectionState
	err = netns.Do(nsPath, func() error {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", dst.String(),
			&tls.Config{RootCAs: pool, ServerName: "backend.apps.internal"})
		if err != nil {
			return err
		}
		defer conn.Close()
		state = conn.ConnectionState()
		return nil
	})
	if err != nil {
		return err
	}
	leaf := state.PeerCertificates[0]
	d.say("backend's certificate (verified: %s, %s):", tls.VersionName(state.Version), tls.CipherSuiteName(state.CipherSuite))
	fmt.Fprintf(d.o.Out, "     subject   %s\n", leaf.Subject)
	fmt.Fprintf(d.o.Out, "     DNS SANs  %s\n", strings.Join(leaf.DNSNames, ", "))
	for _, ip := range leaf.IPAddresses {
		fmt.Fprintf(d.o.Out, "     IP SAN    %s\n", ip)
	}
	for _, u := range leaf.URIs {
		fmt.Fprintf(d.o.Out, "     URI SAN   %s\n", u)
	}
	fmt.Fprintf(d.o.Out, "     issuer    %s, valid until %s\n", leaf.Issuer, leaf.NotAfter.UTC().Format(time.RFC3339))
	return nil
}

// dump prints n bytes of b from off as hex and ASCII.
func (d *demo) dump(b []byte, off, n int) {
	off = max(off, 0)
	end := min(off+n, len(b))
	for i := off; i < end; i += 16 {
		row := b[i:min(i+16, end)]
		ascii := make([]byte, len(row))
		for j, c := range row {
			ascii[j] = '.'
			if c >= 32 && c < 127 {
				ascii[j] = c
			}
		}
		fmt.Fprintf(d.o.Out, "     %-47s  %s\n", fmt.Sprintf("% x", row), ascii)
	}
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	return "   " + strings.ReplaceAll(s, "\n", "\n   ") + "\n"
}

func shellJoin(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " ?&*'\"$") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}
