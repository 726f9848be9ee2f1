package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/trellis-c2c/trellis/internal/agent"
	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/executor"
	"github.com/trellis-c2c/trellis/internal/launcher"
)

// stateDirFlag is the local foundation's state dir: --state-dir, else
// $TRELLIS_STATE_DIR, else the default.
func stateDirFlag(fs *flag.FlagSet, e *env) *string {
	def := ""
	if e.getenv != nil {
		def = e.getenv("TRELLIS_STATE_DIR")
	}
	if def == "" {
		def = launcher.DefaultStateDir
	}
	return fs.String("state-dir", def, "The local foundation's state `DIR` (default $TRELLIS_STATE_DIR, else "+launcher.DefaultStateDir+")")
}

var upCommand = &command{
	name:    "up",
	group:   groupLocal,
	summary: "Start a local foundation: underlay, cells, controller and agents in namespaces",
	usage:   "up [--cells N] [--state-dir DIR] [--detach] [--config FILE] [--instance-cert-validity D] [--encryption wireguard|off]",
	example: "trellis up\ntrellis up --cells 3 --detach\ntrellis up --encryption wireguard",
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		cells := fs.Int("cells", 2, "Run `N` cells")
		dir := stateDirFlag(fs, e)
		detach := fs.Bool("detach", false, "Return once it is up and leave it running (stop it with `trellis down`)")
		config := fs.String("config", "", "Point the CLI config `FILE` at it (default ~/.trellis/config.json)")
		controllers := fs.Int("controllers", 1, "Run `N` controllers (more than one share the PostgreSQL database of --database-url)")
		dbURL := fs.String("database-url", "", "The controllers' PostgreSQL database `URL` (postgres://…; default SQLite in the state dir)")
		validity := fs.Duration("instance-cert-validity", 0, "Instance identity certificates are valid for `DURATION` (default 24h; at least 1m — short ones show rotation)")
		encryption := fs.String("encryption", api.EncryptionOff, "Encrypt traffic between cells with `MODE` wireguard, or not (off); change it later with trellis encryption")
		return func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return badUsage("up takes no arguments")
			}
			if *encryption != api.EncryptionOff && *encryption != api.EncryptionWireGuard {
				return badInput("invalid --encryption %q: use wireguard or off", *encryption)
			}
			if *validity != 0 && *validity < time.Minute {
				return badInput("invalid --instance-cert-validity %s: must be at least 1m", *validity)
			}
			if *cells < 1 || *cells > 50 {
				return badInput("invalid --cells %d: must be 1 to 50", *cells)
			}
			if *controllers < 1 || *controllers > 9 {
				return badInput("invalid --controllers %d: must be 1 to 9", *controllers)
			}
			if *controllers > 1 && *dbURL == "" {
				return badInput("invalid --controllers %d: several controllers share one PostgreSQL database: give --database-url postgres://…", *controllers)
			}
			f, err := launcher.Up(ctx, launcher.Options{StateDir: *dir, Cells: *cells, Progress: e.stderr, InstanceCertValidity: *validity,
				Controllers: *controllers, DatabaseURL: *dbURL, Encryption: *encryption})
			if errors.Is(err, launcher.ErrAlreadyUp) {
				return err
			}
			if err != nil {
				return err
			}
			e.configFlag = *config
			path, shown, err := e.configPath()
			if err == nil {
				var cfg api.ClientConfig
				if cfg, err = api.LoadClientConfig(f.Admin); err == nil {
					err = cfg.Save(path)
				}
			}
			if err != nil {
				fmt.Fprintf(e.stderr, "could not write the CLI config (%v): use --config %s\n", err, f.Admin)
				path, shown = f.Admin, f.Admin
			}
			e.printf("trellis is up: %d cells, controller at %s\n", len(f.Cells), strings.Join(f.URLs(), ", "))
			e.printf("admin config: %s (the admin token; mode 0600)\n", f.Admin)
			e.printf("CLI config:   %s (points at it)\n", shown)
			e.printf("state:        %s\n\n", f.StateDir)
			if f.AdminPassword != "" {
				e.printf("Log in with Cloud Foundry's cf CLI (user admin, its password in %s, mode 0600):\n", f.AdminPassword)
				e.printf("  cf api %s --skip-ssl-validation && cf auth admin \"$(cat %s)\"\n\n", f.APIURL, f.AdminPassword)
			}
			e.printf("Try:\n")
			for _, line := range tryHints(e, f.StateDir, path) {
				e.printf("  %s\n", line)
			}
			e.printf("\n")
			if *detach {
				e.printf("Stop it with: trellis down --state-dir %s\n", f.StateDir)
				return nil
			}
			e.printf("Press Ctrl-C to take it down.\n")
			<-ctx.Done()
			fmt.Fprintln(e.stderr, "taking the foundation down")
			return launcher.Down(context.WithoutCancel(ctx), f.StateDir, false, e.stderr)
		}
	},
}

