package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// randomValue fills v (settable) with random data by its type, field by
// field: every field of CellState, present and future, takes part.
func randomValue(r *rand.Rand, v reflect.Value, depth int) {
	switch v.Type() {
	case reflect.TypeFor[netip.Addr]():
		v.Set(reflect.ValueOf(netip.AddrFrom4([4]byte{10, 255, byte(r.IntN(3)), byte(r.IntN(8))})))
		return
	case reflect.TypeFor[netip.Prefix]():
		v.Set(reflect.ValueOf(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 255, byte(r.IntN(4)), 0}), 24)))
		return
	case reflect.TypeFor[time.Time]():
		v.Set(reflect.ValueOf(time.Unix(int64(r.IntN(3)), 0).UTC()))
		return
	}
	switch v.Kind() {
	case reflect.Bool:
		v.SetBool(r.IntN(2) == 0)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(int64(r.IntN(4)))
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(uint64(r.IntN(4)))
	case reflect.String:
		v.SetString([]string{"a", "b", "c", "tcp", "udp"}[r.IntN(5)])
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				randomValue(r, v.Field(i), depth)
			}
		}
	case reflect.Pointer:
		if r.IntN(2) == 0 {
			p := reflect.New(v.Type().Elem())
			randomValue(r, p.Elem(), depth)
			v.Set(p)
		} else {
			v.SetZero()
		}
	case reflect.Slice:
		switch k := r.IntN(8); {
		case k == 0 || depth > 1:
			v.SetZero()
		default:
			s := reflect.MakeSlice(v.Type(), k-1, k-1)
			for i := range s.Len() {
				randomValue(r, s.Index(i), depth+1)
			}
			v.Set(s)
		}
	case reflect.Map:
		if r.IntN(2) == 0 {
			v.SetZero()
			return
		}
		m := reflect.MakeMap(v.Type())
		for range r.IntN(3) {
			k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
			randomValue(r, k, depth+1)
			randomValue(r, e, depth+1)
			m.SetMapIndex(k, e)
		}
		v.Set(m)
	default:
		panic(fmt.Sprintf("randomValue: no generator for %v", v.Type()))
	}
}

// mutate changes st a little: a few entries of its lists inserted,
// removed or changed, now and then a scalar field.
func mutate(r *rand.Rand, st *CellState) {
	v := reflect.ValueOf(st).Elem()
	for _, f := range stateFields {
		fv := v.Field(f.index)
		if r.IntN(3) != 0 {
			continue
		}
		if !f.list {
			randomValue(r, fv, 0)
			continue
		}
		s := reflect.MakeSlice(fv.Type(), 0, fv.Len()+2)
		s = reflect.AppendSlice(s, fv) // a copy: the old state keeps its own
		for range r.IntN(3) + 1 {
			e := reflect.New(fv.Type().Elem()).Elem()
			randomValue(r, e, 1)
			switch op := r.IntN(4); {
			case op == 0 && s.Len() > 0: // remove
				i := r.IntN(s.Len())
				s = reflect.AppendSlice(s.Slice(0, i), s.Slice(i+1, s.Len()))
			case op == 1 && s.Len() > 0: // change
				s.Index(r.IntN(s.Len())).Set(e)
			default: // insert
				i := r.IntN(s.Len() + 1)
				tail := reflect.AppendSlice(reflect.MakeSlice(fv.Type(), 0, s.Len()-i), s.Slice(i, s.Len()))
				s = reflect.AppendSlice(reflect.Append(s.Slice(0, i), e), tail)
			}
		}
		if r.IntN(10) == 0 {
			s = reflect.Zero(fv.Type()) // became nil
		}
		fv.Set(s)
	}
}

