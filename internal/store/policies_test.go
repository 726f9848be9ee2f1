package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// tcp is a policy from src to dst on TCP port.
func tcp(src, dst string, port int) Policy {
	return Policy{SourceApp: src, DestApp: dst, Protocol: "tcp", StartPort: port, EndPort: port}
}

// tagsByApp returns the assigned tags as app → tag.
func tagsByApp(t testing.TB, s *Store) map[string]uint16 {
	t.Helper()
	m := make(map[string]uint16)
	for _, tag := range must(s.Tags(t.Context()))(t) {
		m[tag.AppGUID] = tag.Tag
	}
	return m
}

func TestCreatePolicies(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *Store) {
		ctx := t.Context()
		f := newFixture(t, s)
		a := f.apps(t, "a", "b", "c")
		ps := []Policy{
			tcp(a["a"], a["b"], 8080),
			{SourceApp: a["b"], DestApp: a["c"], Protocol: "udp", StartPort: 53, EndPort: 54},
			tcp(a["a"], a["b"], 8080), // a duplicate in the batch
		}
		rev := revision(t, s)
		if err := s.CreatePolicies(ctx, ps, CreatePoliciesOptions{}); err != nil {
			t.Fatalf("CreatePolicies(%v) = %v, want nil", ps, err)
		}
		if got := revision(t, s); got != rev+1 {
			t.Errorf("CreatePolicies: revision %d → %d, want +1", rev, got)
		}
		want := []Policy{
			{SourceApp: a["a"], DestApp: a["b"], Protocol: "tcp", StartPort: 8080, EndPort: 8080, SourceTag: 1, DestTag: 2},
			{SourceApp: a["b"], DestApp: a["c"], Protocol: "udp", StartPort: 53, EndPort: 54, SourceTag: 2, DestTag: 3},
		}
		if diff := cmp.Diff(want, must(s.Policies(ctx, PolicyFilter{}))(t)); diff != "" {
			t.Errorf("Policies() (-want +got):\n%s", diff)
		}
		wantTags := []Tag{{a["a"], 1}, {a["b"], 2}, {a["c"], 3}}
		if diff := cmp.Diff(wantTags, must(s.Tags(ctx))(t)); diff != "" {
			t.Errorf("Tags() (-want +got):\n%s", diff)
		}

		// Idempotent: creating them again changes nothing, revision included.
		if err := s.CreatePolicies(ctx, ps[:2], CreatePoliciesOptions{MaxPerSource: 1}); err != nil {
			t.Errorf("CreatePolicies(%v) again = %v, want nil", ps[:2], err)
		}
		if got := revision(t, s); got != rev+1 {
			t.Errorf("CreatePolicies again: revision %d → %d, want unchanged", rev+1, got)
		}
		if diff := cmp.Diff(want, must(s.Policies(ctx, PolicyFilter{}))(t)); diff != "" {
			t.Errorf("Policies() after creating again (-want +got):\n%s", diff)
		}
		if err := s.CreatePolicies(ctx, nil, CreatePoliciesOptions{}); err != nil {
			t.Errorf("CreatePolicies(nil) = %v, want nil", err)
		}
	})
}