// tryHints are the commands `trellis up` suggests next, in order, each
// true as written: the first request between apps is refused (default
// deny), the policy lets the second through. A comment after # says what
// the command shows. When the CLI would not find the foundation by itself
// (a --config or --state-dir of its own), the first line exports them.
func tryHints(e *env, stateDir, config string) []string {
	var export []string
	plain := *e // the CLI without --config
	plain.configFlag = ""
	if found, _, _ := plain.configPath(); !sameFile(config, found) {
		abs, _ := filepath.Abs(config)
		export = append(export, "TRELLIS_CONFIG="+shellQuote(abs))
	}
	if found := orDefault(e.getenv("TRELLIS_STATE_DIR"), launcher.DefaultStateDir); !sameFile(stateDir, found) {
		export = append(export, "TRELLIS_STATE_DIR="+shellQuote(stateDir))
	}
	var hints []string
	if len(export) > 0 {
		hints = append(hints, "export "+strings.Join(export, " "))
	}
	const url = "http://backend.apps.internal:8080/"
	return append(hints,
		"trellis push backend",
		"trellis push frontend",
		"trellis map-route backend apps.internal --hostname backend",
		"trellis exec frontend -- wget -nv -O- "+url+"   # Connection refused: nothing talks without a policy",
		"trellis add-network-policy frontend backend --protocol tcp --port 8080",
		"trellis exec frontend -- wget -qO- "+url+"   # now backend answers",
		"trellis status",
	)
}

// sameFile reports whether paths a and b name the same file.
func sameFile(a, b string) bool {
	a, errA := filepath.Abs(a)
	b, errB := filepath.Abs(b)
	return errA == nil && errB == nil && a == b
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:@%+,") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

var downCommand = &command{
	name:    "down",
	group:   groupLocal,
	summary: "Stop a local foundation and remove every namespace, process and mount it made",
	usage:   "down [--state-dir DIR] [--purge]",
	example: "trellis down\ntrellis down --purge",
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		dir := stateDirFlag(fs, e)
		purge := fs.Bool("purge", false, "Also delete the state dir (store, CA, logs)")
		return func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return badUsage("down takes no arguments")
			}
			if err := launcher.Down(context.WithoutCancel(ctx), *dir, *purge, e.stderr); err != nil {
				return err
			}
			e.ok()
			return nil
		}
	},
}

var statusCommand = &command{
	name:    "status",
	group:   groupLocal,
	summary: "Show the local foundation: controller, cells, namespaces, CNI files",
	usage:   "status [--state-dir DIR] [--json]",
	example: "trellis status\ntrellis status --json",
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		dir := stateDirFlag(fs, e)
		asJSON := fs.Bool("json", false, "Print JSON")
		return func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return badUsage("status takes no arguments")
			}
			st, err := launcher.Status(ctx, *dir)
			if errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("no local foundation in %s: start one with `trellis up`", *dir)
			}
			if err != nil {
				return err
			}
			if *asJSON {
				return e.printJSON(st)
			}
			for _, c := range st.ControllerStatus {
				e.printf("controller   %s   healthy: %v\n", c.URL, c.Healthy)
			}
			e.printf("underlay     %s (198.51.100.0/24)\n", st.Underlay)
			e.printf("cni plugin   %s\n", st.CNIPlugin)
			if st.Encryption != "" {
				e.printf("encryption   %s\n", st.Encryption)
			}
			e.printCellKeys(st)
			e.printf("\n")
			rows := [][]string{}
			for _, c := range st.Cells {
				healthy := strconv.FormatBool(c.Healthy)
				if c.Reason != "" {
					healthy += " (" + c.Reason + ")"
				}
				controller := c.Controller
				if c.Failovers > 0 {
					controller += fmt.Sprintf(" (%d failovers)", c.Failovers)
				}
				wg := "off"
				if c.WireGuard != "" {
					wg = "wireguard (" + c.WireGuard + ")"
				}
				rows = append(rows, []string{c.Name, c.NetNS, c.UnderlayIP, c.Subnet, healthy, controller, wg, c.CNIConfList})
			}
			e.printTable([]string{"cell", "namespace", "underlay ip", "subnet", "healthy", "controller", "encryption", "cni config"}, rows)
			return nil
		}
	},
}

