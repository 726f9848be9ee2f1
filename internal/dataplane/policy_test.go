package dataplane

import (
	"flag"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	gocmp "github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (-want +got):\n%s", path, gocmp.Diff(string(want), got))
	}
}

// cell1 has three instances: A (tag 1), B (tag 2) and C, whose app is in
// no policy.
var cell1Locals = []Local{
	{IP: addr("10.255.1.2"), Tag: 1, HostVeth: "s-010255001002"},
	{IP: addr("10.255.1.3"), Tag: 2},
	{IP: addr("10.255.1.4")},
}

func TestPlanPolicyGolden(t *testing.T) {
	tests := []struct {
		name string
		p    Policy
	}{
		{"enforce", Policy{
			Enforce:       true,
			Locals:        cell1Locals,
			DenyLogGroup:  1,
			AllowLogGroup: 2,
			Allows: []Allow{
				{addr("10.255.1.2"), 3, "tcp", 8080, 8080},
				{addr("10.255.1.3"), 1, "tcp", 8000, 8999}, // a range
				{addr("10.255.1.3"), 1, "tcp", 8080, 8080}, // inside it: merged
				{addr("10.255.1.3"), 1, "tcp", 9000, 9100}, // adjacent: merged
				{addr("10.255.1.2"), 3, "udp", 8080, 8080}, // UDP
				{addr("10.255.1.4"), 7, "udp", 53, 53},
				{addr("10.255.1.2"), 3, "tcp", 8080, 8080}, // duplicate
				{addr("10.255.1.2"), 1, "tcp", 1, 65535},   // every port
			},
		}},
		{"default-deny", Policy{Enforce: true, Locals: cell1Locals, LogRate: 10}},
		{"not-enforcing", Policy{
			Enforce:       false,
			Locals:        cell1Locals,
			AllowLogGroup: 2,
			Allows:        []Allow{{addr("10.255.1.2"), 3, "tcp", 8080, 8080}},
		}},
		{"empty", Policy{Enforce: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := planPolicy(tt.p)
			if err != nil {
				t.Fatalf("planPolicy(%+v) = %v", tt.p, err)
			}
			golden(t, filepath.Join("policy", tt.name+".nft"), got)
		})
	}
}

func TestCompilePolicyRejects(t *testing.T) {
	ok := Allow{addr("10.255.1.2"), 3, "tcp", 8080, 8080}
	tests := []struct {
		name string
		p    Policy
		want string
	}{
		{"IPv6 local", Policy{Locals: []Local{{IP: addr("fd00::1")}}}, "not a usable IPv4 address"},
		{"zero local", Policy{Locals: []Local{{IP: addr("0.0.0.0")}}}, "not a usable IPv4 address"},
		{"local twice", Policy{Locals: []Local{{IP: addr("10.255.1.2")}, {IP: addr("10.255.1.2"), Tag: 4}}}, "listed twice"},
		{"veth shared", Policy{Locals: []Local{{IP: addr("10.255.1.2"), HostVeth: "s-x"}, {IP: addr("10.255.1.3"), HostVeth: "s-x"}}}, "share host veth s-x"},
		{"veth not policed", Policy{Locals: []Local{{IP: addr("10.255.1.2"), HostVeth: "eth1"}}}, `does not start with "s-"`},
		{"veth too long", Policy{Locals: []Local{{IP: addr("10.255.1.2"), HostVeth: "s-0123456789abcdef"}}}, "invalid interface name"},
		{"tag 0", Policy{Enforce: true, Allows: []Allow{{addr("10.255.1.2"), 0, "tcp", 80, 80}}}, "source tag 0"},
		{"protocol", Policy{Enforce: true, Allows: []Allow{{addr("10.255.1.2"), 3, "icmp", 80, 80}}}, `protocol "icmp"`},
		{"port 0", Policy{Enforce: true, Allows: []Allow{{addr("10.255.1.2"), 3, "tcp", 0, 80}}}, "not a range"},
		{"ports reversed", Policy{Enforce: true, Allows: []Allow{ok, {addr("10.255.1.2"), 3, "tcp", 90, 80}}}, "not a range"},
		{"IPv6 allow", Policy{Enforce: true, Allows: []Allow{{addr("fd00::1"), 3, "tcp", 80, 80}}}, "not an IPv4 address"},
		{"log rate", Policy{LogRate: -1}, "negative"},
		{"VXLAN port", Policy{VXLANPort: 65536}, "VXLAN port 65536 is not a UDP port"},
	}
	for _, tt := range tests {
		_, err := compilePolicy(tt.p)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: compilePolicy(%+v) = %v, want an error containing %q", tt.name, tt.p, err, tt.want)
		}
	}
}