// TestCreatePoliciesAllOrNothing checks that a batch that fails changes
// nothing: no policy, no tag, no revision.
func TestCreatePoliciesAllOrNothing(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *Store) {
		ctx := t.Context()
		f := newFixture(t, s)
		a := f.apps(t, "a", "b", "c")
		o := f.appsIn(t, f.otherSpace.GUID, "x")
		if err := s.CreatePolicies(ctx, []Policy{tcp(a["a"], a["b"], 1), tcp(a["a"], a["b"], 2)}, CreatePoliciesOptions{}); err != nil {
			t.Fatal(err)
		}
		const missing = "00000000-0000-4000-8000-000000000000"
		tests := []struct {
			name    string
			ps      []Policy
			o       CreatePoliciesOptions
			wantErr error
		}{
			{"unknown destination", []Policy{tcp(a["b"], a["c"], 80), tcp(a["c"], missing, 80)}, CreatePoliciesOptions{}, ErrAppNotFound},
			{"unknown source", []Policy{tcp(missing, a["c"], 80), tcp(a["b"], a["c"], 80)}, CreatePoliciesOptions{}, ErrAppNotFound},
			{"destination outside the spaces", []Policy{tcp(a["b"], a["c"], 80), tcp(a["c"], o["x"], 80)},
				CreatePoliciesOptions{SpaceGUIDs: []string{f.space.GUID}}, ErrAppNotFound},
			{"source outside the spaces", []Policy{tcp(o["x"], a["c"], 80)},
				CreatePoliciesOptions{SpaceGUIDs: []string{f.space.GUID}}, ErrAppNotFound},
			{"quota", []Policy{tcp(a["b"], a["c"], 80), tcp(a["a"], a["c"], 80)},
				CreatePoliciesOptions{MaxPerSource: 2}, ErrQuotaExceeded},
			{"quota in the batch", []Policy{tcp(a["c"], a["a"], 1), tcp(a["c"], a["a"], 2), tcp(a["c"], a["a"], 3)},
				CreatePoliciesOptions{MaxPerSource: 2}, ErrQuotaExceeded},
		}
		before := must(s.Policies(ctx, PolicyFilter{}))(t)
		beforeTags := must(s.Tags(ctx))(t)
		rev := revision(t, s)
		for _, tt := range tests {
			if err := s.CreatePolicies(ctx, tt.ps, tt.o); !errors.Is(err, tt.wantErr) {
				t.Errorf("%s: CreatePolicies(%v, %+v) = %v, want %v", tt.name, tt.ps, tt.o, err, tt.wantErr)
			}
			if diff := cmp.Diff(before, must(s.Policies(ctx, PolicyFilter{}))(t)); diff != "" {
				t.Errorf("%s: Policies() changed (-before +after):\n%s", tt.name, diff)
			}
			if diff := cmp.Diff(beforeTags, must(s.Tags(ctx))(t)); diff != "" {
				t.Errorf("%s: Tags() changed (-before +after):\n%s", tt.name, diff)
			}
			if got := revision(t, s); got != rev {
				t.Errorf("%s: revision %d → %d, want unchanged", tt.name, rev, got)
			}
		}

		// Within the quota and the spaces, the same batches succeed.
		ok := []struct {
			ps []Policy
			o  CreatePoliciesOptions
		}{
			{[]Policy{tcp(a["a"], a["b"], 2), tcp(a["b"], a["c"], 80)}, CreatePoliciesOptions{MaxPerSource: 2, SpaceGUIDs: []string{f.space.GUID}}},
			{[]Policy{tcp(a["c"], o["x"], 80)}, CreatePoliciesOptions{MaxPerSource: 1, SpaceGUIDs: []string{f.space.GUID, f.otherSpace.GUID}}},
		}
		for _, tt := range ok {
			if err := s.CreatePolicies(ctx, tt.ps, tt.o); err != nil {
				t.Errorf("CreatePolicies(%v, %+v) = %v, want nil", tt.ps, tt.o, err)
			}
		}
	})
}