func roundTrip[T any](t *testing.T, v T) T {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out T
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	return out
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDeltaApplyDiff: for random states and random walks of small changes
// (and now and then an unrelated state), the state an agent holds after
// applying each delta, every piece through JSON as on the wire, encodes
// exactly as the controller's new state.
func TestDeltaApplyDiff(t *testing.T) {
	edits := 0 // deltas with a list's edit script
	for seed := range uint64(200) {
		r := rand.New(rand.NewPCG(seed, 13))
		var ctrl CellState
		randomValue(r, reflect.ValueOf(&ctrl).Elem(), 0)
		ctrl.Revision = 1
		agent := roundTrip(t, ctrl)
		for step := range 30 {
			next := ctrl
			if r.IntN(15) == 0 {
				next = CellState{}
				randomValue(r, reflect.ValueOf(&next).Elem(), 0)
			} else {
				mutate(r, &next)
			}
			next.Revision = ctrl.Revision + 1 + int64(r.IntN(3))
			d, err := Diff(&ctrl, &next)
			if err != nil {
				t.Fatal(err)
			}
			got, err := agent.Apply(roundTrip(t, d))
			if err != nil {
				t.Fatalf("seed %d step %d: Apply(Diff) = %v\nold %s\nnew %s\ndelta %s", seed, step, err,
					mustJSON(t, ctrl), mustJSON(t, next), mustJSON(t, d))
			}
			if g, w := mustJSON(t, got), mustJSON(t, next); !bytes.Equal(g, w) {
				t.Fatalf("seed %d step %d: Apply(Diff(old, new)) =\n%s\nwant\n%s\nold %s\ndelta %s", seed, step, g, w, mustJSON(t, ctrl), mustJSON(t, d))
			}
			if len(d.Lists) > 0 {
				edits++
			}
			ctrl, agent = next, got
		}
	}
	if edits < 1000 {
		t.Errorf("%d of 6,000 deltas had an edit script: the walk does not test them", edits)
	}
}

// TestDeltaCostsWhatChanged: one endpoint added to a thousand, and one
// route changed, make a delta of a few hundred bytes; the same state
// again is an empty delta.
func TestDeltaCostsWhatChanged(t *testing.T) {
	old := CellState{Revision: 7, Enforce: true}
	for i := range 1000 {
		old.Endpoints = append(old.Endpoints, Endpoint{IP: netip.AddrFrom4([4]byte{10, 255, byte(i / 250), byte(i % 250)}),
			Instance: fmt.Sprintf("i-%04d", i), AppGUID: fmt.Sprintf("app-%04d", i), AppName: "n", CellGUID: "c"})
		old.Routes = append(old.Routes, RouteEntry{Host: fmt.Sprintf("h%04d", i), Domain: "apps.internal", AppGUIDs: []string{fmt.Sprintf("app-%04d", i)}})
	}
	next := old
	next.Revision = 9
	next.Endpoints = slices.Insert(slices.Clone(old.Endpoints), 500, Endpoint{IP: netip.MustParseAddr("10.255.9.9"), Instance: "new", AppGUID: "app-new"})
	next.Routes = slices.Clone(old.Routes)
	next.Routes[10].AppGUIDs = []string{"app-0010", "app-new"}
	d, err := Diff(&old, &next)
	if err != nil {
		t.Fatal(err)
	}
	b := mustJSON(t, d)
	if full := mustJSON(t, next); len(b) > 600 {
		t.Errorf("Diff of one endpoint and one route = %d bytes (whole state %d): %s", len(b), len(full), b)
	}
	if len(d.Fields) != 0 || len(d.Lists) != 2 {
		t.Errorf("Diff = %s, want the lists endpoints and routes only", b)
	}
	got, err := old.Apply(d)
	if err != nil || !bytes.Equal(mustJSON(t, got), mustJSON(t, next)) {
		t.Errorf("Apply(Diff) = %v, want the new state", err)
	}
	same, err := Diff(&next, &next)
	if err != nil || !same.Empty() || same.Base != 9 || same.Revision != 9 {
		t.Errorf("Diff(st, st) = %+v, %v; want an empty delta from 9 to 9", same, err)
	}
}

// TestDeltaApplyRefuses: a delta from another revision, or one whose
// edits do not fit the state, fails and leaves the state as it was.
func TestDeltaApplyRefuses(t *testing.T) {
	st := CellState{Revision: 5, Domains: []string{"a", "b"}}
	for _, tc := range []struct {
		name string
		d    CellDelta
		want string
	}{
		{"other base", CellDelta{Base: 4, Revision: 6}, "from revision 4 applied to revision 5"},
		{"short", CellDelta{Base: 5, Revision: 6, Lists: map[string][]ListEdit{"domains": {{Keep: 1}}}}, "cover 1 of 2"},
		{"long", CellDelta{Base: 5, Revision: 6, Lists: map[string][]ListEdit{"domains": {{Keep: 2, Drop: 1}}}}, "out of range"},
		{"negative", CellDelta{Base: 5, Revision: 6, Lists: map[string][]ListEdit{"domains": {{Keep: -1}}}}, "out of range"},
		{"bad put", CellDelta{Base: 5, Revision: 6, Lists: map[string][]ListEdit{"domains": {{Keep: 2, Put: json.RawMessage(`[1]`)}}}}, "put at entry 2"},
		{"not a list", CellDelta{Base: 5, Revision: 6, Lists: map[string][]ListEdit{"enforce": {{Keep: 0}}}}, "not a list"},
		{"bad field", CellDelta{Base: 5, Revision: 6, Fields: map[string]json.RawMessage{"enforce": json.RawMessage(`"x"`)}}, "delta field enforce"},
	} {
		_, err := st.Apply(tc.d)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Apply = %v, want an error with %q", tc.name, err, tc.want)
		}
	}
	if st.Revision != 5 || !slices.Equal(st.Domains, []string{"a", "b"}) {
		t.Errorf("the state changed: %+v", st)
	}
}

