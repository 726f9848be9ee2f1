package policy

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/trellis-c2c/trellis/internal/api"
)

func TestDecodeErrors(t *testing.T) {
	pol := func(dest string) string {
		return `{"policies":[{"source":{"id":"a"},"destination":` + dest + `}]}`
	}
	tests := []struct {
		name, body, want string
	}{
		{"empty list", `{"policies":[]}`, "validate policies: missing policies"},
		{"no policies key", `{}`, "validate policies: missing policies"},
		{"missing source", `{"policies":[{"source":{},"destination":{"id":"b","protocol":"tcp","ports":{"start":1,"end":1}}}]}`, "validate policies: missing source id"},
		{"missing destination", pol(`{"protocol":"tcp","ports":{"start":1,"end":1}}`), "validate policies: missing destination id"},
		{"icmp", pol(`{"id":"b","protocol":"icmp","ports":{"start":1,"end":1}}`), "validate policies: invalid destination protocol, specify either udp or tcp"},
		{"upper-case protocol", pol(`{"id":"b","protocol":"TCP","ports":{"start":1,"end":1}}`), "validate policies: invalid destination protocol, specify either udp or tcp"},
		{"start > end", pol(`{"id":"b","protocol":"tcp","ports":{"start":9000,"end":8000}}`), "validate policies: invalid port range 9000-8000, start must be less than or equal to end"},
		{"negative start", pol(`{"id":"b","protocol":"tcp","ports":{"start":-1,"end":5}}`), "validate policies: invalid start port -1, must be in range 1-65535"},
		{"port 0", pol(`{"id":"b","protocol":"tcp","ports":{"start":0,"end":0}}`), "validate policies: missing start port"},
		{"no ports", pol(`{"id":"b","protocol":"udp"}`), "validate policies: missing start port"},
		{"port 65536", pol(`{"id":"b","protocol":"tcp","ports":{"start":65536,"end":65536}}`), "validate policies: invalid end port 65536, must be in range 1-65535"},
		{"tag given", `{"policies":[{"source":{"id":"a","tag":"0001"},"destination":{"id":"b","protocol":"tcp","ports":{"start":1,"end":1}}}]}`, "validate policies: tags may not be specified"},
		{"bad id", pol(`{"id":"b; drop table","protocol":"tcp","ports":{"start":1,"end":1}}`), `validate policies: invalid destination id "b; drop table": must be 1-64 characters of [A-Za-z0-9-]`},
		{"truncated", `{"policies":[{"source":`, "unmarshal json: unexpected EOF"},
		{"empty body", ``, "unmarshal json: unexpected end of JSON input"},
		{"unknown field", `{"policies":[],"extra":1}`, `unmarshal json: json: unknown field "extra"`},
		{"wrong type", pol(`{"id":"b","protocol":"tcp","ports":{"start":"80","end":80}}`), "unmarshal json: json: cannot unmarshal string into Go struct field Ports.policies.destination.ports.start of type int"},
		{"trailing data", `{"policies":[]} {}`, "unmarshal json: invalid character after top-level value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode([]byte(tt.body))
			if err == nil {
				t.Fatalf("Decode(%s) = %v, nil; want error %q", tt.body, got, tt.want)
			}
			if err.Error() != tt.want {
				t.Errorf("Decode(%s) error = %q, want %q", tt.body, err, tt.want)
			}
		})
	}
}

func TestDecodeBatchAllOrNothing(t *testing.T) {
	var ps []api.Policy
	for i := 1; i <= 100; i++ {
		ps = append(ps, api.Policy{Source: api.Source{ID: "a"}, Destination: api.Destination{ID: "b", Protocol: TCP, Ports: api.Ports{Start: i, End: i}}})
	}
	ps[57].Destination.Protocol = "icmp"
	body, _ := json.Marshal(api.PoliciesRequest{Policies: ps})
	got, err := Decode(body)
	if err == nil || got != nil {
		t.Fatalf("Decode(100 policies, one bad) = %d policies, %v; want none and an error", len(got), err)
	}
}

