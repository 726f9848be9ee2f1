package bench

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// OverlayOptions configures Overlay.
type OverlayOptions struct {
	// Quick takes one short sample per throughput figure and 30 adds
	// instead of the median of three and 100 adds: for CI smoke runs.
	Quick bool
	// Progress receives one line per step; nil discards them.
	Progress io.Writer
	// Prefix starts the name of every namespace the run makes; "" means
	// NewPrefix(). It must start with "trbench-".
	Prefix string
	// Exe is the trellis binary the local foundation of the CNI setup
	// figures runs; "" means the running one.
	Exe string
}

// ErrNoIPerf3 is returned when iperf3 is not installed. The bench installs
// nothing itself.
var ErrNoIPerf3 = errors.New("iperf3 is missing: apt-get install iperf3")

// PrefixBase starts the namespace names of every bench run.
const PrefixBase = "trbench-"

// NewPrefix returns a fresh per-run namespace prefix: "trbench-", six
// random hex digits and "-".
func NewPrefix() string {
	b := make([]byte, 3)
	rand.Read(b)
	return PrefixBase + hex.EncodeToString(b) + "-"
}

// overlayParams are the sizes of an overlay run.
type overlayParams struct {
	runs    int // iperf3 runs per path and stream count; the median is taken
	seconds int // length of one iperf3 run
	omit    int // seconds at the start of a run left out (slow start)
	adds    int // sequential container adds
	starts  int // rounds of the plugin start figures
	burst   int // containers added at once through CNI
}

func paramsFor(quick bool) overlayParams {
	if quick {
		return overlayParams{runs: 1, seconds: 2, omit: 0, adds: 30, starts: 20, burst: 20}
	}
	// Many short runs rather than a few long ones: the runs pair the paths,
	// and a ratio's median over 8 pairs moves less with the machine's
	// drift than the rates of 3.
	return overlayParams{runs: 8, seconds: 3, omit: 1, adds: 100, starts: 40, burst: 20}
}

// iperf3Result is the part of `iperf3 -c ... -J` output the bench reads.
type iperf3Result struct {
	End struct {
		SumReceived struct {
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

// parseIPerf3 returns the receiver's rate in Gbit/s from an iperf3 client's
// JSON output (the sum over all streams), or the error iperf3 reported.
func parseIPerf3(out []byte) (float64, error) {
	var r iperf3Result
	if err := json.Unmarshal(out, &r); err != nil {
		return 0, fmt.Errorf("parse iperf3 -J output: %w", err)
	}
	if r.Error != "" {
		return 0, errors.New(r.Error)
	}
	if r.End.SumReceived.BitsPerSecond <= 0 {
		return 0, errors.New("iperf3 reported no received data")
	}
	return r.End.SumReceived.BitsPerSecond / 1e9, nil
}