func TestTags(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *Store) {
		ctx := t.Context()
		s.tagQuarantine = 0 // freed tags are reused at once: TestTagQuarantine tests the quarantine
		f := newFixture(t, s)
		a := f.apps(t, "a", "b", "c", "d", "e")
		create := func(ps ...Policy) {
			t.Helper()
			if err := s.CreatePolicies(ctx, ps, CreatePoliciesOptions{}); err != nil {
				t.Fatalf("CreatePolicies(%v) = %v", ps, err)
			}
		}
		del := func(ps ...Policy) {
			t.Helper()
			if _, err := s.DeletePolicies(ctx, ps, nil); err != nil {
				t.Fatalf("DeletePolicies(%v) = %v", ps, err)
			}
		}
		steps := []struct {
			name string
			do   func()
			want map[string]uint16 // app name → tag
		}{
			{"a→b", func() { create(tcp(a["a"], a["b"], 80)) }, map[string]uint16{"a": 1, "b": 2}},
			{"c→d", func() { create(tcp(a["c"], a["d"], 80)) }, map[string]uint16{"a": 1, "b": 2, "c": 3, "d": 4}},
			{"a→b again, on another port", func() { create(tcp(a["a"], a["b"], 81)) }, map[string]uint16{"a": 1, "b": 2, "c": 3, "d": 4}},
			{"delete a→b:80, a and b keep a policy", func() { del(tcp(a["a"], a["b"], 80)) }, map[string]uint16{"a": 1, "b": 2, "c": 3, "d": 4}},
			{"delete a→b:81 frees 1 and 2", func() { del(tcp(a["a"], a["b"], 81)) }, map[string]uint16{"c": 3, "d": 4}},
			{"e→c takes the lowest free tag", func() { create(tcp(a["e"], a["c"], 80)) }, map[string]uint16{"c": 3, "d": 4, "e": 1}},
			{"b→b takes the next", func() { create(tcp(a["b"], a["b"], 80)) }, map[string]uint16{"b": 2, "c": 3, "d": 4, "e": 1}},
			{"delete c→d frees only d", func() { del(tcp(a["c"], a["d"], 80)) }, map[string]uint16{"b": 2, "c": 3, "e": 1}},
			{"d→a", func() { create(tcp(a["d"], a["a"], 80)) }, map[string]uint16{"b": 2, "c": 3, "e": 1, "d": 4, "a": 5}},
		}
		for _, step := range steps {
			step.do()
			if diff := cmp.Diff(step.want, tagsByName(t, s, a)); diff != "" {
				t.Errorf("after %s: tags (-want +got):\n%s", step.name, diff)
			}
		}
	})
}

// TestTagQuarantine checks that a freed tag (of an app left in no policy,
// or deleted) goes to no other app until TagQuarantine has passed, so that a
// cell still applying the old app's rules never applies them to a new one.
func TestTagQuarantine(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *Store) {
		ctx := t.Context()
		f := newFixture(t, s)
		a := f.apps(t, "a", "b", "c", "d", "e", "f", "g")
		create := func(p Policy) {
			t.Helper()
			if err := s.CreatePolicies(ctx, []Policy{p}, CreatePoliciesOptions{}); err != nil {
				t.Fatalf("CreatePolicies(%v) = %v", p, err)
			}
		}
		// freedAgo makes every freed tag look freed d ago.
		freedAgo := func(d time.Duration) {
			t.Helper()
			if _, err := s.r().exec(ctx, "UPDATE tags SET freed_at = ? WHERE freed_at IS NOT NULL", micros(now().Add(-d))); err != nil {
				t.Fatal(err)
			}
		}
		steps := []struct {
			name string
			do   func()
			want map[string]uint16 // app name → tag
		}{
			{"a→b", func() { create(tcp(a["a"], a["b"], 80)) }, map[string]uint16{"a": 1, "b": 2}},
			{"delete a→b frees 1 and 2", func() {
				if _, err := s.DeletePolicies(ctx, []Policy{tcp(a["a"], a["b"], 80)}, nil); err != nil {
					t.Fatal(err)
				}
			}, map[string]uint16{}},
			{"c→d does not get the quarantined 1 and 2", func() { create(tcp(a["c"], a["d"], 80)) }, map[string]uint16{"c": 3, "d": 4}},
			{"deleting c frees 3 and 4", func() {
				if err := s.DeleteApp(ctx, a["c"]); err != nil {
					t.Fatal(err)
				}
			}, map[string]uint16{}},
			{"e→f after a deletion", func() { create(tcp(a["e"], a["f"], 80)) }, map[string]uint16{"e": 5, "f": 6}},
			{"a minute before the quarantine ends", func() {
				freedAgo(TagQuarantine - time.Minute)
				create(tcp(a["g"], a["e"], 80))
			}, map[string]uint16{"e": 5, "f": 6, "g": 7}},
			{"once the quarantine has passed, the lowest freed tag is given again", func() {
				freedAgo(TagQuarantine + time.Second)
				create(tcp(a["b"], a["e"], 80))
			}, map[string]uint16{"b": 1, "e": 5, "f": 6, "g": 7}},
		}
		for _, step := range steps {
			step.do()
			if diff := cmp.Diff(step.want, tagsByName(t, s, a)); diff != "" {
				t.Errorf("after %s: tags (-want +got):\n%s", step.name, diff)
			}
		}
	})
}

