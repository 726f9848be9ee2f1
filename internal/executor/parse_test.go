package executor

import "testing"

func TestParseStat(t *testing.T) {
	tail := " 1 1 1 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 123456 1000 100"
	tests := []struct {
		stat string
		want procStat
	}{
		{"42 (sleep) S" + tail, procStat{state: 'S', pgrp: 1, startTime: 123456}},
		{"42 (a b) (c)) Z" + tail, procStat{state: 'Z', pgrp: 1, startTime: 123456}},
	}
	for _, tt := range tests {
		got, err := parseStat([]byte(tt.stat))
		if err != nil || got != tt.want {
			t.Errorf("parseStat(%q) = %+v, %v, want %+v", tt.stat, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "42 (sleep", "42 (sleep) S 1 2"} {
		if got, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("parseStat(%q) = %+v, want an error", bad, got)
		}
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	tests := map[string]string{
		`/run/netns/a`:       "/run/netns/a",
		`/mnt/with\040space`: "/mnt/with space",
		`/end\134`:           `/end\`,
		`/short\04`:          `/short\04`,
		`/not\999octal`:      `/not\999octal`,
	}
	for in, want := range tests {
		if got := unescapeMountinfo(in); got != want {
			t.Errorf("unescapeMountinfo(%q) = %q, want %q", in, got, want)
		}
	}
}