// BenchmarkDiff: the delta of a state of 1,000 endpoints and 1,000 routes
// (fresh slices, as after a refresh of the shared parts) with one endpoint
// added, and its Apply.
//
//	go test -run '^$' -bench Diff ./internal/api/
func BenchmarkDiff(b *testing.B) {
	old := CellState{Revision: 1}
	for i := range 1000 {
		old.Endpoints = append(old.Endpoints, Endpoint{IP: netip.AddrFrom4([4]byte{10, 255, byte(i / 250), byte(i % 250)}),
			Instance: fmt.Sprintf("i-%04d", i), AppGUID: fmt.Sprintf("app-%04d", i), CellGUID: "c"})
		old.Routes = append(old.Routes, RouteEntry{Host: fmt.Sprintf("h%04d", i), Domain: "apps.internal", AppGUIDs: []string{fmt.Sprintf("app-%04d", i)}})
	}
	next := old
	next.Revision = 2
	next.Endpoints = slices.Insert(slices.Clone(old.Endpoints), 500, Endpoint{IP: netip.MustParseAddr("10.255.9.9"), Instance: "new"})
	next.Routes = slices.Clone(old.Routes)
	b.Run("diff", func(b *testing.B) {
		for b.Loop() {
			if _, err := Diff(&old, &next); err != nil {
				b.Fatal(err)
			}
		}
	})
	d, _ := Diff(&old, &next)
	b.Run("apply", func(b *testing.B) {
		for b.Loop() {
			if _, err := old.Apply(d); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestDifferSharedLists: two cells whose states share long lists, diffed
// through one Differ over a walk of changes (a script kept for the first
// cell serves the second), both end with exactly the new states.
func TestDifferSharedLists(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 13))
	var df Differ
	var eps []Endpoint
	for i := range 200 {
		eps = append(eps, Endpoint{IP: netip.AddrFrom4([4]byte{10, 255, byte(i / 250), byte(i % 250)}), Instance: fmt.Sprint(i)})
	}
	a := CellState{Revision: 1, Cell: Cell{Name: "a"}, Endpoints: eps}
	b := CellState{Revision: 1, Cell: Cell{Name: "b"}, Endpoints: eps}
	ha, hb := roundTrip(t, a), roundTrip(t, b)
	for step := range 50 {
		next := slices.Clone(a.Endpoints)
		for range r.IntN(3) + 1 {
			i := r.IntN(len(next))
			if r.IntN(2) == 0 {
				next = slices.Delete(next, i, i+1)
			} else {
				next = slices.Insert(next, i, Endpoint{IP: netip.AddrFrom4([4]byte{10, 254, byte(step), byte(i)}), Instance: "new"})
			}
		}
		na, nb := a, b
		na.Revision, nb.Revision = a.Revision+1, b.Revision+1
		na.Endpoints, nb.Endpoints = next, next
		for _, c := range []struct {
			old, new *CellState
			have     *CellState
		}{{&a, &na, &ha}, {&b, &nb, &hb}} {
			d, err := df.Diff(c.old, c.new)
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.have.Apply(roundTrip(t, d))
			if err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
			if !bytes.Equal(mustJSON(t, got), mustJSON(t, c.new)) {
				t.Fatalf("step %d: cell %s holds another state than the new one", step, c.new.Cell.Name)
			}
			*c.have = got
		}
		a, b = na, nb
	}
	if len(df.lists) == 0 {
		t.Error("the Differ kept no script")
	}
}

// TestDifferMatchesDiff: over random walks of states whose long lists are
// shared by several cells (each list now replaced, now kept), the deltas
// of one Differ (a list's script diffed once and reused; equal fields
// skipped unencoded) are exactly the deltas of the plain Diff.
func TestDifferMatchesDiff(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 5))
	var df Differ
	long := func(n int) []Endpoint {
		var eps []Endpoint
		for i := range n {
			eps = append(eps, Endpoint{IP: netip.AddrFrom4([4]byte{10, 255, byte(i / 250), byte(i % 250)}), Instance: fmt.Sprint(i)})
		}
		return eps
	}
	shared := long(100)
	var cells [3]CellState
	for i := range cells {
		randomValue(r, reflect.ValueOf(&cells[i]).Elem(), 0)
		cells[i].Endpoints = shared
	}
	for step := range 300 {
		if r.IntN(2) == 0 { // the shared list changes
			next := slices.Clone(shared)
			i := r.IntN(len(next))
			if r.IntN(2) == 0 && len(next) > minKept {
				next = slices.Delete(next, i, i+1)
			} else {
				next = slices.Insert(next, i, Endpoint{IP: netip.AddrFrom4([4]byte{10, 254, byte(step), byte(i)}), Instance: "new"})
			}
			shared = next
		}
		for i := range cells {
			next := cells[i]
			next.Revision++
			if r.IntN(3) == 0 {
				mutate(r, &next)
			}
			next.Endpoints = shared
			got, err := df.Diff(&cells[i], &next)
			if err != nil {
				t.Fatal(err)
			}
			want, err := Diff(&cells[i], &next)
			if err != nil {
				t.Fatal(err)
			}
			if g, w := mustJSON(t, got), mustJSON(t, want); !bytes.Equal(g, w) {
				t.Fatalf("step %d, cell %d: Differ.Diff = %s\nwant (Diff) %s", step, i, g, w)
			}
			cells[i] = next
		}
	}
	if len(df.lists) == 0 {
		t.Error("the Differ kept no script")
	}
}