func TestTagsExhausted(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *Store) {
		ctx := t.Context()
		s.maxTag = 3 // as if tags 4…65535 were taken
		s.tagQuarantine = 0
		f := newFixture(t, s)
		a := f.apps(t, "a", "b", "c", "d")
		if err := s.CreatePolicies(ctx, []Policy{tcp(a["a"], a["b"], 80)}, CreatePoliciesOptions{}); err != nil {
			t.Fatal(err)
		}
		rev := revision(t, s)
		ps := []Policy{tcp(a["c"], a["d"], 80)}
		if err := s.CreatePolicies(ctx, ps, CreatePoliciesOptions{}); !errors.Is(err, ErrTagsExhausted) {
			t.Errorf("CreatePolicies(%v) with 1 tag free for 2 apps = %v, want %v", ps, err, ErrTagsExhausted)
		}
		if got := revision(t, s); got != rev {
			t.Errorf("failed CreatePolicies: revision %d → %d, want unchanged", rev, got)
		}
		if got := must(s.Counts(ctx))(t); got.Policies != 1 || got.Tags != 2 {
			t.Errorf("after failed CreatePolicies: Counts() = %+v, want 1 policy, 2 tags", got)
		}
		// An app that has a tag needs no new one.
		ps = []Policy{tcp(a["b"], a["c"], 80)}
		if err := s.CreatePolicies(ctx, ps, CreatePoliciesOptions{}); err != nil {
			t.Errorf("CreatePolicies(%v) with 1 tag free for 1 app = %v, want nil", ps, err)
		}
		if n, err := s.DeletePolicies(ctx, []Policy{tcp(a["a"], a["b"], 80)}, nil); n != 1 || err != nil {
			t.Fatalf("DeletePolicies(a→b) = %d, %v, want 1, nil", n, err)
		}
		ps = []Policy{tcp(a["d"], a["c"], 80)}
		if err := s.CreatePolicies(ctx, ps, CreatePoliciesOptions{}); err != nil {
			t.Errorf("CreatePolicies(%v) once a's tag is free = %v, want nil", ps, err)
		}
		want := map[string]uint16{a["d"]: 1, a["b"]: 2, a["c"]: 3}
		if diff := cmp.Diff(want, tagsByApp(t, s)); diff != "" {
			t.Errorf("Tags() (-want +got):\n%s", diff)
		}
	})
}

