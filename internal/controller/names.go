package controller

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// validateName checks an org, space, app or token name: 1-255 bytes,
// valid UTF-8, no leading or trailing space, and no character that shows
// differently from what it is (see unsafeRune).
func validateName(kind, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("invalid %s name: must not be empty", kind)
	case len(name) > 255:
		return fmt.Errorf("invalid %s name: %d bytes long, at most 255 allowed", kind, len(name))
	case !utf8.ValidString(name):
		return fmt.Errorf("invalid %s name: not valid UTF-8", kind)
	case strings.TrimSpace(name) != name:
		return fmt.Errorf("invalid %s name %q: must not start or end with spaces", kind, name)
	}
	if i := strings.IndexFunc(name, unsafeRune); i >= 0 {
		r, _ := utf8.DecodeRuneInString(name[i:])
		return fmt.Errorf("invalid %s name %q: character %U at byte %d is %s", kind, name, r, i, unsafeWhat(r))
	}
	return nil
}

// unsafeRune reports whether r may not appear in a name: control
// characters; the replacement character U+FFFD (what a decoder makes of
// invalid UTF-8 or a lone surrogate escape); line and paragraph
// separators; and format characters (Unicode category Cf), which include
// the bidirectional overrides and isolates (U+202A-U+202E, U+2066-U+2069)
// that make a name display as another, and invisible ones (zero-width
// space, word joiner, byte order mark). Zero-width non-joiner and joiner
// (U+200C, U+200D) are allowed: some scripts and emoji need them.
func unsafeRune(r rune) bool {
	switch {
	case r == 0x200C || r == 0x200D:
		return false
	case unicode.IsControl(r), r == utf8.RuneError, r == 0x2028, r == 0x2029:
		return true
	}
	return unicode.Is(unicode.Cf, r)
}

// unsafeWhat says why unsafeRune refused r.
func unsafeWhat(r rune) string {
	switch {
	case unicode.IsControl(r):
		return "a control character"
	case r == utf8.RuneError:
		return "the replacement character (invalid UTF-8 or a lone surrogate)"
	case r >= 0x202A && r <= 0x202E, r >= 0x2066 && r <= 0x2069, r == 0x200E, r == 0x200F, r == 0x061C:
		return "a bidirectional control character"
	case r == 0x2028 || r == 0x2029:
		return "a line or paragraph separator"
	}
	return "an invisible format character"
}

// validateInstanceGUID checks the GUID a cell registers an instance under,
// which becomes its certificate's common name, DNS name and SPIFFE path. It
// must be a UUID (8-4-4-4-12 hex digits: what the controller gives the
// instances it schedules), Cloud Foundry's instance GUID (8-4-4-4-4), or a
// container ID — 64 hex digits, as runtimes make them and the CNI plugin
// takes by default, optionally after a containerd namespace and '-', as
// nerdctl makes them. So it can be no name that anyone dials, such as a
// route's.
func validateInstanceGUID(g string) error {
	if hexGroups(g, 8, 4, 4, 4, 12) || hexGroups(g, 8, 4, 4, 4, 4) || containerID(g) {
		return nil
	}
	return fmt.Errorf("invalid instance guid %q: must be a UUID (8-4-4-4-12 hex digits), a Cloud Foundry instance GUID (8-4-4-4-4) or a container ID (64 hex digits, optionally after NAMESPACE-)", g)
}

// containerID reports whether s is 64 hex digits, optionally after a
// containerd namespace (1-76 of [A-Za-z0-9._-], beginning with a letter or
// digit) and '-'.
func containerID(s string) bool {
	if len(s) < 64 || !hexGroups(s[len(s)-64:], 64) {
		return false
	}
	if len(s) == 64 {
		return true
	}
	ns, ok := strings.CutSuffix(s[:len(s)-64], "-")
	if !ok || ns == "" || len(ns) > 76 || !isAlnum(ns[0]) {
		return false
	}
	for i := 0; i < len(ns); i++ {
		if c := ns[i]; !isAlnum(c) && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// hexGroups reports whether s is groups of hex digits of the given sizes
// joined by '-'.
func hexGroups(s string, sizes ...int) bool {
	groups := strings.Split(s, "-")
	if len(groups) != len(sizes) {
		return false
	}
	for i, g := range groups {
		if len(g) != sizes[i] {
			return false
		}
		for j := 0; j < len(g); j++ {
			if c := g[j]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
				return false
			}
		}
	}
	return true
}

// validateHost checks a route's host label: 1-63 of [a-z0-9-], not
// starting or ending with '-' (a DNS label).
func validateHost(host string) error {
	if err := validateLabel(host); err != nil {
		return fmt.Errorf("invalid hostname %q: %w", host, err)
	}
	return nil
}

func validateLabel(l string) error {
	switch {
	case l == "":
		return fmt.Errorf("must not be empty")
	case len(l) > 63:
		return fmt.Errorf("%d characters long, at most 63 allowed", len(l))
	case l[0] == '-' || l[len(l)-1] == '-':
		return fmt.Errorf("must not start or end with '-'")
	}
	for i := 0; i < len(l); i++ {
		if c := l[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("character %q is outside [a-z0-9-]", c)
		}
	}
	return nil
}

// validateDomain checks a domain: at least two labels, each a DNS label,
// at most 253 characters in all.
func validateDomain(d string) error {
	if len(d) > 253 {
		return fmt.Errorf("invalid domain %q: %d characters long, at most 253 allowed", d, len(d))
	}
	labels := strings.Split(d, ".")
	if len(labels) < 2 {
		return fmt.Errorf("invalid domain %q: must have at least two labels, like apps.internal", d)
	}
	for _, l := range labels {
		if err := validateLabel(l); err != nil {
			return fmt.Errorf("invalid domain %q: label %q: %w", d, l, err)
		}
	}
	return nil
}