func TestMergeAllows(t *testing.T) {
	g := packGroup(addr("10.255.1.2"), 3, protoTCP)
	u := packGroup(addr("10.255.1.2"), 3, protoUDP)
	tests := []struct {
		name     string
		in, want []allowElem
	}{
		{"disjoint", []allowElem{{g, 90, 95}, {g, 80, 80}}, []allowElem{{g, 80, 80}, {g, 90, 95}}},
		{"overlapping", []allowElem{{g, 80, 90}, {g, 85, 100}}, []allowElem{{g, 80, 100}}},
		{"adjacent", []allowElem{{g, 81, 90}, {g, 80, 80}}, []allowElem{{g, 80, 90}}},
		{"contained", []allowElem{{g, 1, 65535}, {g, 8080, 8080}}, []allowElem{{g, 1, 65535}}},
		{"duplicates", []allowElem{{g, 80, 80}, {g, 80, 80}}, []allowElem{{g, 80, 80}}},
		{"other protocol", []allowElem{{u, 80, 80}, {g, 80, 80}}, []allowElem{{g, 80, 80}, {u, 80, 80}}},
		{"top port", []allowElem{{g, 65535, 65535}, {g, 65534, 65534}}, []allowElem{{g, 65534, 65535}}},
	}
	for _, tt := range tests {
		got := mergeAllows(slices.Clone(tt.in))
		if !slices.Equal(got, tt.want) {
			t.Errorf("%s: mergeAllows(%v) = %v, want %v", tt.name, tt.in, got, tt.want)
		}
	}
}

// TestSortAllows checks the radix sort against a comparison sort.
func TestSortAllows(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 300, 5000} {
		es := make([]allowElem, n)
		for i := range es {
			dst := netip.AddrFrom4([4]byte{10, 255, byte(r.IntN(4)), byte(r.IntN(256))})
			lo := uint16(r.IntN(65535) + 1)
			es[i] = allowElem{packGroup(dst, uint16(r.IntN(2000)), []uint8{protoTCP, protoUDP}[r.IntN(2)]), lo, lo}
		}
		want := slices.Clone(es)
		slices.SortFunc(want, compareAllowElem)
		sortAllows(es)
		if !slices.Equal(es, want) {
			t.Errorf("sortAllows of %d elements differs from slices.SortFunc", n)
		}
	}
}