func TestDeletePolicies(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *Store) {
		ctx := t.Context()
		f := newFixture(t, s)
		a := f.apps(t, "a", "b")
		o := f.appsIn(t, f.otherSpace.GUID, "x")
		all := []Policy{tcp(a["a"], a["b"], 1), tcp(a["a"], a["b"], 2), tcp(a["b"], o["x"], 3)}
		if err := s.CreatePolicies(ctx, all, CreatePoliciesOptions{}); err != nil {
			t.Fatal(err)
		}
		tests := []struct {
			name   string
			ps     []Policy
			spaces []string
			want   int
			left   int
		}{
			{"none", nil, nil, 0, 3},
			{"unknown", []Policy{tcp(a["b"], a["a"], 1), tcp("nope", a["a"], 1)}, nil, 0, 3},
			{"other port", []Policy{{SourceApp: a["a"], DestApp: a["b"], Protocol: "tcp", StartPort: 1, EndPort: 2}}, nil, 0, 3},
			{"udp", []Policy{{SourceApp: a["a"], DestApp: a["b"], Protocol: "udp", StartPort: 1, EndPort: 1}}, nil, 0, 3},
			{"outside the spaces", []Policy{all[2]}, []string{f.space.GUID}, 0, 3},
			{"in and outside the spaces", []Policy{all[2], all[0]}, []string{f.space.GUID}, 1, 2},
			{"twice", []Policy{all[1], all[1]}, nil, 1, 1},
			{"all", all, []string{f.space.GUID, f.otherSpace.GUID}, 1, 0},
		}
		for _, tt := range tests {
			rev := revision(t, s)
			n, err := s.DeletePolicies(ctx, tt.ps, tt.spaces)
			if n != tt.want || err != nil {
				t.Errorf("%s: DeletePolicies(%v, %v) = %d, %v, want %d, nil", tt.name, tt.ps, tt.spaces, n, err, tt.want)
			}
			wantRev := rev
			if tt.want > 0 {
				wantRev++
			}
			if got := revision(t, s); got != wantRev {
				t.Errorf("%s: revision %d → %d, want %d", tt.name, rev, got, wantRev)
			}
			if c := must(s.Counts(ctx))(t); c.Policies != int64(tt.left) {
				t.Errorf("%s: %d policies left, want %d", tt.name, c.Policies, tt.left)
			}
		}
		if tags := must(s.Tags(ctx))(t); len(tags) != 0 {
			t.Errorf("Tags() with no policies = %v, want none", tags)
		}
	})
}

func TestPolicyFilters(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *Store) {
		ctx := t.Context()
		f := newFixture(t, s)
		a := f.apps(t, "a", "b", "c")
		o := f.appsIn(t, f.otherSpace.GUID, "x")
		// Policies by name, for readable tables: "a>b".
		byName := map[string]Policy{
			"a>b": tcp(a["a"], a["b"], 80),
			"b>c": tcp(a["b"], a["c"], 80),
			"c>a": tcp(a["c"], a["a"], 80),
			"a>x": tcp(a["a"], o["x"], 80),
			"x>x": tcp(o["x"], o["x"], 80),
		}
		order := []string{"a>b", "b>c", "c>a", "a>x", "x>x"}
		for _, name := range order {
			if err := s.CreatePolicies(ctx, []Policy{byName[name]}, CreatePoliciesOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		names := func(ps []Policy) []string {
			var out []string
			for _, p := range ps {
				for name, q := range byName {
					if p.SourceApp == q.SourceApp && p.DestApp == q.DestApp {
						out = append(out, name)
					}
				}
			}
			return out
		}
		long := make([]string, 40000) // more than SQLite's 32766 parameters
		for i := range long {
			long[i] = fmt.Sprintf("00000000-0000-4000-8000-%012d", i)
		}
		long = append(long, a["c"])
		tests := []struct {
			f    PolicyFilter
			want []string
		}{
			{PolicyFilter{}, order},
			{PolicyFilter{IDs: []string{a["a"]}}, []string{"a>b", "c>a", "a>x"}},
			{PolicyFilter{IDs: []string{a["a"], o["x"]}}, []string{"a>b", "c>a", "a>x", "x>x"}},
			{PolicyFilter{SourceIDs: []string{a["a"]}}, []string{"a>b", "a>x"}},
			{PolicyFilter{DestIDs: []string{a["a"], a["b"]}}, []string{"a>b", "c>a"}},
			{PolicyFilter{SourceIDs: []string{a["a"]}, DestIDs: []string{o["x"]}}, []string{"a>x"}},
			{PolicyFilter{IDs: []string{a["b"]}, SourceIDs: []string{a["a"], a["c"]}}, []string{"a>b"}},
			{PolicyFilter{SpaceGUIDs: []string{f.space.GUID}}, []string{"a>b", "b>c", "c>a"}},
			{PolicyFilter{SpaceGUIDs: []string{f.otherSpace.GUID}}, []string{"x>x"}},
			{PolicyFilter{SpaceGUIDs: []string{f.space.GUID, f.otherSpace.GUID}}, order},
			{PolicyFilter{IDs: []string{a["a"]}, SpaceGUIDs: []string{f.space.GUID}}, []string{"a>b", "c>a"}},
			{PolicyFilter{IDs: []string{"nope"}}, nil},
			{PolicyFilter{IDs: long}, []string{"b>c", "c>a"}},
			{PolicyFilter{SourceIDs: long, DestIDs: long}, nil},
		}
		for _, tt := range tests {
			got := names(must(s.Policies(ctx, tt.f))(t))
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Policies(%.200v) (-want +got):\n%s", tt.f, diff)
			}
		}
	})
}

