package bench

import (
	"strings"
	"testing"
	"time"
)

func TestHAProxyConfig(t *testing.T) {
	cfg := haproxyConfig([]haproxyTLS{
		{Name: "backend", Port: 8443, Cert: "/d/backend.pem", App: "10.255.2.2:8080"},
		{Name: "bulk", Port: 8444, NetNS: "trellis-abc-cell2-i-123", Cert: "/d/bulk.pem", App: "10.255.2.3:8080"},
		{Name: "relay", Port: 8081, App: "10.255.2.2:8080"},
	})
	for _, want := range []string{
		"nbthread 1",
		"mode tcp",
		"ssl-min-ver TLSv1.2 no-tls-tickets",
		"ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256:",
		"frontend backend\n    bind :8443 ssl crt /d/backend.pem\n    default_backend backend\n",
		"backend backend\n    server app 10.255.2.2:8080\n",
		"frontend bulk\n    bind :8444 namespace trellis-abc-cell2-i-123 ssl crt /d/bulk.pem\n",
		"backend bulk\n    server app 10.255.2.3:8080 namespace trellis-abc-cell2-i-123\n",
		"frontend relay\n    bind :8081\n    default_backend relay\n",
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("haproxyConfig lacks %q:\n%s", want, cfg)
		}
	}
}

func TestGauge(t *testing.T) {
	text := `# HELP trellis_proxy_instances Instances served on port 61443.
# TYPE trellis_proxy_instances gauge
trellis_proxy_instances_total_other 7
trellis_proxy_instances 102
trellis_proxy_handshakes_total{result="ok"} 3
`
	if v, ok := gauge(text, "trellis_proxy_instances"); !ok || v != 102 {
		t.Errorf("gauge = %v, %v, want 102, true", v, ok)
	}
	if v, ok := gauge(text, "trellis_proxy_missing"); ok {
		t.Errorf("gauge of a missing metric = %v, true", v)
	}
}

func TestVmRSS(t *testing.T) {
	status := "Name:\ttrellis\nVmHWM:\t   50000 kB\nVmRSS:\t   41236 kB\nRssAnon:\t   20000 kB\n"
	if kib, err := vmRSS(status); err != nil || kib != 41236 {
		t.Errorf("vmRSS = %d, %v, want 41236", kib, err)
	}
	for _, bad := range []string{"Name:\tkthreadd\n", "VmRSS:\t12 MB\n"} {
		if kib, err := vmRSS(bad); err == nil {
			t.Errorf("vmRSS(%q) = %d, want an error", bad, kib)
		}
	}
}

func TestRequestStart(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	for _, tc := range []struct {
		name                string
		due, prevDone, sent time.Time
		want                time.Time
	}{
		{"on time", at(10), at(5), at(10), at(10)},
		{"generator late on its own: from when sent", at(10), at(5), at(12), at(12)},
		{"queued behind a slow answer: from when due", at(10), at(14), at(14), at(10)},
		{"first request", at(10), time.Time{}, at(10), at(10)},
	} {
		if got := requestStart(tc.due, tc.prevDone, tc.sent); !got.Equal(tc.want) {
			t.Errorf("%s: requestStart = %v, want %v", tc.name, got.Sub(t0), tc.want.Sub(t0))
		}
	}
}
