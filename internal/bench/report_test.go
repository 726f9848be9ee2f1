package bench

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/net/html"
)

var htmlOut = flag.String("html", "", "also write the HTML report of TestWriteHTML's reports to this `file`, to look at in a browser")

// sampleReports are three reports shaped like the overlay, policy and dns
// benches' (their figure IDs and sample keys), with made-up numbers.
func sampleReports() []*Report {
	rng := rand.New(rand.NewPCG(1, 2))
	around := func(n int, mid, spread float64) []float64 {
		xs := make([]float64, n)
		for i := range xs {
			xs[i] = mid * (1 + spread*(rng.Float64()-0.5))
		}
		return xs
	}
	tail := func(n int, base, scale float64) []float64 { // a long right tail
		xs := make([]float64, n)
		for i := range xs {
			xs[i] = base + rng.ExpFloat64()*scale
		}
		return xs
	}
	started := time.Date(2026, 3, 14, 15, 9, 26, 0, time.UTC)
	goalAtLeast := &goal{ratio: true, limit: 0.95}
	overlay := &Report{
		Bench: "overlay", Prefix: "trbench-0a1b2c-", Started: started, Seconds: 131, CPUs: 2,
		LoadStart: [3]float64{0.41, 0.3, 0.2}, LoadEnd: [3]float64{1.62, 0.8, 0.4},
		Figures: []Figure{
			newFigure("overlay/tcp-1-vs-vxlan", "cross-cell TCP, 1 stream, vs bare VXLAN", "Gbit/s", 11.3, 10.9, "bare VXLAN pair", goalAtLeast),
			newFigure("overlay/tcp-1-vs-veth", "cross-cell TCP, 1 stream, vs direct veth", "Gbit/s", 11.3, 12.2, "direct veth pair", nil),
			newFigure("overlay/tcp-4-vs-vxlan", "cross-cell TCP, 4 streams, vs bare VXLAN", "Gbit/s", 9.1, 10.4, "bare VXLAN pair", goalAtLeast),
			newFigure("overlay/setup-p50", "container setup to first packet, p50", "ms", 6.2, 3.1, "plain veth on a bridge", &goal{atMost: true, limit: 20}),
			newFigure("overlay/setup-p99", "container setup to first packet, p99", "ms", 14.8, 7.5, "plain veth on a bridge", &goal{atMost: true, limit: 50}),
		},
		Samples: map[string][]float64{
			"tcp-1/trellis": {11.1, 11.3, 11.6}, "tcp-1/bare-vxlan": {10.7, 10.9, 11.2}, "tcp-1/veth": {12.0, 12.2, 12.9},
			"tcp-4/trellis": {9.0, 9.1, 9.3}, "tcp-4/bare-vxlan": {10.1, 10.4, 10.5}, "tcp-4/veth": {13.1, 13.3, 13.4},
			"setup/trellis": tail(100, 4, 2), "setup/trellis-addcontainer": tail(100, 2, 1), "setup/plain-veth": tail(100, 2, 1.2),
		},
		Notes: []string{"throughput: iperf3 TCP, receiver's rate, median of 3 runs of 5 s, the first 1 s left out",
			"container setup: 100 sequential adds to cell1, each timed from dataplane.AddContainer until a UDP datagram is echoed back"},
	}
	policy := &Report{
		Bench: "policy", Started: started.Add(131 * time.Second), Seconds: 242, CPUs: 2,
		LoadStart: [3]float64{1.62, 0.8, 0.4}, LoadEnd: [3]float64{1.9, 1.1, 0.6},
		Figures: []Figure{
			newFigure("policy/apply-10k", "full apply of 10,000 policies (one batch)", "ms", 27.5, 100, "the 100 ms goal", &goal{atMost: true, limit: 100}),
			newFigure("policy/xcell-tcp-1-deny-1", "cross-cell TCP, 1 stream, deny + 1 policy", "Gbit/s", 9.8, 10.9, "same path, no policy table", goalAtLeast),
			newFigure("policy/xcell-conn-rate-deny-1", "cross-cell new connections, deny + 1 policy", "conn/s", 9100, 10800, "same path, no policy table", goalAtLeast),
			newFigure("policy/propagation-add-p50", "policy add → first allowed SYN, p50", "ms", 3.9, 5000, "Cloud Foundry's policy poll interval (documented, not measured)", &goal{atMost: true, limit: 100}),
			newFigure("policy/propagation-add-p99", "policy add → first allowed SYN, p99", "ms", 12.4, 5000, "Cloud Foundry's policy poll interval (documented, not measured)", &goal{atMost: true, limit: 100}),
			newFigure("dns/route-map-p99", "route mapped → in another cell's DNS answers, p99", "ms", 8.1, 180000, "Cloud Foundry's service-discovery staleness threshold (documented, not measured)", &goal{atMost: true, limit: 200}),
		},
		Samples: map[string][]float64{
			"apply-full/trellis":         {27.5, 26.9, 28.8},
			"xcell-tcp-1/none":           {10.9, 10.7, 11.0},
			"xcell-tcp-1/deny-1":         {9.8, 9.7, 10.1},
			"xcell-conn-rate/none":       {10800, 10500, 11000},
			"xcell-conn-rate/deny-1":     {9100, 9000, 9300},
			"propagation-add/trellis":    tail(40, 2, 2),
			"propagation-delete/trellis": tail(40, 1.5, 1),
			"dns-map/trellis":            append(tail(40, 3, 1.5), 150), // a long tail: a log scale
		},
		Notes: []string{"propagation: a local foundation (2 cells, controller on SQLite), 1,000 other policies present"},
	}
	dns := &Report{
		Bench: "dns", Prefix: "trbench-3d4e5f-", Started: started.Add(373 * time.Second), Seconds: 58, CPUs: 2,
		LoadStart: [3]float64{1.9, 1.1, 0.6}, LoadEnd: [3]float64{1.7, 1.2, 0.7},
		Figures: []Figure{
			newFigure("dns/qps-vs-dnsmasq", "internal names, queries per second", "queries/s", 108000, 90000, "dnsmasq, hosts file", &goal{ratio: true, limit: 1}),
			newFigure("dns/latency-p99", "internal names, latency p99 at 20000 queries/s", "ms", 1.4, 0.9, "dnsmasq, hosts file", &goal{atMost: true, limit: 1}),
			newFigure("dns/latency-p50", "internal names, latency p50 at 20000 queries/s", "ms", 0.11, 0.09, "dnsmasq, hosts file", nil),
			newFigure("dns/table-build", "building the table of 1,000 routes and 5,000 instances", "ms", 41, 200, "the 200 ms propagation goal", nil),
		},
		Samples: map[string][]float64{
			"qps/trellis": around(3, 108000, 0.05), "qps/dnsmasq": around(3, 90000, 0.05),
			"cpu-per-query/trellis": {7.1, 7.3, 7.0}, "cpu-per-query/dnsmasq": {9.9, 10.2, 10.0},
			"table-build/trellis": around(5, 41, 0.2),
		},
		Notes: []string{"dns: load from dnsperf over UDP"},
	}
	return []*Report{overlay, policy, dns}
}