func TestDeleteApp(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *Store) {
		ctx := t.Context()
		s.tagQuarantine = 0 // a freed tag is reused at once
		f := newFixture(t, s)
		a := f.apps(t, "a", "b", "c", "d")
		only := must(s.CreateRoute(ctx, f.space.GUID, f.domain.GUID, "only-a"))(t)
		shared := must(s.CreateRoute(ctx, f.space.GUID, f.domain.GUID, "shared"))(t)
		empty := must(s.CreateRoute(ctx, f.space.GUID, f.domain.GUID, "empty"))(t)
		must(s.AddRouteDestinations(ctx, only.GUID, []string{a["a"]}))(t)
		must(s.AddRouteDestinations(ctx, shared.GUID, []string{a["a"], a["b"]}))(t)
		ps := []Policy{tcp(a["a"], a["b"], 80), tcp(a["b"], a["c"], 80), tcp(a["c"], a["a"], 80), tcp(a["a"], a["d"], 80), tcp(a["a"], a["a"], 80)}
		if err := s.CreatePolicies(ctx, ps, CreatePoliciesOptions{}); err != nil {
			t.Fatal(err)
		}

		rev := revision(t, s)
		if err := s.DeleteApp(ctx, a["a"]); err != nil {
			t.Fatalf("DeleteApp(a) = %v", err)
		}
		if got := revision(t, s); got != rev+1 {
			t.Errorf("DeleteApp(a): revision %d → %d, want +1", rev, got)
		}
		if apps := must(s.Apps(ctx, AppFilter{GUIDs: []string{a["a"]}}))(t); len(apps) != 0 {
			t.Errorf("Apps(a) after DeleteApp(a) = %v, want none", apps)
		}
		wantRoutes := []Route{
			{GUID: empty.GUID, Host: "empty", DomainGUID: f.domain.GUID, SpaceGUID: f.space.GUID, DomainName: DefaultDomain},
			{GUID: shared.GUID, Host: "shared", DomainGUID: f.domain.GUID, SpaceGUID: f.space.GUID, DomainName: DefaultDomain, AppGUIDs: []string{a["b"]}},
		}
		if diff := cmp.Diff(wantRoutes, must(s.Routes(ctx, RouteFilter{}))(t), cmpopts.IgnoreFields(Route{}, "CreatedAt", "UpdatedAt")); diff != "" {
			t.Errorf("Routes() after DeleteApp(a) (-want +got):\n%s", diff)
		}
		wantPolicies := []Policy{{SourceApp: a["b"], DestApp: a["c"], Protocol: "tcp", StartPort: 80, EndPort: 80, SourceTag: 2, DestTag: 3}}
		if diff := cmp.Diff(wantPolicies, must(s.Policies(ctx, PolicyFilter{}))(t)); diff != "" {
			t.Errorf("Policies() after DeleteApp(a) (-want +got):\n%s", diff)
		}
		// a's tag and d's (in no policy now) are free; the next app gets 1.
		if diff := cmp.Diff(map[string]uint16{a["b"]: 2, a["c"]: 3}, tagsByApp(t, s)); diff != "" {
			t.Errorf("Tags() after DeleteApp(a) (-want +got):\n%s", diff)
		}
		if err := s.CreatePolicies(ctx, []Policy{tcp(a["d"], a["b"], 80)}, CreatePoliciesOptions{}); err != nil {
			t.Fatal(err)
		}
		if got := tagsByApp(t, s)[a["d"]]; got != 1 {
			t.Errorf("tag of d after DeleteApp(a) = %d, want 1", got)
		}
		if err := s.DeleteApp(ctx, a["a"]); !errors.Is(err, ErrNotFound) {
			t.Errorf("DeleteApp(a) again = %v, want %v", err, ErrNotFound)
		}
		want := Counts{Orgs: 1, Spaces: 2, Apps: 3, Domains: 1, Routes: 2, Policies: 2, Tags: 3}
		if got := must(s.Counts(ctx))(t); got != want {
			t.Errorf("Counts() = %+v, want %+v", got, want)
		}
	})
}

