package controller

import (
	"crypto/sha256"
	"encoding/json"
	"reflect"
	"strconv"

	"github.com/trellis-c2c/trellis/internal/api"
)

// stateEncoder encodes the cells' desired states as JSON. The model gives
// every cell the same slices for what the foundation shares (endpoints,
// domains, routes); the encoder keeps the encoding of the slice each of
// those fields last had, and hands every cell the same bytes, so that a
// compile costs the shared parts once, not once per cell, and a change to
// one of them does not re-encode the others. A slice it has not seen is
// encoded afresh: sharing makes it faster, never different.
type stateEncoder struct {
	parts [nShared]sharedPart
}

// The shared fields, in the order of a state's JSON.
const (
	sharedEndpoints = iota
	sharedDomains
	sharedRoutes
	nShared
)

// sharedPart is the encoding of the slice a shared field last had.
type sharedPart struct {
	keep any     // the slice: kept alive, so that its address names it
	data uintptr // its first element
	n    int
	b    []byte
	sum  [32]byte
}

func newStateEncoder() *stateEncoder { return &stateEncoder{} }

// encode returns st at revision rev as a feed entry: its JSON in segments
// (the same bytes json.Marshal makes of the api.CellState), and a hash of
// everything but the revision.
func (e *stateEncoder) encode(rev int64, st *api.CellState) (*feedEntry, error) {
	w := segments{enc: e}
	w.body = append(w.body, nil) // the revision: see revise
	w.lit(`,"cell":`)
	w.value(st.Cell)
	w.lit(`,"overlay":`)
	w.value(st.Overlay)
	w.lit(`,"peers":`)
	w.value(st.Peers)
	w.lit(`,"instances":`)
	w.value(st.Instances)
	w.lit(`,"enforce":` + strconv.FormatBool(st.Enforce) + `,"allows":`)
	w.value(st.Allows)
	w.lit(`,"apps":`)
	w.value(st.Apps) // the cell's own: its apps and their peers
	w.lit(`,"endpoints":`)
	w.shared(sharedEndpoints, st.Endpoints)
	w.lit(`,"domains":`)
	w.shared(sharedDomains, st.Domains)
	w.lit(`,"routes":`)
	w.shared(sharedRoutes, st.Routes)
	w.lit(`,"instance_ca":`)
	w.value(st.InstanceCA)
	w.lit(`,"local_apps":`)
	w.value(st.LocalApps)
	w.lit(`,"egress":`)
	w.value(st.Egress)
	w.lit(`,"encryption":`)
	w.value(st.Encryption)
	w.lit(`,"key_generation":` + strconv.FormatInt(st.KeyGeneration, 10) + `}`)
	if w.err != nil {
		return nil, w.err
	}
	out := &feedEntry{body: w.body, ownSum: sha256.Sum256(w.own), sharedAt: w.at}
	out.sums = w.sums
	out.revise(rev)
	out.sum = out.digest()
	return out, nil
}

// reshare returns old's state with other shared lists (st: old's state but
// for its revision and shared lists, as policy.Model.Reshare makes it) at
// revision rev: the cell's own segments and their hash are old's, so it
// costs the shared lists' encodings (once per change, for every cell) and
// a hash of a few sums.
func (e *stateEncoder) reshare(old *feedEntry, rev int64, st *api.CellState) (*feedEntry, error) {
	out := &feedEntry{body: append([][]byte(nil), old.body...), ownSum: old.ownSum, sharedAt: old.sharedAt}
	for i, v := range [nShared]any{st.Endpoints, st.Domains, st.Routes} {
		p, err := e.part(i, v)
		if err != nil {
			return nil, err
		}
		out.body[out.sharedAt[i]], out.sums[i] = p.b, p.sum
	}
	out.revise(rev)
	out.sum = out.digest()
	return out, nil
}

// revise makes e's JSON open with revision rev.
func (e *feedEntry) revise(rev int64) {
	e.body[0] = []byte(`{"revision":` + strconv.FormatInt(rev, 10))
	e.rev = rev
}

// digest is the hash of the state's content: its own parts' hash and the
// shared parts'.
func (e *feedEntry) digest() [32]byte {
	b := make([]byte, 0, 32*(1+nShared))
	b = append(b, e.ownSum[:]...)
	for _, s := range e.sums {
		b = append(b, s[:]...)
	}
	return sha256.Sum256(b)
}

// segments collects one state's JSON: own holds the bytes of the cell's own
// parts; at and sums the places and hashes of the shared ones.
type segments struct {
	enc  *stateEncoder
	body [][]byte
	own  []byte
	at   [nShared]int
	sums [nShared][32]byte
	err  error
}

func (w *segments) lit(s string) {
	w.own = append(w.own, s...)
	w.body = append(w.body, []byte(s))
}

func (w *segments) value(v any) {
	b, err := json.Marshal(v)
	if w.err == nil {
		w.err = err
	}
	w.own = append(w.own, b...)
	w.body = append(w.body, b)
}

func (w *segments) shared(i int, v any) {
	p, err := w.enc.part(i, v)
	if w.err == nil {
		w.err = err
	}
	w.at[i], w.sums[i] = len(w.body), p.sum
	w.body = append(w.body, p.b)
}

// part returns the encoding of v, the slice of shared field i: the one
// kept if v is the slice it was made of, else a new one, then kept.
func (e *stateEncoder) part(i int, v any) (sharedPart, error) {
	rv := reflect.ValueOf(v)
	p := &e.parts[i]
	if p.keep != nil && reflect.TypeOf(p.keep) == rv.Type() && p.data == rv.Pointer() && p.n == rv.Len() {
		return *p, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return sharedPart{}, err
	}
	*p = sharedPart{keep: v, data: rv.Pointer(), n: rv.Len(), b: b, sum: sha256.Sum256(b)}
	return *p, nil
}
