package launcher

import (
	"context"
	"encoding/json"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
)

// TestInternalRoutesDNS resolves internal routes from inside instances on
// both cells, with dig (through `trellis exec`) and with Go's resolver
// (the sample app's /proxy), while backend's instances, themselves on both
// cells, scale up and down and the route is unmapped. DNS does not open
// access: a name resolves without a policy.
func TestInternalRoutesDNS(t *testing.T) { internalRoutesDNS(t, api.EncryptionOff) }

// TestInternalRoutesDNSWireGuard is TestInternalRoutesDNS on a foundation
// that encrypts between cells.
func TestInternalRoutesDNSWireGuard(t *testing.T) { internalRoutesDNS(t, api.EncryptionWireGuard) }

func internalRoutesDNS(t *testing.T, encryption string) {
	fd := upFoundationWith(t, Options{Cells: 2, Encryption: encryption})
	fd.cli(0, "push", "backend", "-i", "2")
	// Not pinned: placed on the cell with the fewest instances, one each.
	fd.cli(0, "push", "frontend", "-i", "2")
	fd.cli(0, "map-route", "backend", "apps.internal", "--hostname", "backend")

	// Across cells: backend's instances are on different cells, and the
	// lookups below are made from a frontend instance on each cell.
	var cells []string
	for _, c := range fd.f.Cells {
		cells = append(cells, c.Name)
	}
	sort.Strings(cells)
	be, fe := byIndex(fd.instances("backend")), byIndex(fd.instances("frontend"))
	onCells := func(app string, ins []instance) {
		t.Helper()
		var got []string
		for _, in := range ins {
			got = append(got, in.CellName)
		}
		if sort.Strings(got); !slices.Equal(got, cells) {
			t.Fatalf("%s's instances are on cells %v, want one on each of %v", app, got, cells)
		}
	}
	onCells("backend", be)
	onCells("frontend", fe)
	ips := func(ins []instance) string {
		var out []string
		for _, in := range ins {
			out = append(out, in.IP)
		}
		sort.Strings(out)
		return strings.Join(out, " ")
	}
	want := ips(be)

	dig := func(from instance, name string) string {
		t.Helper()
		out := strings.Fields(fd.cli(0, "exec", "frontend", "-i", strconv.Itoa(from.Index), "--", "dig", "+short", name))
		sort.Strings(out)
		return strings.Join(out, " ")
	}
	// resolvesEverywhere waits until name answers want (addresses sorted,
	// space-separated) on every frontend, that is on every cell.
	resolvesEverywhere := func(name, want string) {
		t.Helper()
		for _, f := range fe {
			waitFor(t, name+" to resolve to ["+want+"] on "+f.CellName, func() bool { return dig(f, name) == want })
		}
	}
	resolvesEverywhere("backend.apps.internal", want)
	for _, f := range fe {
		if got := dig(f, "BACKEND.Apps.Internal"); got != want {
			t.Errorf("dig BACKEND.Apps.Internal on %s = [%s], want [%s] (names are case-insensitive)", f.CellName, got, want)
		}
		for _, b := range be {
			if got := dig(f, strconv.Itoa(b.Index)+".backend.apps.internal"); got != b.IP {
				t.Errorf("dig %d.backend.apps.internal on %s = [%s], want [%s] (on %s)", b.Index, f.CellName, got, b.IP, b.CellName)
			}
		}
	}
	status := func(from instance, args ...string) string {
		t.Helper()
		out := fd.cli(0, append([]string{"exec", "frontend", "-i", strconv.Itoa(from.Index), "--", "dig"}, args...)...)
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
		if got := status(fe[0], tt.args...); got != tt.want {
			t.Errorf("dig %v status = %s, want %s", tt.args, got, tt.want)
		}
	}

	// Go's resolver in the sample app: /proxy/NAME:8080/ resolves NAME
	// inside the frontend instance, connects and returns what answered.
	proxy := func(from instance, name string) (int, string) {
		t.Helper()
		return get(t, from.netns, from.IP+":8080", "/proxy/"+name+":8080/")
	}
	// reaches waits until name, resolved by Go in the sample app on every
	// cell, reaches the backend instance to (its index and address).
	reaches := func(name string, to instance) {
		t.Helper()
		for _, f := range fe {
			var last string
			waitFor(t, "frontend on "+f.CellName+" to reach backend #"+strconv.Itoa(to.Index)+" as "+name, func() bool {
				code, body := proxy(f, name)
				last = body
				var who struct {
					App   string `json:"app"`
					Index int    `json:"index"`
					IP    string `json:"ip"`
				}
				return code == 200 && json.Unmarshal([]byte(body), &who) == nil &&
					who.App == "backend" && who.Index == to.Index && who.IP == to.IP
			})
			t.Logf("from %s, %s answered by %s", f.CellName, name, strings.TrimSpace(last))
		}
	}

	// Resolving does not open access: without a policy, the name resolves
	// and the connection is refused; with one, Go's resolver in the sample
	// app reaches it by name, and INDEX.HOST that instance, from both cells.
	for _, f := range fe {
		if _, body := proxy(f, "backend.apps.internal"); !strings.Contains(body, "connection refused") {
			t.Errorf("frontend on %s -> backend.apps.internal without a policy = %q, want connection refused", f.CellName, body)
		}
	}
	fd.cli(0, "add-network-policy", "frontend", "backend")
	for _, f := range fe {
		waitFor(t, "frontend on "+f.CellName+" to reach backend.apps.internal by name", func() bool {
			code, body := proxy(f, "backend.apps.internal")
			return code == 200 && strings.Contains(body, `"app":"backend"`)
		})
	}
	for _, b := range be {
		reaches(strconv.Itoa(b.Index)+".backend.apps.internal", b)
	}

	// Scale up: the new instance's address shows on both cells, by dig
	// and by Go's resolver; time it.
	fd.cli(0, "scale", "backend", "-i", "3")
	start := time.Now()
	be = byIndex(fd.instances("backend"))
	if len(be) != 3 || be[2].Index != 2 {
		t.Fatalf("backend's instances after scaling to 3: %+v", be)
	}
	added := be[2]
	resolvesEverywhere("backend.apps.internal", ips(be))
	t.Logf("answers on both cells followed a scale-up within %v of scale returning (polled through trellis exec)", time.Since(start))
	resolvesEverywhere("2.backend.apps.internal", added.IP)
	reaches("2.backend.apps.internal", added)

	// Scale down: both cells' answers follow; time it.
	fd.cli(0, "scale", "backend", "-i", "1")
	start = time.Now()
	left := fd.instances("backend")
	if len(left) != 1 || left[0].Index != 0 {
		t.Fatalf("backend's instances after scaling to 1: %+v", left)
	}
	resolvesEverywhere("backend.apps.internal", left[0].IP)
	t.Logf("answers on both cells followed a scale-down within %v of scale returning (polled through trellis exec)", time.Since(start))
	for _, f := range fe {
		waitFor(t, "2.backend.apps.internal to answer NXDOMAIN on "+f.CellName, func() bool {
			return status(f, "2.backend.apps.internal") == "NXDOMAIN"
		})
	}

	// Unmapped: NXDOMAIN on both cells, for dig and for Go's resolver.
	fd.cli(0, "unmap-route", "backend", "apps.internal", "--hostname", "backend")
	for _, f := range fe {
		waitFor(t, "an unmapped route to answer NXDOMAIN on "+f.CellName, func() bool {
			return status(f, "backend.apps.internal") == "NXDOMAIN"
		})
		if _, body := proxy(f, "0.backend.apps.internal"); !strings.Contains(body, "no such host") {
			t.Errorf("frontend on %s -> 0.backend.apps.internal unmapped = %q, want no such host", f.CellName, body)
		}
	}

	// Controller down: the cells keep answering from their last copy.
	fd.cli(0, "map-route", "backend", "apps.internal", "--hostname", "backend")
	resolvesEverywhere("backend.apps.internal", left[0].IP)
	if err := stop(fd.f.Controller.PID, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// (trellis exec needs the controller: ask each cell's server directly,
	// from inside the frontend instance there, with Go's resolver, and
	// through the sample app.)
	for _, f := range fe {
		r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialErr(f.netns, network, "169.254.0.2:53")
		}}
		got, err := r.LookupHost(context.Background(), "backend.apps.internal")
		if err != nil || strings.Join(got, " ") != left[0].IP {
			t.Errorf("backend.apps.internal on %s with the controller down = %v, %v; want [%s]", f.CellName, got, err, left[0].IP)
		}
	}
	reaches("0.backend.apps.internal", left[0])
}

// byIndex sorts instances by index.
func byIndex(ins []instance) []instance {
	slices.SortFunc(ins, func(a, b instance) int { return a.Index - b.Index })
	return ins
}
