// Package cli is the trellis command line: one subcommand per verb, shaped
// like the cf CLI's (add-network-policy, map-route, ...), and their flag
// parsing. Client commands reach the controller through api.Client; the
// package holds no networking logic of its own.
package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
)

// Exit statuses of Main.
const (
	exitOK      = 0
	exitFailed  = 1 // the command ran and failed
	exitBadArgs = 2 // the command line was wrong; nothing was done
)

// Main runs the trellis command line args (without the program name) and
// returns the process exit status: 0 on success, 1 when a command failed, 2
// when the command line was wrong and nothing was done.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return run(ctx, args, &env{stdin: stdin, stdout: stdout, stderr: stderr, getenv: os.Getenv})
}

// env is what a command sees of the world: its streams, the environment
// and the global --config flag.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	configFlag     string // --config, for commands with config set
}

func run(ctx context.Context, args []string, e *env) int {
	if len(args) == 0 || isHelpFlag(args[0]) {
		printHelp(e.stdout)
		return exitOK
	}
	if args[0] == "help" {
		if len(args) == 1 {
			printHelp(e.stdout)
			return exitOK
		}
		c := lookup(args[1])
		if c == nil {
			return e.report(ctx, unknownCommand(args[1]))
		}
		printCommandHelp(e.stdout, c)
		return exitOK
	}
	c := lookup(args[0])
	if c == nil {
		return e.report(ctx, unknownCommand(args[0]))
	}
	fs, runCommand := c.flagSet(e)
	pos, err := parseArgs(fs, args[1:])
	if errors.Is(err, flag.ErrHelp) {
		printCommandHelp(e.stdout, c)
		return exitOK
	}
	if err != nil {
		return e.report(ctx, badUsage("%v", err))
	}
	return e.report(ctx, runCommand(ctx, pos))
}

func isHelpFlag(s string) bool { return s == "-h" || s == "-help" || s == "--help" }

func unknownCommand(name string) error {
	if strings.HasPrefix(name, "-") {
		return badInput("unknown flag %q: run 'trellis help' for usage", name)
	}
	return badInput("unknown command %q: run 'trellis help' for the list of commands", name)
}

// parseArgs parses flags wherever they appear among the positional
// arguments, as the cf CLI does (`add-network-policy a b --port 8080`), and
// returns the positional arguments. Everything after "--" is positional.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		// Parse stops at the first positional argument, or just after a
		// "--" that it consumed.
		if i := len(args) - len(rest); i > 0 && args[i-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// usageError is a wrong command line: nothing was done. It exits 2.
type usageError struct {
	msg       string
	incorrect bool // print as cf does: "Incorrect Usage: msg"
}

func (e *usageError) Error() string { return e.msg }

// badUsage is a command line of the wrong shape — a bad flag, a missing
// argument — reported as cf reports it: "Incorrect Usage: ...".
func badUsage(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...), incorrect: true}
}

// badInput is a well-formed command line with a wrong value, such as an
// invalid app name: "trellis: invalid app name ...".
func badInput(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// report prints err as one line on stderr and returns the exit status.
func (e *env) report(ctx context.Context, err error) int {
	if err == nil {
		return exitOK
	}
	msg := strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(err.Error()) // one line
	var ue *usageError
	var ec *exitCodeError
	switch {
	case errors.As(err, &ec):
		return ec.code // the command ran; it said what it had to say
	case errors.As(err, &ue) && ue.incorrect:
		fmt.Fprintf(e.stderr, "Incorrect Usage: %s\n", msg)
		return exitBadArgs
	case errors.As(err, &ue):
		fmt.Fprintf(e.stderr, "trellis: %s\n", msg)
		return exitBadArgs
	case ctx.Err() != nil && errors.Is(err, ctx.Err()):
		fmt.Fprintln(e.stderr, "trellis: interrupted")
		return exitFailed
	default:
		fmt.Fprintf(e.stderr, "trellis: %s\n", msg)
		return exitFailed
	}
}

func (e *env) printf(format string, args ...any) { fmt.Fprintf(e.stdout, format, args...) }

func (e *env) ok() { fmt.Fprintln(e.stdout, "OK") }

// printTable prints rows under header (if not nil) in columns separated by
// at least three spaces, as the cf CLI does.
func (e *env) printTable(header []string, rows [][]string) {
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 3, ' ', 0)
	if header != nil {
		fmt.Fprintln(tw, strings.Join(header, "\t"))
	}
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
	for line := range strings.Lines(buf.String()) {
		fmt.Fprintln(e.stdout, strings.TrimRight(line, " \n"))
	}
}

// printJSON prints v as indented JSON.
func (e *env) printJSON(v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(e.stdout, "%s\n", b)
	return err
}