// TestRevision walks through every mutation and checks that each effective
// one bumps the revision by exactly one and each no-op leaves it, then
// reopens the store and checks that revision and tags carry on.
func TestRevision(t *testing.T) {
	forEachEngine(t, func(t *testing.T, url string) {
		ctx := t.Context()
		s := openStore(t, url)
		s.tagQuarantine = 0 // freed tags are reused at once
		f := newFixture(t, s)
		a := f.apps(t, "a", "b")
		var route Route
		var app App
		steps := []struct {
			name  string
			do    func() error
			delta int64
		}{
			{"CreateOrg", func() error { _, err := s.CreateOrg(ctx, "o"); return err }, 1},
			{"CreateSpace", func() error { _, err := s.CreateSpace(ctx, f.org.GUID, "s"); return err }, 1},
			{"CreateApp", func() (err error) { app, err = s.CreateApp(ctx, f.space.GUID, "c"); return err }, 1},
			{"CreateDomain", func() error { _, err := s.CreateDomain(ctx, "example.com", false); return err }, 1},
			{"CreateRoute", func() (err error) { route, err = s.CreateRoute(ctx, f.space.GUID, f.domain.GUID, "r"); return err }, 1},
			{"AddRouteDestinations", func() error {
				_, err := s.AddRouteDestinations(ctx, route.GUID, []string{app.GUID, a["a"]})
				return err
			}, 1},
			{"AddRouteDestinations again", func() error { _, err := s.AddRouteDestinations(ctx, route.GUID, []string{a["a"]}); return err }, 0},
			{"AddRouteDestinations of none", func() error { _, err := s.AddRouteDestinations(ctx, route.GUID, nil); return err }, 0},
			{"RemoveRouteDestination", func() error { return s.RemoveRouteDestination(ctx, route.GUID, a["a"]) }, 1},
			{"CreatePolicies", func() error {
				return s.CreatePolicies(ctx, []Policy{tcp(a["a"], a["b"], 80), tcp(app.GUID, a["b"], 80)}, CreatePoliciesOptions{})
			}, 1},
			{"CreatePolicies again", func() error { return s.CreatePolicies(ctx, []Policy{tcp(a["a"], a["b"], 80)}, CreatePoliciesOptions{}) }, 0},
			{"DeletePolicies of none", func() error { _, err := s.DeletePolicies(ctx, []Policy{tcp(a["b"], a["a"], 80)}, nil); return err }, 0},
			{"DeletePolicies", func() error { _, err := s.DeletePolicies(ctx, []Policy{tcp(a["a"], a["b"], 80)}, nil); return err }, 1},
			{"DeleteApp", func() error { return s.DeleteApp(ctx, app.GUID) }, 1}, // and its route and policy
			{"DeleteRoute", func() error {
				r := must(s.CreateRoute(ctx, f.space.GUID, f.domain.GUID, "gone"))(t)
				return s.DeleteRoute(ctx, r.GUID)
			}, 2},
			// Tokens are no cell's state: they do not wake cells.
			{"CreateToken", func() error {
				_, err := s.CreateToken(ctx, Token{Name: "t", Scope: "network.admin"}, []byte("hash"))
				return err
			}, 0},
		}
		for _, step := range steps {
			rev := revision(t, s)
			if err := step.do(); err != nil {
				t.Fatalf("%s = %v", step.name, err)
			}
			if got := revision(t, s); got != rev+step.delta {
				t.Errorf("%s: revision %d → %d, want +%d", step.name, rev, got, step.delta)
			}
		}
		if err := s.CreatePolicies(ctx, []Policy{tcp(a["b"], a["a"], 80)}, CreatePoliciesOptions{}); err != nil {
			t.Fatal(err)
		}
		rev := revision(t, s)
		tags := must(s.Tags(ctx))(t)
		s.Close()

		s = openStore(t, url)
		s.tagQuarantine = 0
		if got := revision(t, s); got != rev {
			t.Errorf("Revision() after reopening = %d, want %d", got, rev)
		}
		if diff := cmp.Diff(tags, must(s.Tags(ctx))(t)); diff != "" {
			t.Errorf("Tags() after reopening (-before +after):\n%s", diff)
		}
		c := must(s.CreateApp(ctx, f.space.GUID, "after"))(t)
		if err := s.CreatePolicies(ctx, []Policy{tcp(c.GUID, a["a"], 80)}, CreatePoliciesOptions{}); err != nil {
			t.Fatal(err)
		}
		if got := revision(t, s); got != rev+2 {
			t.Errorf("Revision() after two mutations on the reopened store = %d, want %d", got, rev+2)
		}
		// b and a hold 1 and 2 (a→b was deleted, then b→a created).
		if got := tagsByApp(t, s)[c.GUID]; got != 3 {
			t.Errorf("tag of a new app after reopening = %d, want 3", got)
		}
	})
}