func TestDecodeValid(t *testing.T) {
	body := `{"policies":[{"source":{"id":"app-1"},"destination":{"id":"app-2","protocol":"udp","ports":{"start":8080,"end":8090}}}]}`
	got, err := Decode([]byte(body))
	if err != nil {
		t.Fatalf("Decode(%s) = %v", body, err)
	}
	want := []api.Policy{{Source: api.Source{ID: "app-1"}, Destination: api.Destination{ID: "app-2", Protocol: UDP, Ports: api.Ports{Start: 8080, End: 8090}}}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Decode(%s) mismatch (-want +got):\n%s", body, diff)
	}
}

func TestDecodeV0(t *testing.T) {
	got, err := DecodeV0([]byte(`{"policies":[{"source":{"id":"a"},"destination":{"id":"b","protocol":"tcp","port":5432}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if want := (api.Ports{Start: 5432, End: 5432}); got[0].Destination.Ports != want {
		t.Errorf("DecodeV0 ports = %v, want %v", got[0].Destination.Ports, want)
	}
	for body, want := range map[string]string{
		`{"policies":[{"source":{"id":"a"},"destination":{"id":"b","protocol":"tcp"}}]}`:              "validate policies: missing port",
		`{"policies":[{"source":{"id":"a"},"destination":{"id":"b","protocol":"tcp","port":70000}}]}`: "validate policies: invalid port 70000, must be in range 1-65535",
		`{"policies":[{"source":{"id":"a"},"destination":{"id":"b","protocol":"tcp","ports":{}}}]}`:   `unmarshal json: json: unknown field "ports"`,
	} {
		if _, err := DecodeV0([]byte(body)); err == nil || err.Error() != want {
			t.Errorf("DecodeV0(%s) = %v, want %q", body, err, want)
		}
	}
}

func TestFormat(t *testing.T) {
	for tag, want := range map[uint16]string{1: "0001", 0x00ab: "00AB", 0xffff: "FFFF"} {
		if got := FormatTag(tag); got != want {
			t.Errorf("FormatTag(%d) = %q, want %q", tag, got, want)
		}
	}
	if got := FormatPorts(8080, 8080); got != "8080" {
		t.Errorf("FormatPorts(8080, 8080) = %q", got)
	}
	if got := FormatPorts(8080, 8090); got != "8080-8090" {
		t.Errorf("FormatPorts(8080, 8090) = %q", got)
	}
}

// FuzzDecode checks that no input crashes the decoder, that every error is
// a payload error with the message shapes the API promises, and that what
// it accepts is valid.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"policies":[{"source":{"id":"a"},"destination":{"id":"b","protocol":"tcp","ports":{"start":1,"end":65535}}}]}`))
	f.Add([]byte(`{"policies":[]}`))
	f.Add([]byte(`{"policies":[{"source":{"id":"a","tag":"x"}}]}`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, body []byte) {
		ps, err := Decode(body)
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("Decode(%q) error %T %v, want *Error", body, err, err)
			}
			if m := err.Error(); !strings.HasPrefix(m, "validate policies: ") && !strings.HasPrefix(m, "unmarshal json: ") {
				t.Fatalf("Decode(%q) error %q has no known prefix", body, m)
			}
			return
		}
		if len(ps) == 0 {
			t.Fatalf("Decode(%q) accepted no policies", body)
		}
		for _, p := range ps {
			d := p.Destination
			if d.Ports.Start < 1 || d.Ports.End > 65535 || d.Ports.Start > d.Ports.End || (d.Protocol != TCP && d.Protocol != UDP) || !validID(p.Source.ID) || !validID(d.ID) {
				t.Fatalf("Decode(%q) accepted invalid policy %s", body, fmt.Sprint(p))
			}
		}
	})
}
