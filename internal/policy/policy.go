// Package policy is the pure model of trellis network policies: decoding and
// validating the Cloud Foundry v1 (and v0) policy payloads with Cloud
// Foundry's exact error messages, and formatting tags. It does no I/O.
package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/trellis-c2c/trellis/internal/api"
)

// MaxBodyBytes is the largest policy request body the API accepts (10 MB),
// as Cloud Foundry's policy server.
const MaxBodyBytes = 10 << 20

// Protocols a policy may name.
const (
	TCP = "tcp"
	UDP = "udp"
)

// Error is a payload error. Its message is what the API returns after
// "mapper: ", e.g. "validate policies: missing source id".
type Error struct{ msg string }

func (e *Error) Error() string { return e.msg }

func errorf(format string, args ...any) error { return &Error{fmt.Sprintf(format, args...)} }

// Decode parses and validates a v1 policies payload (the body of POST
// /networking/v1/external/policies and .../policies/delete). Unknown fields,
// wrong types, trailing data and every invalid policy are errors; a payload
// with one bad policy yields no policies.
func Decode(body []byte) ([]api.Policy, error) {
	var req api.PoliciesRequest
	if err := strictUnmarshal(body, &req); err != nil {
		return nil, err
	}
	if err := Validate(req.Policies); err != nil {
		return nil, err
	}
	return req.Policies, nil
}

// V0Policy is the v0 wire shape: one destination port instead of a range.
type V0Policy struct {
	Source      api.Source    `json:"source"`
	Destination V0Destination `json:"destination"`
}

// V0Destination is the v0 destination: a single port.
type V0Destination struct {
	ID       string `json:"id"`
	Tag      string `json:"tag,omitempty"`
	Protocol string `json:"protocol"`
	Port     int    `json:"port"`
}

// V0PoliciesResponse is the v0 list body.
type V0PoliciesResponse struct {
	TotalPolicies int        `json:"total_policies"`
	Policies      []V0Policy `json:"policies"`
}

// DecodeV0 parses and validates a v0 payload and returns it as v1 policies
// (port N becomes the range N-N).
func DecodeV0(body []byte) ([]api.Policy, error) {
	var req struct {
		Policies []V0Policy `json:"policies"`
	}
	if err := strictUnmarshal(body, &req); err != nil {
		return nil, err
	}
	if len(req.Policies) == 0 {
		return nil, errorf("validate policies: missing policies")
	}
	out := make([]api.Policy, len(req.Policies))
	for i, p := range req.Policies {
		switch {
		case p.Source.ID == "":
			return nil, errorf("validate policies: missing source id")
		case p.Destination.ID == "":
			return nil, errorf("validate policies: missing destination id")
		case p.Destination.Protocol != TCP && p.Destination.Protocol != UDP:
			return nil, errorf("validate policies: invalid destination protocol, specify either udp or tcp")
		case p.Destination.Port == 0:
			return nil, errorf("validate policies: missing port")
		case p.Destination.Port < 0 || p.Destination.Port > 65535:
			return nil, errorf("validate policies: invalid port %d, must be in range 1-65535", p.Destination.Port)
		case p.Source.Tag != "" || p.Destination.Tag != "":
			return nil, errorf("validate policies: tags may not be specified")
		}
		out[i] = api.Policy{
			Source: api.Source{ID: p.Source.ID},
			Destination: api.Destination{
				ID: p.Destination.ID, Protocol: p.Destination.Protocol,
				Ports: api.Ports{Start: p.Destination.Port, End: p.Destination.Port},
			},
		}
	}
	return out, nil
}

func strictUnmarshal(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			err = errors.New("unexpected end of JSON input")
		}
		return errorf("unmarshal json: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errorf("unmarshal json: invalid character after top-level value")
	}
	return nil
}

// Validate checks policies as Cloud Foundry's policy server does, in the
// same order and with the same messages, plus a check of the GUID shape so
// that garbage never reaches the store.
func Validate(ps []api.Policy) error {
	if len(ps) == 0 {
		return errorf("validate policies: missing policies")
	}
	for _, p := range ps {
		if err := validateOne(p); err != nil {
			return errorf("validate policies: %s", err.Error())
		}
	}
	return nil
}

func validateOne(p api.Policy) error {
	d := p.Destination
	switch {
	case p.Source.ID == "":
		return errors.New("missing source id")
	case d.ID == "":
		return errors.New("missing destination id")
	case d.Protocol != TCP && d.Protocol != UDP:
		return errors.New("invalid destination protocol, specify either udp or tcp")
	case d.Ports.Start > d.Ports.End:
		return fmt.Errorf("invalid port range %d-%d, start must be less than or equal to end", d.Ports.Start, d.Ports.End)
	case d.Ports.Start < 0:
		return fmt.Errorf("invalid start port %d, must be in range 1-65535", d.Ports.Start)
	case d.Ports.Start == 0:
		return errors.New("missing start port")
	case d.Ports.End > 65535:
		return fmt.Errorf("invalid end port %d, must be in range 1-65535", d.Ports.End)
	case p.Source.Tag != "" || d.Tag != "":
		return errors.New("tags may not be specified")
	case !validID(p.Source.ID):
		return fmt.Errorf("invalid source id %q: must be 1-64 characters of [A-Za-z0-9-]", p.Source.ID)
	case !validID(d.ID):
		return fmt.Errorf("invalid destination id %q: must be 1-64 characters of [A-Za-z0-9-]", d.ID)
	}
	return nil
}

// validID accepts GUID-like identifiers. Cloud Foundry does not check them
// (an unknown id fails later as "cannot be found"); we refuse what can never
// be a GUID so it is not echoed into logs or SQL.
func validID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// FormatTag renders a tag as Cloud Foundry does: 4 upper-case hex digits.
func FormatTag(tag uint16) string {
	const hex = "0123456789ABCDEF"
	return string([]byte{hex[tag>>12], hex[tag>>8&0xf], hex[tag>>4&0xf], hex[tag&0xf]})
}

// FormatPorts renders a range as the cf CLI does: "8080" or "8080-8090".
func FormatPorts(start, end int) string {
	if start == end {
		return strconv.Itoa(start)
	}
	return strconv.Itoa(start) + "-" + strconv.Itoa(end)
}
