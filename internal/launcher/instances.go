package launcher

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// LocalInstance is an instance that a cell of the foundation holds: its
// agent has started it and not yet finished stopping it.
type LocalInstance struct {
	Cell  string // cell name
	GUID  string // instance GUID
	NetNS string // the instance's namespace name
}

// instanceRecord is the part of an agent's instance record
// (CELL/instances/GUID/instance.json) the launcher reads. The agent writes
// the record before it makes the instance's namespace and removes it once
// the process has stopped and the namespace is deleted.
type instanceRecord struct {
	Desired struct {
		GUID    string `json:"guid"`
		AppGUID string `json:"app_guid"`
	} `json:"desired"`
	NetNS string `json:"netns"`
}

// AppInstances lists the instances of the app appGUID that the
// foundation's cells still hold, by cell and GUID: what a client of the
// controller cannot see, since the controller forgets an instance as soon
// as it is no longer desired, before its cell has stopped it.
func (f *Foundation) AppInstances(appGUID string) []LocalInstance {
	var out []LocalInstance
	for _, c := range f.Cells {
		records, _ := filepath.Glob(filepath.Join(c.StateDir, "instances", "*", "instance.json"))
		for _, path := range records {
			b, err := os.ReadFile(path)
			if err != nil {
				continue // removed meanwhile
			}
			var r instanceRecord
			if json.Unmarshal(b, &r) != nil || r.Desired.AppGUID != appGUID {
				continue
			}
			out = append(out, LocalInstance{Cell: c.Name, GUID: r.Desired.GUID, NetNS: r.NetNS})
		}
	}
	slices.SortFunc(out, func(a, b LocalInstance) int {
		return strings.Compare(a.Cell+"/"+a.GUID, b.Cell+"/"+b.GUID)
	})
	return out
}

// CellNames lists the names of the foundation's cells, in order.
func (f *Foundation) CellNames() []string {
	names := make([]string, len(f.Cells))
	for i, c := range f.Cells {
		names[i] = c.Name
	}
	return names
}

// Cell finds the cell called name.
func (f *Foundation) Cell(name string) (Cell, bool) {
	i := slices.IndexFunc(f.Cells, func(c Cell) bool { return c.Name == name })
	if i < 0 {
		return Cell{}, false
	}
	return f.Cells[i], true
}
