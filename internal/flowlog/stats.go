package flowlog

// Stats counts what a Reader has seen since Open.
type Stats struct {
	// Packets is the number of logged packets delivered to fn.
	Packets uint64
	// Lost is the number of log messages the kernel sent that never
	// arrived, because a socket's receive buffer was full (fn too slow, or
	// a burst larger than the buffer). Counted exactly, from gaps in the
	// kernel's per-group sequence numbers, when the next message arrives.
	Lost uint64
	// Overruns is the number of times a socket reported such a loss
	// (ENOBUFS); reading went on after each.
	Overruns uint64
	// Malformed is the number of delivered packets whose logged copy held
	// no decodable IP header (their SrcIP and DstIP are invalid).
	Malformed uint64
}
