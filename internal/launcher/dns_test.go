package launcher

import (
	"context"
	"net"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestInternalRoutesDNS resolves internal routes from inside instances,
// with dig (through `trellis exec`) and with Go's resolver (the sample
// app's /proxy), across cells, while instances scale and a route is
// unmapped. DNS does not open access: a name resolves without a policy.
func TestInternalRoutesDNS(t *testing.T) {
	fd := upFoundation(t, 2)
	fd.cli(0, "push", "backend", "-i", "2")
	fd.cli(0, "push", "frontend", "--cell", "cell1")
	fd.cli(0, "map-route", "backend", "apps.internal", "--hostname", "backend")
	be := fd.instances("backend")
	var want []string
	for _, b := range be {
		want = append(want, b.IP)
	}
	sort.Strings(want)
	dig := func(name string) []string {
		out := strings.Fields(fd.cli(0, "exec", "frontend", "--", "dig", "+short", name))
		sort.Strings(out)
		return out
	}
	waitFor(t, "backend.apps.internal to resolve to both instances", func() bool {
		return strings.Join(dig("backend.apps.internal"), " ") == strings.Join(want, " ")
	})
	if got := dig("BACKEND.Apps.Internal"); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("dig BACKEND.Apps.Internal = %v, want %v (names are case-insensitive)", got, want)
	}
	for _, b := range be {
		if got := dig(strconv.Itoa(b.Index) + ".backend.apps.internal"); len(got) != 1 || got[0] != b.IP {
			t.Errorf("dig %d.backend.apps.internal = %v, want [%s]", b.Index, got, b.IP)
		}
	}
	status := func(args ...string) string {
		out := fd.cli(0, append([]string{"exec", "frontend", "--", "dig"}, args...)...)
		for _, l := range strings.Split(out, "\n") {
			if i := strings.Index(l, "status: "); i >= 0 {
				return strings.TrimSuffix(strings.Fields(l[i+len("status: "):])[0], ",")
			}
		}
		return out
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"nope.apps.internal"}, "NXDOMAIN"},
		{[]string{"AAAA", "backend.apps.internal"}, "NOERROR"},
		{[]string{"example.com"}, "REFUSED"},
	} {
		if got := status(tt.args...); got != tt.want {
			t.Errorf("dig %v status = %s, want %s", tt.args, got, tt.want)
		}
	}

	// Resolving does not open access: without a policy, the name resolves
	// and the connection is refused; with one, Go's resolver in the sample
	// app reaches it by name.
	fe := fd.instances("frontend")[0]
	_, body := get(t, fe.netns, fe.IP+":8080", "/proxy/backend.apps.internal:8080/")
	if !strings.Contains(body, "connection refused") {
		t.Errorf("frontend -> backend.apps.internal without a policy = %q, want connection refused", body)
	}
	fd.cli(0, "add-network-policy", "frontend", "backend")
	waitFor(t, "frontend to reach backend.apps.internal by name", func() bool {
		code, body := get(t, fe.netns, fe.IP+":8080", "/proxy/backend.apps.internal:8080/")
		return code == 200 && strings.Contains(body, `"app":"backend"`)
	})

	// Scale down: the other cell's answers follow; time it.
	fd.cli(0, "scale", "backend", "-i", "1")
	left := fd.instances("backend")[0].IP
	start := time.Now()
	waitFor(t, "answers to drop the stopped instance", func() bool {
		return strings.Join(dig("backend.apps.internal"), " ") == left
	})
	t.Logf("answers followed a scale-down within %v (polled through trellis exec)", time.Since(start))

	// Unmapped: NXDOMAIN.
	fd.cli(0, "unmap-route", "backend", "apps.internal", "--hostname", "backend")
	waitFor(t, "an unmapped route to answer NXDOMAIN", func() bool { return status("backend.apps.internal") == "NXDOMAIN" })

	// Controller down: the cells keep answering from their last copy.
	fd.cli(0, "map-route", "backend", "apps.internal", "--hostname", "backend")
	waitFor(t, "the route to answer again", func() bool { return strings.Join(dig("backend.apps.internal"), " ") == left })
	if err := stop(fd.f.Controller.PID, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// (trellis exec needs the controller: ask the cell's server directly,
	// from inside the frontend instance, with Go's resolver.)
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return dialErr(fe.netns, network, "169.254.0.2:53")
	}}
	got, err := r.LookupHost(context.Background(), "backend.apps.internal")
	if err != nil || strings.Join(got, " ") != left {
		t.Errorf("backend.apps.internal with the controller down = %v, %v; want [%s]", got, err, left)
	}
}