func TestPolicyFingerprint(t *testing.T) {
	base := Policy{Enforce: true, Locals: cell1Locals, DenyLogGroup: 1, Allows: []Allow{
		{addr("10.255.1.2"), 3, "tcp", 8080, 8080},
		{addr("10.255.1.3"), 1, "udp", 8000, 8999},
	}}
	fp := func(p Policy) *policyPlan {
		t.Helper()
		plan, err := compilePolicy(p)
		if err != nil {
			t.Fatal(err)
		}
		return plan
	}
	b := fp(base)

	shuffled := base
	shuffled.Allows = []Allow{base.Allows[1], base.Allows[0], base.Allows[0]}
	shuffled.Locals = []Local{cell1Locals[2], cell1Locals[0], cell1Locals[1]}
	if got := fp(shuffled); got.fingerprint() != b.fingerprint() {
		t.Errorf("fingerprint depends on input order or duplicates: %s vs %s", got.fingerprint(), b.fingerprint())
	}

	changes := map[string]func(p *Policy){
		"port":     func(p *Policy) { p.Allows = []Allow{{addr("10.255.1.2"), 3, "tcp", 8081, 8081}, base.Allows[1]} },
		"range":    func(p *Policy) { p.Allows = []Allow{base.Allows[0], {addr("10.255.1.3"), 1, "udp", 8000, 8998}} },
		"tag":      func(p *Policy) { p.Allows = []Allow{{addr("10.255.1.2"), 4, "tcp", 8080, 8080}, base.Allows[1]} },
		"protocol": func(p *Policy) { p.Allows = []Allow{{addr("10.255.1.2"), 3, "udp", 8080, 8080}, base.Allows[1]} },
		"local tag": func(p *Policy) {
			p.Locals = slices.Clone(cell1Locals)
			p.Locals[2].Tag = 9
		},
		"local veth": func(p *Policy) {
			p.Locals = slices.Clone(cell1Locals)
			p.Locals[1].HostVeth = "s-other"
		},
	}
	rules := map[string]func(p *Policy){
		"enforce":   func(p *Policy) { p.Enforce = false },
		"deny log":  func(p *Policy) { p.DenyLogGroup = 5 },
		"allow log": func(p *Policy) { p.AllowLogGroup = 5 },
		"log rate":  func(p *Policy) { p.LogRate = 5 },
	}
	for name, change := range changes {
		p := base
		change(&p)
		got := fp(p)
		if got.setsHash == b.setsHash {
			t.Errorf("changing the %s leaves the sets fingerprint %s", name, got.setsHash)
		}
		if got.rulesHash != b.rulesHash {
			t.Errorf("changing the %s changes the rules fingerprint; it must only change elements", name)
		}
	}
	for name, change := range rules {
		p := base
		change(&p)
		if got := fp(p); got.rulesHash == b.rulesHash {
			t.Errorf("changing the %s leaves the rules fingerprint %s", name, got.rulesHash)
		}
	}
}

func TestDiffSorted(t *testing.T) {
	del, add := diffSorted([]int{1, 2, 4, 6}, []int{2, 3, 4, 7, 8}, func(a, b int) int { return a - b })
	if !slices.Equal(del, []int{1, 6}) || !slices.Equal(add, []int{3, 7, 8}) {
		t.Errorf("diffSorted = del %v add %v, want del [1 6] add [3 7 8]", del, add)
	}
}

// TestPlanCacheMatchesCompile walks a policy through random edits and
// checks that the incremental compile always equals a full one.
func TestPlanCacheMatchesCompile(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	randomAllow := func() Allow {
		lo := uint16(8000 + r.IntN(30))
		hi := lo
		if r.IntN(3) == 0 {
			hi += uint16(r.IntN(5))
		}
		return Allow{netip.AddrFrom4([4]byte{10, 255, 1, byte(2 + r.IntN(4))}), uint16(1 + r.IntN(3)), []string{"tcp", "udp"}[r.IntN(2)], lo, hi}
	}
	p := Policy{Enforce: true, Locals: cell1Locals}
	for range 300 {
		p.Allows = append(p.Allows, randomAllow())
	}
	var c planCache
	var incremental, diffs int
	var prev *policyPlan
	for step := range 2000 {
		allows := slices.Clone(p.Allows)
		switch k := r.IntN(100); {
		case k < 35: // insert somewhere
			allows = slices.Insert(allows, r.IntN(len(allows)+1), randomAllow())
		case k < 70 && len(allows) > 0: // remove one
			i := r.IntN(len(allows))
			allows = slices.Delete(allows, i, i+1)
		case k < 85 && len(allows) > 0: // change one
			allows[r.IntN(len(allows))] = randomAllow()
		case k < 88 && len(allows) > 0: // duplicate one
			allows = append(allows, allows[r.IntN(len(allows))])
		case k < 90:
			r.Shuffle(len(allows), func(i, j int) { allows[i], allows[j] = allows[j], allows[i] })
		case k < 92:
			p.Enforce = !p.Enforce
		case k < 94:
			p.DenyLogGroup ^= 1
		case k < 96: // an invalid allow: refused, and the cache unharmed
			bad := p
			bad.Allows = append(slices.Clone(p.Allows), Allow{addr("10.255.1.2"), 0, "tcp", 1, 1})
			if _, err := c.compile(bad); err == nil {
				t.Fatalf("step %d: planCache.compile accepted tag 0", step)
			}
		}
		p.Allows = allows
		want, err := compilePolicy(p)
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.compile(p)
		if err != nil {
			t.Fatalf("step %d: planCache.compile = %v", step, err)
		}
		if c.updates > 0 {
			incremental += c.updates
			c.updates = 0
		}
		if !slices.Equal(got.allows, want.allows) || got.allowsSum != want.allowsSum || got.fingerprint() != want.fingerprint() ||
			!slices.Equal(got.localIDs, want.localIDs) || !slices.Equal(got.srcTags, want.srcTags) {
			t.Fatalf("step %d: incremental plan differs from a full compile:\nallows %v\nwant   %v\n%s\n%s", step, got.allows, want.allows, got.fingerprint(), want.fingerprint())
		}
		// The differences from the previous plan, as the kernel's update
		// and the revocation check take them, match a walk of both.
		if prev != nil {
			if got.hasDiff && got.diffBase == prev.allowsSum {
				diffs++
			}
			del, add := allowsDiff(prev, got)
			wdel, wadd := diffSorted(prev.allows, got.allows, compareAllowElem)
			if !slices.Equal(del, wdel) || !slices.Equal(add, wadd) {
				t.Fatalf("step %d: allowsDiff = del %v add %v, want del %v add %v", step, del, add, wdel, wadd)
			}
			if g, w := revokesFrom(prev, got), revokes(prev.allows, got.allows); g != w {
				t.Fatalf("step %d: revokesFrom = %v, want %v (del %v)", step, g, w, del)
			}
		}
		prev = got
	}
	if diffs < 500 {
		t.Errorf("only %d of 2000 steps recorded their differences", diffs)
	}
	if incremental < 500 {
		t.Errorf("only %d of 2000 steps compiled incrementally", incremental)
	}
}