// writeHTML renders reports, failing the test on an error.
func writeHTML(t *testing.T, reports []*Report) string {
	t.Helper()
	var b bytes.Buffer
	if err := WriteHTML(&b, reports); err != nil {
		t.Fatalf("WriteHTML = %v", err)
	}
	return b.String()
}

// checkWellFormed fails unless every element of page but the void ones is
// closed, in order, and the page refers to nothing outside itself.
func checkWellFormed(t *testing.T, page string) {
	t.Helper()
	void := map[string]bool{"meta": true, "br": true, "img": true, "link": true, "input": true, "hr": true}
	var open []string
	z := html.NewTokenizer(strings.NewReader(page))
	for {
		tt := z.Next()
		if tt == html.ErrorToken {
			if z.Err() != io.EOF {
				t.Fatalf("tokenize: %v", z.Err())
			}
			break
		}
		tok := z.Token()
		switch tt {
		case html.StartTagToken:
			if tok.Data == "script" || tok.Data == "link" || tok.Data == "img" || tok.Data == "iframe" {
				t.Errorf("page has a <%s> element: it must be self-contained, with no script", tok.Data)
			}
			for _, a := range tok.Attr {
				if a.Key == "src" || (a.Key == "href" && !strings.HasPrefix(a.Val, "#")) || strings.HasPrefix(a.Key, "on") {
					t.Errorf("<%s %s=%q>: the page must refer to nothing outside itself", tok.Data, a.Key, a.Val)
				}
			}
			if !void[tok.Data] {
				open = append(open, tok.Data)
			}
		case html.EndTagToken:
			if len(open) == 0 || open[len(open)-1] != tok.Data {
				t.Fatalf("</%s> closes %v", tok.Data, open)
			}
			open = open[:len(open)-1]
		}
	}
	if len(open) > 0 {
		t.Errorf("elements left open: %v", open)
	}
	if strings.Contains(page, "url(") || strings.Contains(page, "@import") {
		t.Errorf("page's CSS fetches something")
	}
}

