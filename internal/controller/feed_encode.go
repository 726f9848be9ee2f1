package controller

import (
	"crypto/sha256"
	"encoding/json"
	"reflect"
	"strconv"

	"github.com/trellis-c2c/trellis/internal/api"
)

// stateEncoder encodes the cells' desired states of one compile as JSON.
// policy.Compile gives every cell the same slices for what the foundation
// shares (endpoints, domains, routes); the encoder encodes each
// such slice once and hands every cell the same bytes, so that a compile
// costs the shared parts once, not once per cell. A slice it has not seen
// is encoded afresh: sharing makes it faster, never different.
type stateEncoder struct {
	shared map[sharedKey]sharedPart
}

type sharedKey struct {
	data uintptr // the slice's first element
	n    int
	typ  reflect.Type
}

type sharedPart struct {
	b   []byte
	sum [32]byte
}

func newStateEncoder() *stateEncoder { return &stateEncoder{shared: map[sharedKey]sharedPart{}} }

// encode returns st at revision rev as a feed entry: its JSON in segments
// (the same bytes json.Marshal makes of the api.CellState), and a hash of
// everything but the revision.
func (e *stateEncoder) encode(rev int64, st *api.CellState) (*feedEntry, error) {
	w := segments{enc: e}
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
	w.shared(st.Endpoints)
	w.lit(`,"domains":`)
	w.shared(st.Domains)
	w.lit(`,"routes":`)
	w.shared(st.Routes)
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
	// The revision opens the object; the hash leaves it out.
	w.body[0] = append([]byte(`{"revision":`+strconv.FormatInt(rev, 10)), w.body[0]...)
	return &feedEntry{rev: rev, sum: sha256.Sum256(append(w.own, w.sums...)), body: w.body}, nil
}

// segments collects one state's JSON: own holds the bytes of the cell's own
// parts, sums the hashes of the shared ones.
type segments struct {
	enc       *stateEncoder
	body      [][]byte
	own, sums []byte
	err       error
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

func (w *segments) shared(v any) {
	p, err := w.enc.part(v)
	if w.err == nil {
		w.err = err
	}
	w.sums = append(w.sums, p.sum[:]...)
	w.body = append(w.body, p.b)
}

// part encodes a slice that cells may share, once per compile.
func (e *stateEncoder) part(v any) (sharedPart, error) {
	rv := reflect.ValueOf(v)
	key := sharedKey{data: rv.Pointer(), n: rv.Len(), typ: rv.Type()}
	if p, ok := e.shared[key]; ok && key.data != 0 {
		return p, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return sharedPart{}, err
	}
	p := sharedPart{b: b, sum: sha256.Sum256(b)}
	e.shared[key] = p
	return p, nil
}