// TestRevokes: a change revokes when a port allowed before is not allowed
// after, whatever the merging did to the ranges.
func TestRevokes(t *testing.T) {
	elems := func(allows ...Allow) []allowElem {
		es, err := allowElems(allows)
		if err != nil {
			t.Fatal(err)
		}
		return mergeAllows(es)
	}
	x, y := addr("10.255.1.2"), addr("10.255.1.3")
	tests := []struct {
		name       string
		have, want []allowElem
		revokes    bool
	}{
		{"nothing", nil, nil, false},
		{"added", elems(Allow{x, 1, "tcp", 80, 80}), elems(Allow{x, 1, "tcp", 80, 80}, Allow{y, 1, "tcp", 80, 80}), false},
		{"range grown", elems(Allow{x, 1, "tcp", 80, 81}), elems(Allow{x, 1, "tcp", 79, 90}), false},
		{"adjacent merged", elems(Allow{x, 1, "tcp", 80, 80}), elems(Allow{x, 1, "tcp", 80, 80}, Allow{x, 1, "tcp", 81, 81}), false},
		{"removed", elems(Allow{x, 1, "tcp", 80, 80}, Allow{y, 1, "tcp", 80, 80}), elems(Allow{y, 1, "tcp", 80, 80}), true},
		{"range shrunk", elems(Allow{x, 1, "tcp", 80, 90}), elems(Allow{x, 1, "tcp", 80, 89}), true},
		{"range split", elems(Allow{x, 1, "tcp", 80, 90}), elems(Allow{x, 1, "tcp", 80, 84}, Allow{x, 1, "tcp", 86, 90}), true},
		{"other tag", elems(Allow{x, 1, "tcp", 80, 80}), elems(Allow{x, 2, "tcp", 80, 80}), true},
		{"other protocol", elems(Allow{x, 1, "tcp", 80, 80}), elems(Allow{x, 1, "udp", 80, 80}), true},
		{"all gone", elems(Allow{x, 1, "tcp", 80, 80}), nil, true},
	}
	for _, tt := range tests {
		if got := revokes(tt.have, tt.want); got != tt.revokes {
			t.Errorf("%s: revokes(%v, %v) = %v, want %v", tt.name, tt.have, tt.want, got, tt.revokes)
		}
	}
}