type envFlags []string

func (f *envFlags) String() string { return strings.Join(*f, ",") }
func (f *envFlags) Set(v string) error {
	k, _, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("invalid --env %q: use KEY=VALUE", v)
	}
	*f = append(*f, v)
	return nil
}

var pushCommand = &command{
	name:    "push",
	group:   groupLocal,
	summary: "Create an app if needed and run N instances of it (default: the sample app)",
	usage:   "push APP [-i N] [--cell CELL] [--env KEY=VALUE]... [-s SPACE] [-- COMMAND ARGS...]",
	example: "trellis push backend -i 2\ntrellis push worker --cell cell2 --env MODE=batch -- /usr/bin/python3 -m http.server 8080",
	config:  true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		instances := fs.Int("i", 1, "Run `N` instances")
		cell := fs.String("cell", "", "Run every instance on `CELL` (default: spread over cells)")
		space := fs.String("s", "", "Push to `SPACE` (default: the target)")
		var envs envFlags
		fs.Var(&envs, "env", "Set `KEY=VALUE` in the app's environment (repeatable)")
		return func(ctx context.Context, args []string) error {
			if len(args) == 0 {
				return badUsage("the required argument `APP` was not provided")
			}
			name, command := args[0], args[1:]
			if err := checkName("app", name); err != nil {
				return badInput("%v", err)
			}
			if *instances < 0 || *instances > 1000 {
				return badInput("invalid -i %d: must be 0 to 1000", *instances)
			}
			env := map[string]string{}
			for _, kv := range envs {
				k, v, _ := strings.Cut(kv, "=")
				if k == "PORT" && v == "61443" {
					return badInput("port 61443 is reserved for container networking")
				}
				if k == "PORT" || strings.HasPrefix(k, "CF_INSTANCE_") {
					return badInput("invalid --env %s: the platform sets it", k)
				}
				env[k] = v
			}
			s, err := e.session()
			if err != nil {
				return err
			}
			t, err := s.targetIn(ctx, "", *space)
			if err != nil {
				return err
			}
			cellGUID := ""
			if *cell != "" {
				cells, err := s.client.Cells(ctx)
				if err != nil {
					return err
				}
				i := slices.IndexFunc(cells, func(c api.Cell) bool { return c.Name == *cell })
				if i < 0 {
					return fmt.Errorf("cell %s not found (see `trellis cells`)", *cell)
				}
				cellGUID = cells[i].GUID
			}
			app, err := s.app(ctx, t.space, name)
			if isNotFound(err) {
				e.printf("Creating app %s in org %s / space %s as %s...\n", name, t.org.Name, t.space.Name, s.user())
				app, err = s.client.CreateApp(ctx, t.space.GUID, name)
			}
			if err != nil {
				return err
			}
			if command == nil {
				command = []string{}
			}
			if _, err := s.client.UpdateApp(ctx, app.GUID, api.AppUpdate{Command: &command, Env: &env, CellGUID: &cellGUID}); err != nil {
				return err
			}
			if _, err := s.client.ScaleApp(ctx, app.GUID, *instances); err != nil {
				return err
			}
			action := "start"
			if app.State == "STARTED" {
				action = "restart"
			}
			e.printf("Starting %d instance(s) of app %s in org %s / space %s as %s...\n", *instances, name, t.org.Name, t.space.Name, s.user())
			if _, err := s.client.AppAction(ctx, app.GUID, action); err != nil {
				return err
			}
			ins, err := waitRunning(ctx, s, app.GUID, *instances, e.stderr)
			if err != nil {
				return err
			}
			printInstances(e, ins)
			e.ok()
			return nil
		}
	},
}

