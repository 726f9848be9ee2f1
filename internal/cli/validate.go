package cli

import (
	"flag"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/trellis-c2c/trellis/internal/api"
)

// Input checks run before any call to the controller. Their rules are those
// of docs/api.md; their messages name the field and the problem.

// checkName checks an org, space, app or token name: 1-255 characters, no
// control characters, no leading or trailing spaces.
func checkName(kind, name string) error {
	var problem string
	switch {
	case name == "":
		problem = "must not be empty"
	case !utf8.ValidString(name):
		problem = "must be valid UTF-8"
	case utf8.RuneCountInString(name) > 255:
		problem = "must be at most 255 characters"
	case strings.ContainsFunc(name, unicode.IsControl):
		problem = "must not contain control characters"
	case strings.TrimSpace(name) != name:
		problem = "must not begin or end with a space"
	default:
		return nil
	}
	return badInput("invalid %s name %q: %s", kind, name, problem)
}

// checkSpaceFlags checks -o ORG and -s SPACE.
func checkSpaceFlags(org, space string) error {
	if org != "" {
		if err := checkName("org", org); err != nil {
			return err
		}
	}
	if space != "" {
		return checkName("space", space)
	}
	return nil
}

// checkHost checks a route's host: 1-63 of [a-z0-9-], not beginning or
// ending with '-'.
func checkHost(host string) error {
	if !isLabel(host) {
		return badInput("invalid hostname %q: must be 1-63 characters of a-z, 0-9 and '-', not beginning or ending with '-'", host)
	}
	return nil
}

// checkDomain checks a domain: dot-separated labels of host form, at most
// 253 characters.
func checkDomain(domain string) error {
	switch {
	case domain == "":
		return badInput("invalid domain %q: must not be empty", domain)
	case len(domain) > 253:
		return badInput("invalid domain %q: must be at most 253 characters", domain)
	}
	for l := range strings.SplitSeq(domain, ".") {
		if !isLabel(l) {
			return badInput("invalid domain %q: each dot-separated label must be 1-63 characters of a-z, 0-9 and '-', not beginning or ending with '-'", domain)
		}
	}
	return nil
}

func isLabel(s string) bool {
	if len(s) < 1 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// wantArgs checks that args holds exactly the named positional arguments,
// with the messages of cf's flag parser.
func wantArgs(args []string, names ...string) error {
	if len(args) < len(names) {
		missing := names[len(args):]
		if len(missing) == 1 {
			return badUsage("the required argument `%s` was not provided", missing[0])
		}
		return badUsage("the required arguments %s were not provided", quoteList(missing, "`%s`"))
	}
	if len(args) > len(names) {
		return badUsage("unexpected argument %q", args[len(names)])
	}
	return nil
}

// nameArg checks that args is one argument, named arg in the usage, and a
// valid name of kind (see checkName), and returns it.
func nameArg(args []string, arg, kind string) (string, error) {
	if err := wantArgs(args, arg); err != nil {
		return "", err
	}
	return args[0], checkName(kind, args[0])
}

// requireFlags checks that the named flags were set, with the messages of
// cf's flag parser.
func requireFlags(fs *flag.FlagSet, names ...string) error {
	set := setFlags(fs)
	var missing []string
	for _, n := range names {
		if !set[n] {
			missing = append(missing, "--"+n)
		}
	}
	switch len(missing) {
	case 0:
		return nil
	case 1:
		return badUsage("the required flag `%s' was not specified", missing[0])
	default:
		return badUsage("the required flags %s were not specified", quoteList(missing, "`%s'"))
	}
}

// setFlags is the set of flags given on the command line.
func setFlags(fs *flag.FlagSet) map[string]bool {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set
}

// quoteList is "`a`, `b` and `c`".
func quoteList(items []string, format string) string {
	q := make([]string, len(items))
	for i, s := range items {
		q[i] = fmt.Sprintf(format, s)
	}
	if len(q) == 1 {
		return q[0]
	}
	return strings.Join(q[:len(q)-1], ", ") + " and " + q[len(q)-1]
}

// parsePort parses cf's --port RANGE: N or N-M, with the cf CLI's messages
// for malformed values and the controller's limits.
func parsePort(s string) (api.Ports, error) {
	parts := strings.Split(s, "-")
	start, err := strconv.Atoi(parts[0])
	if err != nil || start < 1 {
		return api.Ports{}, badUsage("PORT must be a positive integer")
	}
	end := start
	switch len(parts) {
	case 1:
	case 2:
		if end, err = strconv.Atoi(parts[1]); err != nil || end < 1 {
			return api.Ports{}, badUsage("PORT must be a positive integer")
		}
	default:
		return api.Ports{}, badUsage("PORT syntax must match integer[-integer]")
	}
	for _, p := range []int{start, end} {
		if p > 65535 {
			return api.Ports{}, badUsage("invalid port %d: must be in range 1-65535", p)
		}
	}
	if start > end {
		return api.Ports{}, badUsage("invalid port range %d-%d: start must be less than or equal to end", start, end)
	}
	return api.Ports{Start: start, End: end}, nil
}

// formatPorts prints a range as cf does: 8080 or 8080-8090.
func formatPorts(p api.Ports) string {
	if p.Start == p.End {
		return strconv.Itoa(p.Start)
	}
	return fmt.Sprintf("%d-%d", p.Start, p.End)
}

// parseProtocol parses cf's --protocol: tcp or udp, in any case.
func parseProtocol(s string) (string, error) {
	switch p := strings.ToLower(s); p {
	case "tcp", "udp":
		return p, nil
	}
	return "", badUsage(`PROTOCOL must be "tcp" or "udp"`)
}
