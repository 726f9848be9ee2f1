package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// group is a heading of `trellis help`.
type group int

const (
	groupControlPlane group = iota
	groupApps
	groupPolicies
	groupLocal
	numGroups
)

var groupTitles = [numGroups]string{
	groupControlPlane: "Control plane",
	groupApps:         "Apps and routes",
	groupPolicies:     "Network policies",
	groupLocal:        "Local foundation",
}

// command is one subcommand: `trellis NAME ...`.
type command struct {
	name    string
	group   group
	summary string // one line for `trellis help`, capitalised, no full stop
	usage   string // synopsis lines, each after "trellis ": "create-app APP [-s SPACE]"
	example string // one or more full command lines, one per line
	// detail, if set, explains the command in a few lines of its help
	// (DESCRIPTION), each line as written.
	detail string
	// config says the command reads the CLI config: it gets a --config
	// flag, and e.session() loads the config it names.
	config     bool
	configHelp string // the help of --config, if not the usual
	// setup registers the command's flags on fs and returns the function
	// that runs the command with its positional arguments. A returned error
	// is printed as one line; make it with badUsage or badInput when the
	// command line was wrong.
	setup func(fs *flag.FlagSet, e *env) func(ctx context.Context, args []string) error
}

// commands is the command table: every command, grouped as `trellis help`
// lists them and in its order within each group. A new command is a line
// here.
var commands = []*command{
	// Control plane
	loginCommand,
	targetCommand,
	orgsCommand,
	createOrgCommand,
	spacesCommand,
	createSpaceCommand,
	createTokenCommand,
	tokensCommand,
	revokeTokenCommand,
	rotateAdminTokenCommand,
	createUserCommand,
	usersCommand,
	deleteUserCommand,
	setPasswordCommand,
	agentCommand,
	createJoinTokenCommand,
	cellsCommand,
	deleteCellCommand,
	encryptionCommand,
	rotateCellKeysCommand,
	cniConfigCommand,
	controllerCommand,
	instanceCACommand,
	rotateInstanceCACommand,

	// Apps and routes
	appsCommand,
	createAppCommand,
	deleteAppCommand,
	domainsCommand,
	createDomainCommand,
	routesCommand,
	mapRouteCommand,
	unmapRouteCommand,
	appCommand,

	// Network policies
	networkPoliciesCommand,
	addNetworkPolicyCommand,
	removeNetworkPolicyCommand,
	tlsCommand,
	setTLSCommand,
	flowsCommand,
	explainCommand,
	enforcementCommand,
	securityGroupsCommand,
	securityGroupCommand,
	createSecurityGroupCommand,
	updateSecurityGroupCommand,
	deleteSecurityGroupCommand,
	bindSecurityGroupCommand,
	unbindSecurityGroupCommand,
	globalCommand(true, "running"),
	globalCommand(false, "running"),
	globalListCommand("running"),
	globalCommand(true, "staging"),
	globalCommand(false, "staging"),
	globalListCommand("staging"),

	// Local foundation
	sampleAppCommand,
	benchCommand,
	demoCommand,
	upCommand,
	downCommand,
	statusCommand,
	pushCommand,
	execCommand,
	logsCommand,
	appActionCommand("start", "Start an app's instances"),
	appActionCommand("stop", "Stop an app's instances"),
	appActionCommand("restart", "Stop an app's instances and start new ones"),
	scaleCommand,
}

func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

// flagSet returns c's flags, the --config flag included for client
// commands, and the function that runs c.
func (c *command) flagSet(e *env) (*flag.FlagSet, func(context.Context, []string) error) {
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported by run, help by printCommandHelp
	fs.Usage = func() {}
	if c.config {
		fs.StringVar(&e.configFlag, "config", "", orDefault(c.configHelp,
			"Read the CLI config from `FILE` (default $TRELLIS_CONFIG, else ~/.trellis/config.json)"))
	}
	return fs, c.setup(fs, e)
}

func printHelp(w io.Writer) {
	fmt.Fprintf(w, "trellis: container-to-container networking in the model of Cloud Foundry.\n\n")
	fmt.Fprintf(w, "USAGE:\n   trellis COMMAND [ARGS] [FLAGS]\n")
	width := 0
	for _, c := range commands {
		width = max(width, len(c.name))
	}
	for g := range numGroups {
		heading := false
		for _, c := range commands {
			if c.group != g {
				continue
			}
			if !heading {
				fmt.Fprintf(w, "\n%s:\n", groupTitles[g])
				heading = true
			}
			fmt.Fprintf(w, "   %-*s   %s\n", width, c.name, c.summary)
		}
	}
	fmt.Fprintf(w, "\nRun 'trellis COMMAND --help' for a command's usage, flags and examples.\n")
	fmt.Fprintf(w, "Client commands read ~/.trellis/config.json, or $TRELLIS_CONFIG, or --config FILE.\n")
	fmt.Fprintf(w, "Exit status: 0 success, 1 failure, 2 wrong command line (nothing was done).\n")
}

func printCommandHelp(w io.Writer, c *command) {
	fmt.Fprintf(w, "NAME:\n   %s - %s\n\n", c.name, c.summary)
	fmt.Fprintf(w, "USAGE:\n")
	for line := range strings.Lines(c.usage) {
		fmt.Fprintf(w, "   trellis %s\n", strings.TrimRight(line, "\n"))
	}
	if c.detail != "" {
		fmt.Fprintf(w, "\nDESCRIPTION:\n")
		for line := range strings.Lines(c.detail) {
			fmt.Fprintf(w, "   %s\n", strings.TrimRight(line, "\n"))
		}
	}
	if c.example != "" {
		fmt.Fprintf(w, "\nEXAMPLES:\n")
		for line := range strings.Lines(c.example) {
			fmt.Fprintf(w, "   %s\n", strings.TrimRight(line, "\n"))
		}
	}
	fs, _ := c.flagSet(&env{})
	var flags []*flag.Flag
	fs.VisitAll(func(f *flag.Flag) { flags = append(flags, f) })
	if len(flags) == 0 {
		return
	}
	fmt.Fprintf(w, "\nOPTIONS:\n")
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	for _, f := range flags {
		arg, usage := flag.UnquoteUsage(f)
		dashes := "--"
		if len(f.Name) == 1 {
			dashes = "-"
		}
		name := dashes + f.Name
		if arg != "" {
			name += " " + arg
		}
		fmt.Fprintf(tw, "   %s\t%s\n", name, usage)
	}
	tw.Flush()
}
