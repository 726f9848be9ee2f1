package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"sync"
)

// Deltas of a cell's desired state. An agent that holds the state of
// revision Base asks for what changed since (GET
// /trellis/v1/cell/state?after=Base&delta=1); the controller answers with a
// CellDelta when it still holds that state, and with the whole state
// otherwise (a cold start, a base it no longer keeps, another controller's
// numbering). The agent applies the delta to its copy (CellState.Apply) and
// hands the result to its dataplane, which changes only what differs.
//
// Diff and Apply walk the fields of CellState by reflection, under their
// JSON names: a field added to CellState (or to an element type of one of
// its lists) is carried by deltas with no change here. A slice field is
// sent as an edit script of its entries (see ListEdit); any other field,
// whole, when its JSON changed.

// CellDelta is what changed in a cell's desired state from revision Base to
// revision Revision.
type CellDelta struct {
	Base     int64 `json:"base"`
	Revision int64 `json:"revision"`
	// Fields are the fields (by JSON name) whose new value is sent whole:
	// those that are not lists, and lists that were or became empty.
	Fields map[string]json.RawMessage `json:"fields,omitempty"`
	// Lists are the edit scripts of the lists that changed otherwise.
	Lists map[string][]ListEdit `json:"lists,omitempty"`
}

// ListEdit is one step of a list's edit script. The steps of a list are
// applied in order to its old entries from the first: Keep copies the next
// Keep old entries, Drop skips the next Drop, and Put (a JSON array of the
// list's entries) inserts new ones; a step with several does them in that
// order. The script covers every old entry exactly once.
type ListEdit struct {
	Keep int             `json:"keep,omitempty"`
	Drop int             `json:"drop,omitempty"`
	Put  json.RawMessage `json:"put,omitempty"`
}

// CellStateAnswer is the answer to a poll that accepts deltas (delta=1):
// exactly one of State (the whole state) and Delta is set. Digest names
// the content of the state the answer leads to (whatever its revision): a
// later poll sends it back (base=) with its revision (after=), and gets a
// delta only if the controller holds that very state.
type CellStateAnswer struct {
	State  *CellState `json:"state,omitempty"`
	Delta  *CellDelta `json:"delta,omitempty"`
	Digest string     `json:"digest,omitempty"`
}

// Empty reports whether d changes nothing but the revision.
func (d *CellDelta) Empty() bool { return len(d.Fields) == 0 && len(d.Lists) == 0 }

// stateField is a field of CellState that deltas carry.
type stateField struct {
	index int
	name  string // JSON name
	list  bool   // a slice: sent as an edit script
	// comparable: a list's entries compare with ==; else by their JSON.
	comparable bool
	// equal: the field (not a list) compares with ==, and values equal so
	// have the same JSON: Diff needs not encode them to see no change.
	equal bool
}

var (
	stateFields = cellStateFields()
	fieldByName = func() map[string]stateField {
		m := map[string]stateField{}
		for _, f := range stateFields {
			m[f.name] = f
		}
		return m
	}()
)

// cellStateFields lists CellState's fields but its revision.
func cellStateFields() []stateField {
	t := reflect.TypeFor[CellState]()
	var out []stateField
	for i := range t.NumField() {
		sf := t.Field(i)
		name, _, _ := strings.Cut(sf.Tag.Get("json"), ",")
		if name == "-" || !sf.IsExported() {
			continue
		}
		if name == "" {
			name = sf.Name
		}
		if name == "revision" {
			continue
		}
		f := stateField{index: i, name: name, list: sf.Type.Kind() == reflect.Slice}
		if f.list {
			f.comparable = sf.Type.Elem().Comparable()
		} else {
			f.equal = sf.Type.Comparable()
		}
		out = append(out, f)
	}
	return out
}

// Diff returns the delta that takes old to new: old.Apply(Diff(old, new))
// has the JSON of new. A list whose entries come in a stable order (as the
// controller sends them) costs the entries that changed, plus a few bytes.
func Diff(old, new *CellState) (CellDelta, error) { return (*Differ)(nil).Diff(old, new) }

// A Differ is Diff with a memory: it keeps the edit scripts of the long
// lists it diffed, by their backing arrays (which it keeps alive, so that
// an address names one array). The controller hands every cell the same
// slices for what the cells share (endpoints, routes): with a Differ, a
// change to them is diffed once, not once per cell. A nil *Differ keeps
// nothing. Safe for concurrent use.
type Differ struct {
	mu    sync.Mutex
	lists map[listPair]keptEdits
}

// listPair names the diff of two lists by their arrays and lengths.
type listPair struct {
	typ    reflect.Type
	o, n   uintptr
	ol, nl int
}

type keptEdits struct {
	o, n  any // the lists, kept alive
	edits []ListEdit
}

