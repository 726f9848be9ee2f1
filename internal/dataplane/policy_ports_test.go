package dataplane

import (
	"slices"
	"testing"
)

// TestShortRangesArePorts checks which allows the hash set holds port by
// port, and that reading those ports back gives the plan's elements.
func TestShortRangesArePorts(t *testing.T) {
	g := packGroup(addr("10.255.1.2"), 3, protoTCP)
	h := packGroup(addr("10.255.1.2"), 4, protoTCP)
	for _, tt := range []struct {
		e        allowElem
		inRanges bool
	}{
		{allowElem{g, 80, 80}, false},
		{allowElem{g, 8080, 8081}, false},
		{allowElem{g, 8080, 8080 + shortRange - 1}, false},
		{allowElem{g, 8080, 8080 + shortRange}, true},
		{allowElem{g, 1, 65535}, true},
		{allowElem{g, 65534, 65535}, false},
	} {
		if got := tt.e.isRange(); got != tt.inRanges {
			t.Errorf("%v.isRange() = %v, want %v", tt.e.allow(), got, tt.inRanges)
		}
	}

	// A plan's elements never touch within a group; those of different
	// groups may.
	plan := []allowElem{{g, 80, 80}, {g, 8080, 8081}, {g, 8083, 8083}, {g, 65533, 65535}, {h, 65535, 65535}}
	ports := expandPorts(plan)
	if len(ports) != 1+2+1+3+1 {
		t.Fatalf("expandPorts(%v) = %v, want one element per port", plan, ports)
	}
	for _, p := range ports {
		if p.lo != p.hi {
			t.Errorf("expandPorts(%v) holds %v, want single ports", plan, p)
		}
	}
	got, first := mergePorts(ports)
	if !slices.Equal(got, plan) {
		t.Errorf("mergePorts(expandPorts(%v)) = %v, want it back", plan, got)
	}
	if want := []int{0, 1, 3, 4, 7}; !slices.Equal(first, want) {
		t.Errorf("mergePorts(expandPorts(%v)) first ports at %v, want %v", plan, first, want)
	}
}