// node is the parsed page, for finding elements and their text.
type node struct{ *html.Node }

func parse(t *testing.T, page string) node {
	t.Helper()
	doc, err := html.Parse(strings.NewReader(page))
	if err != nil {
		t.Fatalf("html.Parse = %v", err)
	}
	return node{doc}
}

// all returns the elements under n named tag whose class attribute has
// class ("" for any).
func (n node) all(tag, class string) []node {
	var out []node
	for d := range n.Descendants() {
		if d.Type != html.ElementNode || d.Data != tag {
			continue
		}
		if class == "" || slices.Contains(strings.Fields(attr(d, "class")), class) {
			out = append(out, node{d})
		}
	}
	return out
}

func attr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

// text is all the text under n, tooltips included.
func (n node) text() string {
	var b strings.Builder
	for d := range n.Descendants() {
		if d.Type == html.TextNode {
			b.WriteString(d.Data)
		}
	}
	return b.String()
}

func TestWriteHTML(t *testing.T) {
	reports := sampleReports()
	// Text that must be escaped, everywhere text comes from a report.
	overlay := reports[0]
	overlay.Figures = append(overlay.Figures,
		newFigure("overlay/<script>", "<script>alert(1)</script>", "<i>ms</i>", 1, 2, `"base" & <b>line</b>`, nil))
	overlay.Samples["x<y>/<b>bold</b>"] = []float64{1, 2, 3}
	overlay.Notes = append(overlay.Notes, "note with <a href=x>a link</a> & more")
	page := writeHTML(t, reports)
	if *htmlOut != "" {
		if err := os.WriteFile(*htmlOut, []byte(page), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	checkWellFormed(t, page)
	for _, raw := range []string{"<script>", "<b>line", "<b>bold", "<i>", "<a href=x>", "<y>"} {
		if strings.Contains(page, raw) {
			t.Errorf("page has %q unescaped", raw)
		}
	}
	doc := parse(t, page)

	// Every figure is a row of the table, with its verdict.
	var rows []node
	for _, r := range doc.all("table", "") {
		rows = append(rows, r.all("tr", "pass")...)
		rows = append(rows, r.all("tr", "fail")...)
		rows = append(rows, r.all("tr", "info")...)
	}
	byName := map[string]string{}
	for _, row := range rows {
		tds := row.all("td", "")
		if len(tds) != 6 {
			t.Fatalf("a figure row has %d cells, want 6: %q", len(tds), row.text())
		}
		byName[tds[0].text()] = row.text()
	}
	verdicts := map[string]int{}
	for _, r := range reports {
		for _, f := range r.Figures {
			got, ok := byName[f.Name+f.ID]
			if !ok {
				t.Errorf("WriteHTML has no row for figure %q; rows: %q", f.Name, slices.Sorted(mapsKeys(byName)))
				continue
			}
			want := "· informative"
			if f.Pass != nil && *f.Pass {
				want = "✔ pass"
			} else if f.Pass != nil {
				want = "✘ falls short"
			}
			verdicts[want]++
			if !strings.HasSuffix(got, want) || !strings.Contains(got, f.BaselineName) || !strings.Contains(got, formatValue(f.Value, f.Unit)) {
				t.Errorf("row of %q = %q, want its value %q, baseline %q and verdict %q", f.Name, got, formatValue(f.Value, f.Unit), f.BaselineName, want)
			}
		}
	}
	if verdicts["✔ pass"] == 0 || verdicts["✘ falls short"] == 0 || verdicts["· informative"] == 0 {
		t.Fatalf("the sample reports should have figures of every verdict, have %v", verdicts)
	}
	for mark, n := range verdicts {
		cls := map[string]string{"✔ pass": "pass", "✘ falls short": "fail", "· informative": "info"}[mark]
		if got := len(doc.all("span", cls)); got != n {
			t.Errorf("WriteHTML has %d %q badges, want %d", got, mark, n)
		}
	}
	if want := fmt.Sprintf("%d of %d goals met", verdicts["✔ pass"], verdicts["✔ pass"]+verdicts["✘ falls short"]); !strings.Contains(doc.text(), want) {
		t.Errorf("WriteHTML lacks the summary %q", want)
	}

	// A chart per sample group, showing each of its series; notes.
	for _, r := range reports {
		sec := doc.all("section", "")
		i := slices.IndexFunc(sec, func(s node) bool { return attr(s.Node, "id") == "bench-"+r.Bench })
		if i < 0 {
			t.Fatalf("WriteHTML has no section for %s", r.Bench)
		}
		figs := sec[i].all("figure", "chart")
		for key := range r.Samples {
			g, s, _ := strings.Cut(key, "/")
			found := false
			for _, f := range figs {
				if cap := f.all("strong", ""); len(cap) == 1 && cap[0].text() == g && len(f.all("svg", "")) > 0 {
					found = true
					if !strings.Contains(f.text(), s) {
						t.Errorf("chart %s of %s does not name series %q", g, r.Bench, s)
					}
				}
			}
			if !found {
				t.Errorf("WriteHTML has no chart of %s samples %q", r.Bench, key)
			}
		}
		for _, n := range r.Notes {
			if !strings.Contains(sec[i].text(), n) {
				t.Errorf("section %s lacks note %q", r.Bench, n)
			}
		}
	}
}

func mapsKeys(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// TestWriteHTMLWithoutSamples renders reports with no samples, no figures,
// NaN figures, or none at all.
func TestWriteHTMLWithoutSamples(t *testing.T) {
	nan := newFigure("dns/latency-p99", "latency p99", "ms", math.NaN(), math.NaN(), "dnsmasq", &goal{atMost: true, limit: 1})
	tests := []struct {
		name    string
		reports []*Report
		want    []string
	}{
		{"no samples", []*Report{{Bench: "overlay", Figures: []Figure{
			newFigure("overlay/tcp-1-vs-vxlan", "cross-cell TCP", "Gbit/s", 11, 10, "bare VXLAN pair", &goal{ratio: true, limit: 0.95})}}},
			[]string{"cross-cell TCP", "No samples were kept for charts.", "1 of 1 goals met"}},
		{"empty samples", []*Report{{Bench: "dns", Samples: map[string][]float64{"qps/trellis": {}, "qps/dnsmasq": {math.NaN()}}, Figures: []Figure{nan}}},
			[]string{"latency p99", "NaN ms", "No samples were kept for charts."}},
		{"no figures", []*Report{{Bench: "tls"}}, []string{"No figures.", "0 of 0 goals met"}},
		{"no reports", nil, []string{"0 of 0 goals met"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			page := writeHTML(t, tt.reports)
			checkWellFormed(t, page)
			text := parse(t, page).text()
			for _, w := range tt.want {
				if !strings.Contains(text, w) {
					t.Errorf("WriteHTML(%s) lacks %q", tt.name, w)
				}
			}
		})
	}
}

// TestReportCharts checks which charts each sample group gets, and where.
func TestReportCharts(t *testing.T) {
	var got []string
	for _, r := range sampleReports() {
		for _, c := range charts(r) {
			got = append(got, fmt.Sprintf("%s %s %s", r.Bench, c.Title, c.Kind))
			if c.Kind != chartDistribution {
				continue
			}
			if len(c.SVGs) != 2 {
				t.Errorf("distribution of %s has %d drawings, want 2", c.Title, len(c.SVGs))
			}
			// Only dns-map's values span more than a factor of 20.
			if log := strings.Contains(c.Caption, "log scale"); log != (c.Title == "dns-map") {
				t.Errorf("cdf of %s has caption %q: log scale %v, want %v", c.Title, c.Caption, log, !log)
			}
		}
	}
	want := []string{
		// In the order of the figures they back.
		"overlay tcp-1 bars",
		"overlay tcp-4 bars",
		"overlay setup distribution",
		"policy xcell-tcp-1 bars",
		"policy xcell-conn-rate bars",
		"policy propagation-add distribution",
		// Groups that back no figure: after them, by name; apply-full and
		// dns-map's unit comes from sampleUnits, and a group named
		// propagation is a time.
		"policy apply-full bars", // 3 samples: too few for a distribution
		"policy dns-map distribution",
		"policy propagation-delete distribution",
		"dns qps bars",
		// dns/latency-p50 and -p99 have no samples: drawn from the figures.
		"dns latency percentiles",
		"dns table-build distribution",
		"dns cpu-per-query bars",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("charts(sampleReports()) (-want +got):\n%s", diff)
	}
}

func TestGroupOf(t *testing.T) {
	tests := []struct {
		id, group string
		want      bool
	}{
		{"overlay/tcp-1-vs-vxlan", "tcp-1", true},
		{"overlay/tcp-10-vs-vxlan", "tcp-1", false},
		{"overlay/setup-p50", "setup", true},
		{"dns/cpu-per-query", "cpu-per-query", true},
		{"dns/instance-start-p99", "dns-instance-start", true},
		{"dns/route-map-p99", "dns-map", false},
		{"policy/xcell-tcp-1-deny-1", "xcell-tcp-1", true},
		{"policy/xcell-tcp-1-deny-1", "tcp-1", false},
		{"policy/apply-10k", "apply-full", false},
	}
	for _, tt := range tests {
		if got := groupOf(tt.id, tt.group); got != tt.want {
			t.Errorf("groupOf(%q, %q) = %v, want %v", tt.id, tt.group, got, tt.want)
		}
	}
}

func TestPercentileOf(t *testing.T) {
	tests := []struct {
		id   string
		stem string
		p    float64
		ok   bool
	}{
		{"dns/latency-p99", "dns/latency", 99, true},
		{"overlay/setup-p50", "overlay/setup", 50, true},
		{"policy/propagation-add-p99.9", "policy/propagation-add", 99.9, true},
		{"overlay/tcp-1-vs-veth", "", 0, false},
		{"dns/x-p0", "", 0, false},
		{"dns/x-p101", "", 0, false},
		{"dns/x-pages", "", 0, false},
	}
	for _, tt := range tests {
		stem, p, ok := percentileOf(tt.id)
		if stem != tt.stem || p != tt.p || ok != tt.ok {
			t.Errorf("percentileOf(%q) = %q, %v, %v, want %q, %v, %v", tt.id, stem, p, ok, tt.stem, tt.p, tt.ok)
		}
	}
}

func TestNiceTicks(t *testing.T) {
	tests := []struct {
		hi   float64
		want []float64
	}{
		{11.3, []float64{0, 5, 10, 15}},
		{10, []float64{0, 2, 4, 6, 8, 10}},
		{108000, []float64{0, 50000, 100000, 150000}},
		{0.7, []float64{0, 0.2, 0.4, 0.6000000000000001, 0.8}},
		{0, []float64{0, 1}},
		{math.NaN(), []float64{0, 1}},
	}
	for _, tt := range tests {
		if got := niceTicks(tt.hi, 5); !slices.Equal(got, tt.want) {
			t.Errorf("niceTicks(%v, 5) = %v, want %v", tt.hi, got, tt.want)
		}
	}
}

func TestFormatNumber(t *testing.T) {
	tests := []struct {
		v    float64
		want string
	}{
		{0, "0"},
		{0.0123, "0.0123"},
		{1.5, "1.50"},
		{11.34, "11.3"},
		{250, "250"},
		{9999, "9999"},
		{108012, "108k"},
		{12500, "12.5k"},
		{2500000, "2.5M"},
		{-40, "-40.0"},
	}
	for _, tt := range tests {
		if got := formatNumber(tt.v); got != tt.want {
			t.Errorf("formatNumber(%v) = %q, want %q", tt.v, got, tt.want)
		}
	}
}

// TestCombine checks the combined report of several, and that its JSON
// still reads as a Report.
func TestCombine(t *testing.T) {
	reports := sampleReports()
	c := Combine(reports)
	nfig := 0
	for _, r := range reports {
		nfig += len(r.Figures)
	}
	if c.Bench != "overlay+policy+dns" || len(c.Figures) != nfig || len(c.Notes) != 4 ||
		!c.Started.Equal(reports[0].Started) || c.Seconds != 131+242+58 || c.CPUs != 2 ||
		c.LoadStart != reports[0].LoadStart || c.LoadEnd != reports[2].LoadEnd || c.Samples != nil {
		t.Errorf("Combine(overlay, policy, dns) = %+v", c.Report)
	}
	var b bytes.Buffer
	if err := c.WriteJSON(&b); err != nil {
		t.Fatalf("WriteJSON = %v", err)
	}
	var asReport Report
	if err := json.Unmarshal(b.Bytes(), &asReport); err != nil {
		t.Fatalf("the combined JSON does not read as a Report: %v", err)
	}
	if diff := cmp.Diff(c.Report, asReport); diff != "" {
		t.Errorf("combined JSON read as a Report (-want +got):\n%s", diff)
	}
	var back Combined
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatalf("the combined JSON does not read back: %v", err)
	}
	if diff := cmp.Diff(c, &back); diff != "" {
		t.Errorf("combined JSON read back (-want +got):\n%s", diff)
	}
}
