package controller

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// validateName checks an org, space or app name: 1-255 characters, valid
// UTF-8, no control characters, no leading or trailing space.
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
	case strings.ContainsFunc(name, unicode.IsControl):
		return fmt.Errorf("invalid %s name %q: must not contain control characters", kind, name)
	}
	return nil
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