// Lists shorter than minKept are diffed every time; a Differ keeps at most
// maxKept scripts (and then starts over).
const (
	minKept = 64
	maxKept = 32
)

func (df *Differ) list(o, n reflect.Value, comparable bool) ([]ListEdit, error) {
	if df == nil || o.Len() < minKept || n.Len() < minKept {
		return diffList(o, n, comparable)
	}
	k := listPair{typ: o.Type(), o: o.Pointer(), n: n.Pointer(), ol: o.Len(), nl: n.Len()}
	df.mu.Lock()
	kept, ok := df.lists[k]
	df.mu.Unlock()
	if ok {
		return kept.edits, nil
	}
	edits, err := diffList(o, n, comparable)
	if err != nil {
		return nil, err
	}
	df.mu.Lock()
	if df.lists == nil || len(df.lists) >= maxKept {
		df.lists = map[listPair]keptEdits{}
	}
	df.lists[k] = keptEdits{o: o.Interface(), n: n.Interface(), edits: edits}
	df.mu.Unlock()
	return edits, nil
}

// Diff is the package's Diff, reusing the scripts df keeps.
func (df *Differ) Diff(old, new *CellState) (CellDelta, error) {
	d := CellDelta{Base: old.Revision, Revision: new.Revision}
	ov, nv := reflect.ValueOf(old).Elem(), reflect.ValueOf(new).Elem()
	for _, f := range stateFields {
		o, n := ov.Field(f.index), nv.Field(f.index)
		if f.list && o.Len() > 0 && n.Len() > 0 {
			if o.Pointer() == n.Pointer() && o.Len() == n.Len() {
				continue // the same entries (the controller shares them)
			}
			edits, err := df.list(o, n, f.comparable)
			if err != nil {
				return d, fmt.Errorf("diff %s: %w", f.name, err)
			}
			if edits != nil {
				if d.Lists == nil {
					d.Lists = map[string][]ListEdit{}
				}
				d.Lists[f.name] = edits
			}
			continue
		}
		if f.equal && o.Equal(n) {
			continue // most fields, most of the time (a change to the shared lists alone)
		}
		ob, err := json.Marshal(o.Interface())
		if err != nil {
			return d, fmt.Errorf("diff %s: %w", f.name, err)
		}
		nb, err := json.Marshal(n.Interface())
		if err != nil {
			return d, fmt.Errorf("diff %s: %w", f.name, err)
		}
		if !bytes.Equal(ob, nb) {
			if d.Fields == nil {
				d.Fields = map[string]json.RawMessage{}
			}
			d.Fields[f.name] = nb
		}
	}
	return d, nil
}

// diffList returns the edit script from the list o to the list n, or nil
// when they are equal. It walks both in order: an entry in both at the
// same point is kept, an old entry that n no longer holds is dropped, a new
// one that o did not hold is put; entries found in both but out of order
// are dropped and put (correct, only larger).
func diffList(o, n reflect.Value, comparable bool) ([]ListEdit, error) {
	// What both start and end with costs no keys (the common case: one
	// change in a long list).
	eq := func(a, b reflect.Value) bool {
		if comparable {
			return a.Equal(b)
		}
		return reflect.DeepEqual(a.Interface(), b.Interface()) // stricter than their JSON: never equal when that differs
	}
	p, s := 0, 0
	for p < o.Len() && p < n.Len() && eq(o.Index(p), n.Index(p)) {
		p++
	}
	for s < o.Len()-p && s < n.Len()-p && eq(o.Index(o.Len()-1-s), n.Index(n.Len()-1-s)) {
		s++
	}
	edits, err := diffMiddle(o.Slice(p, o.Len()-s), n.Slice(p, n.Len()-s), comparable)
	if err != nil || edits == nil {
		return nil, err
	}
	edits[0].Keep += p // a step's keep comes first
	if s > 0 {
		edits = append(edits, ListEdit{Keep: s})
	}
	return edits, nil
}