// TestConcurrentCreatePolicies creates policies from many goroutines through
// two Stores on one database, as two controllers would, and checks that no
// tag is handed out twice and every creation bumped the revision once.
func TestConcurrentCreatePolicies(t *testing.T) {
	forEachEngine(t, func(t *testing.T, url string) {
		ctx := t.Context()
		stores := []*Store{openStore(t, url), openStore(t, url)}
		f := newFixture(t, stores[0])
		const workers, perWorker = 8, 10
		hub := f.apps(t, "hub")["hub"] // in every worker's policies
		var names []string
		for i := range workers * perWorker {
			names = append(names, fmt.Sprintf("app-%d", i))
		}
		apps := f.apps(t, names...)
		rev := revision(t, stores[0])

		var wg sync.WaitGroup
		errs := make(chan error, workers*perWorker)
		for w := range workers {
			s := stores[w%len(stores)]
			wg.Go(func() {
				for i := range perWorker {
					app := apps[fmt.Sprintf("app-%d", w*perWorker+i)]
					ps := []Policy{tcp(app, hub, 8080), tcp(hub, app, 9090)}
					if err := s.CreatePolicies(context.WithoutCancel(ctx), ps, CreatePoliciesOptions{}); err != nil {
						errs <- fmt.Errorf("CreatePolicies(%v) = %w", ps, err)
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}

		const n = workers*perWorker + 1
		tags := must(stores[1].Tags(ctx))(t)
		if len(tags) != n {
			t.Fatalf("Tags() has %d tags, want %d", len(tags), n)
		}
		seen := make(map[string]bool)
		for i, tag := range tags {
			if int(tag.Tag) != i+1 || seen[tag.AppGUID] {
				t.Errorf("Tags()[%d] = %v, want tags 1…%d each for one app", i, tag, n)
			}
			seen[tag.AppGUID] = true
		}
		if got := revision(t, stores[1]); got != rev+workers*perWorker {
			t.Errorf("revision %d → %d, want +%d", rev, got, workers*perWorker)
		}
		if c := must(stores[0].Counts(ctx))(t); c.Policies != 2*workers*perWorker {
			t.Errorf("Counts().Policies = %d, want %d", c.Policies, 2*workers*perWorker)
		}
	})
}

// tagsByName is the tag of each app of a (name → GUID) that has one.
func tagsByName(t *testing.T, s *Store, a map[string]string) map[string]uint16 {
	t.Helper()
	byApp := tagsByApp(t, s)
	got := make(map[string]uint16)
	for name, guid := range a {
		if tag, ok := byApp[guid]; ok {
			got[name] = tag
		}
	}
	return got
}