// waitRunning polls until want instances of app are RUNNING (60 s at most).
func waitRunning(ctx context.Context, s *session, app string, want int, progress io.Writer) ([]api.Instance, error) {
	deadline := time.Now().Add(60 * time.Second)
	last := -1
	for {
		ins, err := s.client.Instances(ctx, app)
		if err != nil {
			return nil, err
		}
		running := 0
		for _, in := range ins {
			if in.State == "RUNNING" {
				running++
			}
		}
		if running != last {
			fmt.Fprintf(progress, "instances: %d/%d running\n", running, want)
			last = running
		}
		if running == want && len(ins) == want {
			return ins, nil
		}
		if time.Now().After(deadline) {
			return ins, fmt.Errorf("only %d of %d instances running after 60s: see `trellis logs` and the agents' logs", running, want)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func printInstances(e *env, ins []api.Instance) {
	rows := [][]string{}
	for _, in := range ins {
		rows = append(rows, []string{"#" + strconv.Itoa(in.Index), strings.ToLower(in.State), in.CellName, in.IP, in.GUID})
	}
	e.printTable([]string{"", "state", "cell", "ip", "instance"}, rows)
}

// localInstance finds instance index of app and how it runs, from the
// state dir of the local agent that runs it.
func localInstance(ctx context.Context, e *env, stateDir, name string, index int) (executor.Spec, error) {
	s, _, app, err := e.targetApp(ctx, name)
	if err != nil {
		return executor.Spec{}, err
	}
	ins, err := s.client.Instances(ctx, app.GUID)
	if err != nil {
		return executor.Spec{}, err
	}
	i := slices.IndexFunc(ins, func(in api.Instance) bool { return in.Index == index && in.Managed })
	if i < 0 {
		return executor.Spec{}, fmt.Errorf("app %s has no instance %d (see `trellis apps`)", name, index)
	}
	f, err := launcher.Load(stateDir)
	if err != nil {
		return executor.Spec{}, fmt.Errorf("no local foundation in %s: exec works on the machine that runs `trellis up`", stateDir)
	}
	ci := slices.IndexFunc(f.Cells, func(c launcher.Cell) bool { return c.Name == ins[i].CellName })
	if ci < 0 {
		return executor.Spec{}, fmt.Errorf("instance %d of %s is on cell %q, not one of this foundation's", index, name, ins[i].CellName)
	}
	return agent.InstanceSpec(f.Cells[ci].StateDir, ins[i].GUID)
}

// exitCodeError makes the CLI exit with the code of a command it ran.
type exitCodeError struct{ code int }

func (e *exitCodeError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

var execCommand = &command{
	name:    "exec",
	group:   groupLocal,
	summary: "Run a command inside an app instance, as its unprivileged user (--root: as root, admin only)",
	usage:   "exec APP [-i INDEX] [--root] [--state-dir DIR] -- COMMAND ARGS...",
	example: "trellis exec frontend -- wget -qO- http://backend.apps.internal:8080/\ntrellis exec backend -i 1 -- cat /etc/resolv.conf\n" +
		"trellis exec --root backend -- nft list ruleset",
	config: true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		index := fs.Int("i", 0, "The instance `INDEX`")
		root := fs.Bool("root", false, "Run as root with every capability, in the instance's namespaces (an admin token only)")
		dir := stateDirFlag(fs, e)
		return func(ctx context.Context, args []string) error {
			if len(args) < 2 {
				return badUsage("exec needs an app and a command: trellis exec APP -- COMMAND ARGS...")
			}
			spec, err := localInstance(ctx, e, *dir, args[0], *index)
			if err != nil {
				return err
			}
			run := executor.Exec
			if *root {
				if err := requireAdmin(ctx, e); err != nil {
					return err
				}
				run = executor.ExecAsRoot
			}
			spec.StateDir = filepath.Join(os.TempDir(), "trellis-exec-"+spec.ID)
			defer os.RemoveAll(spec.StateDir)
			code, err := run(ctx, spec, e.stdin, e.stdout, e.stderr, args[1:])
			if err != nil {
				return err
			}
			if code != 0 {
				return &exitCodeError{code}
			}
			return nil
		}
	},
}

// requireAdmin fails unless the CLI's token has the admin scope: the
// controller lets it list the cells, which only an admin may. Running as
// root inside an instance is for operators, not for a space's developers.
func requireAdmin(ctx context.Context, e *env) error {
	s, err := e.session()
	if err != nil {
		return err
	}
	if _, err := s.client.Cells(ctx); err != nil {
		return fmt.Errorf("exec --root is for admins (the holder of the foundation's admin.json): the token of %s is refused: %w", s.user(), err)
	}
	return nil
}

var logsCommand = &command{
	name:    "logs",
	group:   groupLocal,
	summary: "Print the output of an app's instances",
	usage:   "logs APP [-i INDEX] [--state-dir DIR]",
	example: "trellis logs backend\ntrellis logs backend -i 1",
	config:  true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		index := fs.Int("i", -1, "Only instance `INDEX` (default all)")
		dir := stateDirFlag(fs, e)
		return func(ctx context.Context, args []string) error {
			if len(args) != 1 {
				return badUsage("the required argument `APP` was not provided")
			}
			s, _, app, err := e.targetApp(ctx, args[0])
			if err != nil {
				return err
			}
			ins, err := s.client.Instances(ctx, app.GUID)
			if err != nil {
				return err
			}
			f, err := launcher.Load(*dir)
			if err != nil {
				return fmt.Errorf("no local foundation in %s: logs work on the machine that runs `trellis up`", *dir)
			}
			for _, in := range ins {
				if *index >= 0 && in.Index != *index {
					continue
				}
				ci := slices.IndexFunc(f.Cells, func(c launcher.Cell) bool { return c.Name == in.CellName })
				if ci < 0 {
					continue
				}
				b, err := os.ReadFile(filepath.Join(f.Cells[ci].StateDir, "instances", in.GUID, "app.log"))
				if err != nil {
					continue
				}
				prefix := fmt.Sprintf("[%s/%d] ", args[0], in.Index)
				for line := range strings.Lines(string(b)) {
					e.printf("%s%s", prefix, line)
				}
			}
			return nil
		}
	},
}

func appActionCommand(action, summary string) *command {
	return &command{
		name:    action,
		group:   groupLocal,
		summary: summary,
		usage:   action + " APP",
		example: "trellis " + action + " backend",
		config:  true,
		setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
			return func(ctx context.Context, args []string) error {
				if len(args) != 1 {
					return badUsage("the required argument `APP` was not provided")
				}
				s, t, app, err := e.targetApp(ctx, args[0])
				if err != nil {
					return err
				}
				e.printf("%s app %s in org %s / space %s as %s...\n", strings.ToUpper(action[:1])+action[1:]+"ing", app.Name, t.org.Name, t.space.Name, s.user())
				app, err = s.client.AppAction(ctx, app.GUID, action)
				if err != nil {
					return err
				}
				if action != "stop" {
					ins, err := waitRunning(ctx, s, app.GUID, app.Instances, e.stderr)
					if err != nil {
						return err
					}
					printInstances(e, ins)
				}
				e.ok()
				return nil
			}
		},
	}
}

var scaleCommand = &command{
	name:    "scale",
	group:   groupLocal,
	summary: "Change how many instances an app runs",
	usage:   "scale APP -i N",
	example: "trellis scale backend -i 3",
	config:  true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		n := fs.Int("i", -1, "Run `N` instances")
		return func(ctx context.Context, args []string) error {
			if len(args) != 1 {
				return badUsage("the required argument `APP` was not provided")
			}
			if *n < 0 || *n > 1000 {
				return badUsage("-i N is required (0 to 1000)")
			}
			s, t, app, err := e.targetApp(ctx, args[0])
			if err != nil {
				return err
			}
			e.printf("Scaling app %s in org %s / space %s as %s...\n", app.Name, t.org.Name, t.space.Name, s.user())
			app, err = s.client.ScaleApp(ctx, app.GUID, *n)
			if err != nil {
				return err
			}
			if app.State == "STARTED" {
				ins, err := waitRunning(ctx, s, app.GUID, *n, e.stderr)
				if err != nil {
					return err
				}
				printInstances(e, ins)
			}
			e.ok()
			return nil
		}
	},
}