// diffMiddle is diffList without the common start and end.
func diffMiddle(o, n reflect.Value, comparable bool) ([]ListEdit, error) {
	ok, err := entryKeys(o, comparable)
	if err != nil {
		return nil, err
	}
	nk, err := entryKeys(n, comparable)
	if err != nil {
		return nil, err
	}
	oldLeft, newLeft := map[any]int{}, map[any]int{}
	for _, k := range ok {
		oldLeft[k]++
	}
	for _, k := range nk {
		newLeft[k]++
	}
	var edits []ListEdit
	step := func(keep, drop int) {
		if len(edits) > 0 {
			last := &edits[len(edits)-1]
			if keep > 0 && last.Drop == 0 && last.Put == nil {
				last.Keep += keep
				return
			}
			if drop > 0 && last.Put == nil {
				last.Drop += drop
				return
			}
		}
		edits = append(edits, ListEdit{Keep: keep, Drop: drop})
	}
	putFrom := -1 // start of the run of new entries being put
	flush := func(j int) error {
		if putFrom < 0 {
			return nil
		}
		b, err := json.Marshal(n.Slice(putFrom, j).Interface())
		if err != nil {
			return err
		}
		putFrom = -1
		if len(edits) > 0 && edits[len(edits)-1].Put == nil {
			edits[len(edits)-1].Put = b
			return nil
		}
		edits = append(edits, ListEdit{Put: b})
		return nil
	}
	i, j, changed := 0, 0, false
	for i < len(ok) || j < len(nk) {
		switch {
		case i < len(ok) && j < len(nk) && ok[i] == nk[j]:
			if err := flush(j); err != nil {
				return nil, err
			}
			step(1, 0)
			oldLeft[ok[i]]--
			newLeft[nk[j]]--
			i++
			j++
		case i < len(ok) && (newLeft[ok[i]] == 0 || j == len(nk) || oldLeft[nk[j]] > 0):
			// Gone from n, or both entries are found further on (out
			// of order): drop the old one.
			if err := flush(j); err != nil {
				return nil, err
			}
			step(0, 1)
			oldLeft[ok[i]]--
			i++
			changed = true
		default:
			if putFrom < 0 {
				putFrom = j
			}
			newLeft[nk[j]]--
			j++
			changed = true
		}
	}
	if err := flush(j); err != nil {
		return nil, err
	}
	if !changed {
		return nil, nil
	}
	return edits, nil
}

// entryKeys returns what tells a list's entries apart: the entry itself
// when its type compares with ==, else its JSON.
func entryKeys(v reflect.Value, comparable bool) ([]any, error) {
	keys := make([]any, v.Len())
	for i := range keys {
		e := v.Index(i)
		if comparable {
			keys[i] = e.Interface()
			continue
		}
		b, err := json.Marshal(e.Interface())
		if err != nil {
			return nil, err
		}
		keys[i] = string(b)
	}
	return keys, nil
}

// Apply returns st changed by d. st is not modified (the result shares
// the entries it keeps). It fails when d is not based on st's revision or
// does not fit st (a list's edit script that does not cover its old
// entries exactly): then the whole state must be fetched. Fields st does
// not know (from a newer controller) are ignored, as in a whole state.
func (st CellState) Apply(d CellDelta) (CellState, error) {
	if d.Base != st.Revision {
		return CellState{}, fmt.Errorf("delta from revision %d applied to revision %d", d.Base, st.Revision)
	}
	out := st
	ov := reflect.ValueOf(&out).Elem()
	for name, raw := range d.Fields {
		f, ok := fieldByName[name]
		if !ok {
			continue
		}
		p := reflect.New(ov.Field(f.index).Type())
		if err := json.Unmarshal(raw, p.Interface()); err != nil {
			return CellState{}, fmt.Errorf("delta field %s: %w", name, err)
		}
		ov.Field(f.index).Set(p.Elem())
	}
	for name, edits := range d.Lists {
		f, ok := fieldByName[name]
		if !ok {
			continue
		}
		if !f.list {
			return CellState{}, fmt.Errorf("delta list %s: not a list", name)
		}
		n, err := applyEdits(ov.Field(f.index), edits)
		if err != nil {
			return CellState{}, fmt.Errorf("delta list %s: %w", name, err)
		}
		ov.Field(f.index).Set(n)
	}
	out.Revision = d.Revision
	return out, nil
}

// applyEdits returns a new slice: o changed by edits.
func applyEdits(o reflect.Value, edits []ListEdit) (reflect.Value, error) {
	n := reflect.MakeSlice(o.Type(), 0, o.Len())
	pos := 0
	for _, e := range edits {
		if e.Keep < 0 || e.Drop < 0 || e.Keep > o.Len()-pos || e.Drop > o.Len()-pos-e.Keep {
			return n, fmt.Errorf("edit keep %d, drop %d at entry %d of %d: out of range", e.Keep, e.Drop, pos, o.Len())
		}
		n = reflect.AppendSlice(n, o.Slice(pos, pos+e.Keep))
		pos += e.Keep + e.Drop
		if e.Put != nil {
			p := reflect.New(o.Type())
			if err := json.Unmarshal(e.Put, p.Interface()); err != nil {
				return n, fmt.Errorf("put at entry %d: %w", pos, err)
			}
			n = reflect.AppendSlice(n, p.Elem())
		}
	}
	if pos != o.Len() {
		return n, fmt.Errorf("the edits cover %d of %d entries", pos, o.Len())
	}
	return n, nil
}
