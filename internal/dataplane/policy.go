package dataplane

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Policy enforcement: the nftables table that a cell uses to mark packets
// from its instances with their app's tag and to admit, to its instances,
// only the (source tag, destination IP, protocol, port) tuples that
// policies allow. Planning is pure (compilePolicy, planPolicy); the kernel
// side is in policy_linux.go.

// PolicyTable is the nftables table (family inet) that trellis owns in a
// cell's namespace. Dataplane.Set replaces it whole or updates its sets;
// nothing else should write to it.
const PolicyTable = "trellis"

// Policy defaults and fixed values.
const (
	// DefaultLogRate is the rate, per second and per log group, at which
	// connection attempts are logged when Policy.LogRate is 0.
	DefaultLogRate = 100
	// TagMask selects the bits of the packet mark (and of the conntrack
	// mark of an accepted connection) that carry the source app's tag;
	// VXLAN-GBP carries exactly these 16 bits between cells.
	TagMask = 0xffff
	// LogPrefixDenied and LogPrefixAllowed prefix the NFLOG messages of
	// denied and accepted new connections.
	LogPrefixDenied  = "trellis-deny"
	LogPrefixAllowed = "trellis-allow"
	// hostVethPrefix starts every host-side container veth (HostVethName):
	// traffic from and to such a device is policed even when the instance
	// is not (yet) among Policy.Locals.
	hostVethPrefix = "s-"
	// HostVethGroup is the device group of every host-side container veth
	// and VTEPGroup the VTEP's. The policy table's hooks tell the packets of
	// instances from the rest by these: a group is one 4-byte load per
	// packet, where matching the name prefix copies the 16-byte name. A
	// device named like a host veth outside the group is still checked as
	// one (fail closed), only at the old cost; Set puts such devices in
	// their group whenever it replaces the table.
	HostVethGroup = 0x74720001
	VTEPGroup     = 0x74720002
	// ctMarkPoliced is set in the conntrack mark, next to the tag bits,
	// of every connection accepted to a local instance. It tells those
	// connections apart from others (say, from the cell itself) when flows
	// are cut.
	ctMarkPoliced = 0x10000
)

// Policy is a cell's enforcement state: the instances attached to the cell
// and what may reach them. Dataplane.Set makes the kernel match it.
type Policy struct {
	// Enforce turns default deny on. When false, packets are still marked
	// and spoofing is still dropped, but every connection to a local
	// instance is accepted (Cloud Foundry's
	// disable_container_network_policy).
	Enforce bool
	// Locals are the instances attached to this cell.
	Locals []Local
	// Allows say what may open connections to local instances. Overlapping
	// and adjacent port ranges of the same (destination, tag, protocol)
	// are merged.
	Allows []Allow
	// DenyLogGroup is the NFLOG group that receives the first packet of
	// every denied connection attempt, up to LogRate per second; 0 logs
	// nothing.
	DenyLogGroup uint16
	// AllowLogGroup is the NFLOG group that receives the first packet of
	// every accepted new connection to a local instance, up to LogRate per
	// second; 0 logs nothing.
	AllowLogGroup uint16
	// LogRate is the per-group log limit in packets per second (the burst
	// is the same); 0 means DefaultLogRate.
	LogRate int
	// VXLANPort is the overlay's UDP port (Cell.Port); 0 means
	// DefaultPort. The cell's VXLAN packets on the underlay are not
	// tracked by conntrack: the inner connections are, and tracking the
	// outer ones too would double conntrack's cost per packet and per
	// new connection (VXLAN picks the outer source port per inner flow).
	VXLANPort int
}

// Local is an instance attached to the cell.
type Local struct {
	IP netip.Addr
	// Tag is the policy tag of the instance's app, which marks its
	// packets; 0 means the app is in no policy and its packets are not
	// marked.
	Tag uint16
	// HostVeth is the cell-side veth of the instance; "" means
	// HostVethName(IP). Its packets must come in through this device with
	// the source MAC AddContainer gave the instance.
	HostVeth string
}

// Allow admits new connections from any instance of the app with tag SrcTag
// to the local instance DestIP, on Protocol ("tcp" or "udp") and a
// destination port in StartPort..EndPort.
type Allow struct {
	DestIP    netip.Addr
	SrcTag    uint16
	Protocol  string
	StartPort uint16
	EndPort   uint16
}

// String describes the allow for errors and logs:
// "tag 3 -> 10.255.1.2 tcp/8080-8090".
func (a Allow) String() string {
	ports := fmt.Sprint(a.StartPort)
	if a.EndPort != a.StartPort {
		ports += fmt.Sprintf("-%d", a.EndPort)
	}
	return fmt.Sprintf("tag %d -> %s %s/%s", a.SrcTag, a.DestIP, a.Protocol, ports)
}

// Counters are the policy table's counters since it was last created
// (Dataplane.Set keeps them across updates that change only its elements).
type Counters struct {
	// Spoofed counts packets from instances dropped because their
	// interface, source address and source MAC did not belong together,
	// or because they were not IPv4.
	Spoofed uint64
	// Denied counts rejected packets of new connections to local
	// instances; DeniedLogged those of them sent to DenyLogGroup. The
	// difference was suppressed by the log rate limit.
	Denied       uint64
	DeniedLogged uint64
	// Allowed counts accepted new connections to local instances;
	// AllowedLogged those of them sent to AllowLogGroup.
	Allowed       uint64
	AllowedLogged uint64
	// Allows has the hits (new connections) per allowed tuple, in the
	// merged form the kernel holds, sorted; nil when not enforcing.
	Allows []AllowHits
}

// AllowHits is how many new connections one allowed tuple admitted.
type AllowHits struct {
	Allow   Allow
	Packets uint64
	Bytes   uint64
}

// Flow selects connections to cut with Dataplane.CutFlows: those from one of SrcIPs
// (any source if empty) and, if SrcTag is not 0, accepted for that source
// tag, to DestIP on Protocol with a destination port in
// StartPort..EndPort.
type Flow struct {
	SrcIPs    []netip.Addr
	SrcTag    uint16
	DestIP    netip.Addr
	Protocol  string
	StartPort uint16
	EndPort   uint16
}

// Protocol numbers of the protocols a policy can name.
const (
	protoTCP = 6
	protoUDP = 17
)

func protoNumber(name string) (uint8, bool) {
	switch name {
	case "tcp":
		return protoTCP, true
	case "udp":
		return protoUDP, true
	}
	return 0, false
}

func protoName(n uint8) string {
	switch n {
	case protoTCP:
		return "tcp"
	case protoUDP:
		return "udp"
	}
	return fmt.Sprint(n)
}

// allowElem is an element of the allows set: a group (destination, tag,
// protocol) packed for fast sorting, and a port range.
type allowElem struct {
	group  uint64 // dst<<32 | tag<<16 | proto
	lo, hi uint16
}

func packGroup(dst netip.Addr, tag uint16, proto uint8) uint64 {
	b := dst.As4()
	return uint64(binary.BigEndian.Uint32(b[:]))<<32 | uint64(tag)<<16 | uint64(proto)
}

func (e allowElem) dst() [4]byte {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(e.group>>32))
	return b
}
func (e allowElem) tag() uint16  { return uint16(e.group >> 16) }
func (e allowElem) proto() uint8 { return uint8(e.group) }

func (e allowElem) allow() Allow {
	return Allow{
		DestIP: netip.AddrFrom4(e.dst()), SrcTag: e.tag(), Protocol: protoName(e.proto()),
		StartPort: e.lo, EndPort: e.hi,
	}
}

func compareAllowElem(a, b allowElem) int {
	if c := cmp.Compare(a.group, b.group); c != 0 {
		return c
	}
	if c := cmp.Compare(a.lo, b.lo); c != 0 {
		return c
	}
	return cmp.Compare(a.hi, b.hi)
}

// localID is an element of the local_ids set: which device, source address
// and (derived) source MAC belong together.
type localID struct {
	Veth string
	IP   netip.Addr
}

func compareLocalID(a, b localID) int {
	return cmp.Or(a.IP.Compare(b.IP), strings.Compare(a.Veth, b.Veth))
}

// srcTag is an element of the src_tag map.
type srcTag struct {
	IP  netip.Addr
	Tag uint16
}

func compareSrcTag(a, b srcTag) int {
	return cmp.Or(a.IP.Compare(b.IP), cmp.Compare(a.Tag, b.Tag))
}

// policyPlan is a validated Policy in the form the kernel holds: the
// rules (which depend only on the settings) and the elements of the sets,
// sorted. A plan is never changed once made.
type policyPlan struct {
	enforce  bool // default deny: the allows are enforced
	chains   []chainSpec
	localIDs []localID
	srcTags  []srcTag
	// allows are merged and sorted. The kernel keeps the single ports and
	// the short ranges (isRange), port by port, in a hash set
	// (allow_ports), whose updates and lookups cost the same at any size,
	// and the longer ranges in a concatenated-range set (allow_ranges),
	// whose every update costs time in proportion to its size.
	allows []allowElem
	// allowsSum is the additive hash of allows, which an incremental
	// compile updates with the elements that changed.
	allowsSum sumHash
	// An incremental compile records how allows differ from those of the
	// plan it updated, whose allowsSum is diffBase: the elements gone and
	// those new (both sorted). With them, going from that plan to this
	// one costs the change, not a walk of every allow. hasDiff is false
	// for a full compile.
	hasDiff              bool
	diffBase             sumHash
	allowsDel, allowsAdd []allowElem
	// rulesHash identifies the chains and set declarations; setsHash the
	// elements. Together they are the fingerprint stored in the table.
	rulesHash string
	setsHash  string
}

// shortRange is the most ports an allow element may span and still be
// held in the hash set (allow_ports), one kernel element per port. A
// lookup in the range set costs a new connection about 2% of its time on
// the bench's path (measured against the same allows as single ports; the
// kernel's concatenated-range set type, with its vector instructions and
// their FPU save, in a softirq), and adjacent single ports, which merging
// turns into a range (8080 and 8081 become 8080-8081), are common.
const shortRange = 4

// isRange tells which set an allow element belongs in: the range set
// (allow_ranges) for elements of more than shortRange ports.
func (e allowElem) isRange() bool { return int(e.hi)-int(e.lo) >= shortRange }

// ports returns the single-port elements that hold e in the hash set.
func (e allowElem) ports() []allowElem {
	out := make([]allowElem, 0, int(e.hi)-int(e.lo)+1)
	for p := int(e.lo); p <= int(e.hi); p++ {
		out = append(out, allowElem{e.group, uint16(p), uint16(p)})
	}
	return out
}

// mergePorts turns the single-port elements read from the hash set, sorted,
// back into the elements of a plan: runs of consecutive ports of a group
// are one element (a plan never holds two adjacent elements of a group).
// With each element its index in es of the run's first port is returned.
func mergePorts(es []allowElem) (out []allowElem, first []int) {
	for i, e := range es {
		if n := len(out); n > 0 && out[n-1].group == e.group && int(e.lo) == int(out[n-1].hi)+1 {
			out[n-1].hi = e.hi
			continue
		}
		out = append(out, e)
		first = append(first, i)
	}
	return out, first
}

// fingerprint is what Dataplane.Set stores in the table to recognise a table
// that already has this plan.
func (p *policyPlan) fingerprint() string {
	return "trellis policy v1 rules=" + p.rulesHash + " sets=" + p.setsHash
}

// compilePolicy validates p and turns it into a plan.
func compilePolicy(p Policy) (*policyPlan, error) { return compileWith(p, nil) }

// compileWith is compilePolicy, hashing the rules through rules (nil:
// hash them afresh).
func compileWith(p Policy, rules *rulesMemo) (*policyPlan, error) {
	plan, err := compileSettings(p)
	if err != nil {
		return nil, err
	}
	// Allows are checked even when not enforcing: they are still the
	// caller's mistakes.
	elems, err := allowElems(p.Allows)
	if err != nil {
		return nil, err
	}
	if p.Enforce {
		plan.allows = mergeAllows(elems)
	}
	for _, e := range plan.allows {
		plan.allowsSum.add(e)
	}
	plan.finish(rules)
	return plan, nil
}

// compileSettings makes a plan with the chains and the locals of p, and no
// allows.
func compileSettings(p Policy) (*policyPlan, error) {
	rate := p.LogRate
	if rate == 0 {
		rate = DefaultLogRate
	}
	if rate < 0 {
		return nil, fmt.Errorf("log rate %d is negative", p.LogRate)
	}
	port := cmp.Or(p.VXLANPort, DefaultPort)
	if port < 1 || port > 65535 {
		return nil, fmt.Errorf("VXLAN port %d is not a UDP port", p.VXLANPort)
	}
	plan := &policyPlan{enforce: p.Enforce, chains: policyChains(p.Enforce, p.DenyLogGroup, p.AllowLogGroup, rate, uint16(port))}

	plan.localIDs = make([]localID, 0, len(p.Locals))
	for _, l := range p.Locals {
		if !l.IP.Is4() || l.IP.IsUnspecified() {
			return nil, fmt.Errorf("local %v: not a usable IPv4 address", l.IP)
		}
		veth := l.HostVeth
		if veth == "" {
			veth = HostVethName(l.IP)
		}
		if err := checkIfName(veth); err != nil {
			return nil, fmt.Errorf("local %s: %w", l.IP, err)
		}
		if !strings.HasPrefix(veth, hostVethPrefix) {
			return nil, fmt.Errorf("local %s: host veth %q does not start with %q, so its traffic would not be policed", l.IP, veth, hostVethPrefix)
		}
		plan.localIDs = append(plan.localIDs, localID{veth, l.IP})
		if l.Tag != 0 {
			plan.srcTags = append(plan.srcTags, srcTag{l.IP, l.Tag})
		}
	}
	slices.SortFunc(plan.localIDs, compareLocalID)
	for i := 1; i < len(plan.localIDs); i++ {
		if plan.localIDs[i].IP == plan.localIDs[i-1].IP {
			return nil, fmt.Errorf("local %s listed twice", plan.localIDs[i].IP)
		}
	}
	veths := make(map[string]netip.Addr, len(plan.localIDs))
	for _, id := range plan.localIDs {
		if other, ok := veths[id.Veth]; ok {
			return nil, fmt.Errorf("locals %s and %s share host veth %s", other, id.IP, id.Veth)
		}
		veths[id.Veth] = id.IP
	}
	slices.SortFunc(plan.srcTags, compareSrcTag)
	return plan, nil
}

// allowElems validates allows and packs them.
func allowElems(allows []Allow) ([]allowElem, error) {
	elems := make([]allowElem, 0, len(allows))
	for _, a := range allows {
		proto, ok := protoNumber(a.Protocol)
		switch {
		case !a.DestIP.Is4():
			return nil, fmt.Errorf("allow %v: destination is not an IPv4 address", a)
		case a.SrcTag == 0:
			return nil, fmt.Errorf("allow %v: source tag 0 is the tag of unmarked traffic", a)
		case !ok:
			return nil, fmt.Errorf("allow %v: protocol %q is not tcp or udp", a, a.Protocol)
		case a.StartPort == 0 || a.EndPort < a.StartPort:
			return nil, fmt.Errorf("allow %v: ports are not a range within 1-65535", a)
		}
		elems = append(elems, allowElem{packGroup(a.DestIP, a.SrcTag, proto), a.StartPort, a.EndPort})
	}
	return elems, nil
}

// finish computes the fingerprint of a plan whose other fields are set,
// hashing the rules through rules (nil: afresh).
func (p *policyPlan) finish(rules *rulesMemo) {
	p.rulesHash = rules.hash(p.chains)
	h := setHash{0x243f6a8885a308d3, 0x13198a2e03707344}
	for _, id := range p.localIDs {
		h.add(uint64(binary.BigEndian.Uint32(id.IP.AsSlice())) | 1<<40)
		for b := range slices.Chunk([]byte(id.Veth), 8) {
			var w [8]byte
			copy(w[:], b)
			h.add(binary.LittleEndian.Uint64(w[:]))
		}
	}
	for _, t := range p.srcTags {
		h.add(uint64(binary.BigEndian.Uint32(t.IP.AsSlice())) | uint64(t.Tag)<<32 | 2<<56)
	}
	h.add(p.allowsSum[0])
	h.add(p.allowsSum[1])
	p.setsHash = fmt.Sprintf("%016x%016x", h[0], h[1])
}

// rulesMemo remembers the hash of the rules last hashed: a cell's rules
// change only with its settings, so successive plans hash the same text.
type rulesMemo struct{ text, sum string }

// hash fingerprints the rendered rules; a nil memo hashes them afresh.
func (m *rulesMemo) hash(chains []chainSpec) string {
	text := renderRules(chains)
	if m != nil && m.text == text && m.sum != "" {
		return m.sum
	}
	sum := sha256.Sum256([]byte(text))
	h := hex.EncodeToString(sum[:8])
	if m != nil {
		*m = rulesMemo{text, h}
	}
	return h
}

// planCache compiles a cell's successive policies. When the allows differ
// from the previous call's in one stretch (an allow added, removed or
// changed anywhere, as a controller's sorted list changes), it updates the
// previous plan instead of compiling all allows again, so that the cost of
// a change does not grow with the number of allows present. It must
// produce exactly what compilePolicy does.
type planCache struct {
	input   []Allow                // the previous allows, validated
	enforce bool                   // the previous Enforce
	groups  map[uint64][]allowElem // input allows by group, unmerged
	plan    *policyPlan
	rules   rulesMemo
	updates int // incremental compiles, for tests
}

// incrementalMax is the most allows that may differ for planCache to
// update rather than recompile.
const incrementalMax = 64

func (c *planCache) compile(p Policy) (*policyPlan, error) {
	if c.plan == nil || !p.Enforce || !c.enforce {
		return c.full(p)
	}
	pre := 0
	for pre < len(c.input) && pre < len(p.Allows) && c.input[pre] == p.Allows[pre] {
		pre++
	}
	suf := 0
	for suf < len(c.input)-pre && suf < len(p.Allows)-pre && c.input[len(c.input)-1-suf] == p.Allows[len(p.Allows)-1-suf] {
		suf++
	}
	oldMid, newMid := c.input[pre:len(c.input)-suf], p.Allows[pre:len(p.Allows)-suf]
	if len(oldMid)+len(newMid) > incrementalMax {
		return c.full(p)
	}
	plan, err := compileSettings(p)
	if err != nil {
		return nil, err
	}
	added, err := allowElems(newMid)
	if err != nil {
		return nil, err
	}
	removed, err := allowElems(oldMid)
	if err != nil {
		return nil, err // cannot happen: they were checked when added
	}

	// Nothing fails from here on: update the cache.
	affected := make([]uint64, 0, len(added)+len(removed))
	for _, e := range removed {
		g := c.groups[e.group]
		if i := slices.Index(g, e); i >= 0 {
			c.groups[e.group] = slices.Delete(g, i, i+1)
		}
		affected = append(affected, e.group)
	}
	for _, e := range added {
		c.groups[e.group] = append(c.groups[e.group], e)
		affected = append(affected, e.group)
	}
	slices.Sort(affected)
	affected = slices.Compact(affected)

	old := c.plan.allows
	plan.allows = make([]allowElem, 0, len(old)+len(added))
	plan.allowsSum = c.plan.allowsSum
	plan.hasDiff, plan.diffBase = true, c.plan.allowsSum
	i := 0
	for _, g := range affected {
		j, _ := slices.BinarySearchFunc(old[i:], g, func(e allowElem, g uint64) int { return cmp.Compare(e.group, g) })
		j += i
		plan.allows = append(plan.allows, old[i:j]...)
		from := j
		for ; j < len(old) && old[j].group == g; j++ {
			plan.allowsSum.sub(old[j])
		}
		merged := mergeAllows(slices.Clone(c.groups[g]))
		for _, e := range merged {
			plan.allows = append(plan.allows, e)
			plan.allowsSum.add(e)
		}
		// Groups are visited in order, so the differences come sorted.
		del, add := diffSorted(old[from:j], merged, compareAllowElem)
		plan.allowsDel = append(plan.allowsDel, del...)
		plan.allowsAdd = append(plan.allowsAdd, add...)
		if len(c.groups[g]) == 0 {
			delete(c.groups, g)
		}
		i = j
	}
	plan.allows = append(plan.allows, old[i:]...)
	plan.finish(&c.rules)
	c.input = slices.Replace(c.input, pre, len(c.input)-suf, newMid...)
	c.plan = plan
	c.updates++
	return plan, nil
}

// full compiles p from scratch and remembers it.
func (c *planCache) full(p Policy) (*policyPlan, error) {
	plan, err := compileWith(p, &c.rules)
	if err != nil {
		return nil, err
	}
	*c = planCache{enforce: p.Enforce, plan: plan, rules: c.rules}
	if p.Enforce {
		c.input = slices.Clone(p.Allows)
		elems, _ := allowElems(p.Allows) // valid: compilePolicy checked them
		c.groups = make(map[uint64][]allowElem, len(plan.allows))
		for _, e := range elems {
			c.groups[e.group] = append(c.groups[e.group], e)
		}
	}
	return plan, nil
}

// mergeAllows sorts elems and merges overlapping and adjacent port ranges
// of the same group: the kernel refuses overlapping intervals.
func mergeAllows(elems []allowElem) []allowElem {
	sortAllows(elems)
	out := elems[:0]
	for _, e := range elems {
		if n := len(out); n > 0 && out[n-1].group == e.group && int(e.lo) <= int(out[n-1].hi)+1 {
			out[n-1].hi = max(out[n-1].hi, e.hi)
			continue
		}
		out = append(out, e)
	}
	return slices.Clip(out)
}

// sortAllows sorts es by group and lo. It is a radix sort, which
// skips digits that are the same in every element: with 10,000 allows it
// is several times faster than a comparison sort, and Dataplane.Set sorts
// every time it is called.
func sortAllows(es []allowElem) {
	if len(es) < 256 || slices.IsSortedFunc(es, compareAllowElem) {
		slices.SortFunc(es, compareAllowElem)
		return
	}
	// Digits from the least significant: lo, then the 7 bytes of group
	// (the 8th is always 0). Elements that differ only in hi stay in
	// input order, which mergeAllows does not mind.
	digit := func(e allowElem, d int) byte {
		if d < 2 {
			return byte(e.lo >> (8 * d))
		}
		return byte(e.group >> (8 * (d - 2)))
	}
	src, dst := es, make([]allowElem, len(es))
	for d := range 9 {
		var count [256]int
		for _, e := range src {
			count[digit(e, d)]++
		}
		if count[digit(src[0], d)] == len(src) {
			continue
		}
		pos := 0
		for i, c := range count {
			count[i] = pos
			pos += c
		}
		for _, e := range src {
			k := digit(e, d)
			dst[count[k]] = e
			count[k]++
		}
		src, dst = dst, src
	}
	if &src[0] != &es[0] {
		copy(es, src)
	}
}

// setHash hashes a sequence of words in two independent 64-bit lanes. It
// is not cryptographic, only a change detector: the table belongs to
// trellis, and a false "unchanged" needs a 2^-128 accident.
type setHash [2]uint64

func (h *setHash) add(v uint64) {
	h[0] = mix64(h[0] ^ v)
	h[1] = mix64(h[1] + v*0x9e3779b97f4a7c15)
}

// sumHash hashes a set of allow elements as the sum of their hashes, so
// that adding and removing elements updates it.
type sumHash [2]uint64

func elemHash(e allowElem) (uint64, uint64) {
	a := mix64(e.group ^ 0x452821e638d01377)
	b := mix64(a ^ (uint64(e.lo)<<16 | uint64(e.hi)))
	return b, mix64(b ^ 0xbe5466cf34e90c6c)
}

func (s *sumHash) add(e allowElem) {
	a, b := elemHash(e)
	s[0] += a
	s[1] += b
}

func (s *sumHash) sub(e allowElem) {
	a, b := elemHash(e)
	s[0] -= a
	s[1] -= b
}

// mix64 is the splitmix64 finalizer.
func mix64(z uint64) uint64 {
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// diffSorted returns the elements of the sorted slice have that are not in
// the sorted slice want, and those of want that are not in have.
func diffSorted[T any](have, want []T, compare func(a, b T) int) (del, add []T) {
	i, j := 0, 0
	for i < len(have) && j < len(want) {
		switch c := compare(have[i], want[j]); {
		case c < 0:
			del = append(del, have[i])
			i++
		case c > 0:
			add = append(add, want[j])
			j++
		default:
			i++
			j++
		}
	}
	del = append(del, have[i:]...)
	add = append(add, want[j:]...)
	return del, add
}

// Chains, rules and the terms they are made of. Every term prints as the
// nft syntax with the same meaning and is turned into expressions by
// policy_linux.go; the golden tests compare the text.

// Names of the table's sets, counters and chains.
const (
	setLocalIDs    = "local_ids"
	setSrcTag      = "src_tag"
	setAllowPorts  = "allow_ports"
	setAllowRanges = "allow_ranges"

	counterSpoofed       = "spoofed"
	counterDenied        = "denied"
	counterDeniedLogged  = "denied_logged"
	counterAllowed       = "allowed"
	counterAllowedLogged = "allowed_logged"

	chainPrerouting   = "prerouting"
	chainOutput       = "output"
	chainForward      = "forward"
	chainFromInstance = "from_instance"
	chainToInstance   = "to_instance"
	chainAllowNew     = "allow_new"
	chainDenyNew      = "deny_new"
	// chainFingerprint is never jumped to: its one rule carries the
	// fingerprint of the plan the table holds, as a comment.
	chainFingerprint = "fingerprint"
)

// policyCounters are the table's named counters, in the order they are
// declared.
var policyCounters = []string{counterSpoofed, counterDenied, counterDeniedLogged, counterAllowed, counterAllowedLogged}

type chainSpec struct {
	name  string
	hook  string // "prerouting", "forward" or "output"; "" for a regular chain
	prio  int    // for base chains
	rules []rule
}

type rule []term

type term interface{ String() string }

type (
	// ifPrefix matches the input (In) or output device name by prefix,
	// or (Not) when it does not start with Prefix.
	ifPrefix struct {
		In     bool
		Prefix string
		Not    bool
	}
	// devGroup matches the input (In) or output device's group, or with
	// Not any other group.
	devGroup struct {
		In    bool
		Group uint32
		Not   bool
	}
	// nfprotoIPv4 matches IPv4 packets.
	nfprotoIPv4 struct{}
	// inLocalIDs matches when input device, source address and source
	// MAC are an element of local_ids.
	inLocalIDs struct{}
	// markFromSrcTag sets the packet mark to the source address's tag;
	// the rule stops here for an address without one.
	markFromSrcTag struct{}
	// ctState matches any of the conntrack states (bits of expr.CtState*).
	ctState struct{ Bits uint32 }
	// inAllows matches when destination, tag, protocol and destination
	// port are an element of the set Set.
	inAllows struct{ Set string }
	// l4proto matches the transport protocol.
	l4proto struct{ Proto uint8 }
	// tcpSynOnly matches TCP packets with SYN set and ACK not: the first
	// packet of a connection.
	tcpSynOnly struct{}
	// tcpNotSynOnly matches the other TCP packets: those that cannot open
	// a connection.
	tcpNotSynOnly struct{}
	// udpDport matches UDP packets to Port.
	udpDport struct{ Port uint16 }
	// notrack exempts the packet from connection tracking.
	notrack struct{}
	// limitRate passes Rate packets per second with a burst of the same.
	limitRate  struct{ Rate int }
	counterRef struct{ Name string }
	logGroup   struct {
		Group  uint16
		Prefix string
	}
	// ctMarkFromTag saves the packet's tag bits and ctMarkPoliced as the
	// connection's mark, so that its flows can be found by source tag
	// later (Dataplane.CutFlows, and Dataplane.Set when it revokes).
	ctMarkFromTag struct{}
	verdict       struct {
		Kind  string // accept, drop, jump, goto
		Chain string
	}
	rejectTCPReset    struct{}
	rejectPortUnreach struct{}
	// comment is rule user data, not a match; nft prints it last.
	comment struct{ Text string }
)

// Conntrack state bits, as in expr.CtStateBit*.
const (
	ctInvalid     = 1
	ctEstablished = 2
	ctRelated     = 4
	ctNew         = 8
)

// ifWords starts an interface match in nft syntax: "iif"+what (in) or
// "oif"+what, a space, and "!= " for not.
func ifWords(in, not bool, what string) string {
	dir, op := "oif"+what, ""
	if in {
		dir = "iif" + what
	}
	if not {
		op = "!= "
	}
	return dir + " " + op
}

func (t ifPrefix) String() string {
	return fmt.Sprintf("%s%q", ifWords(t.In, t.Not, "name"), t.Prefix+"*")
}
func (t devGroup) String() string {
	return fmt.Sprintf("meta %s0x%08x", ifWords(t.In, t.Not, "group"), t.Group)
}
func (nfprotoIPv4) String() string { return "meta nfproto ipv4" }
func (inLocalIDs) String() string {
	return "iifname . ip saddr . ether saddr @" + setLocalIDs
}
func (markFromSrcTag) String() string { return "meta mark set ip saddr map @" + setSrcTag }
func (t ctState) String() string {
	var names []string
	for _, s := range []struct {
		bit  uint32
		name string
	}{{ctInvalid, "invalid"}, {ctEstablished, "established"}, {ctRelated, "related"}, {ctNew, "new"}} {
		if t.Bits&s.bit != 0 {
			names = append(names, s.name)
		}
	}
	return "ct state " + strings.Join(names, ",")
}
func (t inAllows) String() string {
	return fmt.Sprintf("ip daddr . meta mark & 0x%08x . meta l4proto . th dport @%s", TagMask, t.Set)
}
func (t l4proto) String() string  { return "meta l4proto " + protoName(t.Proto) }
func (t udpDport) String() string { return fmt.Sprintf("udp dport %d", t.Port) }
func (tcpSynOnly) String() string { return "tcp flags & (syn | ack) == syn" }
func (tcpNotSynOnly) String() string {
	return "meta l4proto tcp tcp flags & (syn | ack) != syn"
}
func (notrack) String() string { return "notrack" }
func (t limitRate) String() string {
	return fmt.Sprintf("limit rate %d/second burst %d packets", t.Rate, t.Rate)
}
func (t counterRef) String() string { return fmt.Sprintf("counter name %q", t.Name) }
func (t logGroup) String() string {
	return fmt.Sprintf("log prefix %q group %d", t.Prefix, t.Group)
}
func (ctMarkFromTag) String() string {
	return fmt.Sprintf("ct mark set meta mark & 0x%08x | 0x%08x", TagMask, ctMarkPoliced)
}
func (t verdict) String() string {
	if t.Chain != "" {
		return t.Kind + " " + t.Chain
	}
	return t.Kind
}
func (rejectTCPReset) String() string    { return "reject with tcp reset" }
func (rejectPortUnreach) String() string { return "reject with icmpx port-unreachable" }
func (t comment) String() string         { return fmt.Sprintf("comment %q", t.Text) }

// policyChains returns the table's chains for the given settings. Only
// these settings change rules; everything else is set elements.
func policyChains(enforce bool, denyLog, allowLog uint16, rate int, vxlanPort uint16) []chainSpec {
	allowNew := []rule{}
	if allowLog != 0 {
		allowNew = append(allowNew, rule{ctState{ctNew}, limitRate{rate}, counterRef{counterAllowedLogged}, logGroup{allowLog, LogPrefixAllowed}})
	}
	allowNew = append(allowNew, rule{ctMarkFromTag{}, counterRef{counterAllowed}, verdict{Kind: "accept"}})

	var toInstance, denyNew []rule
	if enforce {
		toInstance = []rule{
			{inAllows{setAllowPorts}, verdict{"goto", chainAllowNew}},
			{inAllows{setAllowRanges}, verdict{"goto", chainAllowNew}},
			{verdict{"goto", chainDenyNew}},
		}
		denyNew = []rule{{counterRef{counterDenied}}}
		if denyLog != 0 {
			denyNew = append(denyNew, rule{limitRate{rate}, counterRef{counterDeniedLogged}, logGroup{denyLog, LogPrefixDenied}})
		}
		denyNew = append(denyNew,
			rule{l4proto{protoTCP}, rejectTCPReset{}},
			rule{rejectPortUnreach{}},
		)
	} else {
		toInstance = []rule{{verdict{"goto", chainAllowNew}}}
	}

	chains := []chainSpec{
		// Before conntrack (raw), every packet from an instance is checked:
		// its device, source address and source MAC must belong together.
		//
		// Only the packets the destination checks against the allows carry
		// the tag in their mark: a TCP SYN (with ACK clear), and every
		// packet that is not TCP. These are all the packets that can open
		// a connection (conntrack is strict: nf_conntrack_tcp_loose is 0,
		// so no other TCP packet creates an entry). The rest of a TCP
		// connection passes by conntrack and goes unmarked, and that
		// matters: a packet with a mark cannot use the VXLAN device's
		// route cache (ip_tunnel_dst_cache_usable), so every marked
		// packet costs the sending cell a full route lookup of the
		// underlay. The choice is made on the packet's flags, before
		// conntrack: marking by conntrack state (established ones
		// skipping) was tried and undone — new connections' SYNs were seen
		// leaving unmarked and refused, about once per 6,000 connections,
		// most likely SYNs reusing the tuple of an entry still in
		// TIME_WAIT, which conntrack can classify as established.
		//
		// The overlay's own packets on the underlay (VXLAN, both ways) are
		// exempt from conntrack; an instance's packets never are, whatever
		// their port: those of local instances go to their checks, and
		// those of remote ones, decapsulated, come in on the VTEP.
		//
		// Every packet the cell forwards or receives walks these chains,
		// so they are ordered for the fewest expressions per packet (each
		// costs, and on a connection's few packets the sum shows in the
		// connection rate). They dispatch on device groups (HostVethGroup,
		// VTEPGroup), one 4-byte load each, and only what is in neither
		// group pays for the name: a packet from an instance goes to its
		// checks on the first rule, a decapsulated one leaves the chain on
		// the second, and a packet forwarded to the VTEP is accepted by
		// the forward chain's first rule. A device named like a host veth
		// but outside the group (made by something other than
		// AddContainer, or before groups were used, until Set regroups it)
		// is still checked and policed, at the cost of the name: the
		// groups only make the checks cheaper, never skip them.
		{name: chainPrerouting, hook: "prerouting", prio: -300, rules: []rule{
			{devGroup{In: true, Group: HostVethGroup}, verdict{"goto", chainFromInstance}},
			{devGroup{In: true, Group: VTEPGroup}, verdict{Kind: "accept"}},
			{ifPrefix{In: true, Prefix: hostVethPrefix}, verdict{"goto", chainFromInstance}},
			{udpDport{vxlanPort}, notrack{}},
		}},
		{name: chainOutput, hook: "output", prio: -300, rules: []rule{
			{udpDport{vxlanPort}, notrack{}},
		}},
		{name: chainFromInstance, rules: []rule{
			{nfprotoIPv4{}, tcpNotSynOnly{}, inLocalIDs{}, verdict{Kind: "accept"}},
			{nfprotoIPv4{}, inLocalIDs{}, markFromSrcTag{}, verdict{Kind: "accept"}},
			{nfprotoIPv4{}, inLocalIDs{}, verdict{Kind: "accept"}},
			{counterRef{counterSpoofed}, verdict{Kind: "drop"}},
		}},
		// A SYN to a local instance is checked against the allows even
		// when conntrack calls it established: a SYN reusing the tuple of
		// an established entry (one left by an instance that is gone, its
		// address now another app's) is "ignored" by conntrack and would
		// otherwise pass as part of the old, allowed connection.
		{name: chainForward, hook: "forward", prio: 0, rules: []rule{
			{devGroup{Group: VTEPGroup}, verdict{Kind: "accept"}},
			{devGroup{Group: HostVethGroup, Not: true}, ifPrefix{Prefix: hostVethPrefix, Not: true}, verdict{Kind: "accept"}},
			{tcpSynOnly{}, nfprotoIPv4{}, verdict{"goto", chainToInstance}},
			{ctState{ctEstablished | ctRelated}, verdict{Kind: "accept"}},
			{nfprotoIPv4{}, verdict{"goto", chainToInstance}},
			{verdict{Kind: "drop"}},
		}},
		{name: chainToInstance, rules: toInstance},
		{name: chainAllowNew, rules: allowNew},
	}
	if enforce {
		chains = append(chains, chainSpec{name: chainDenyNew, rules: denyNew})
	}
	return append(chains, chainSpec{name: chainFingerprint, rules: []rule{{verdict{Kind: "return"}}}})
}

var priorityNames = map[int]string{-300: "raw", -150: "mangle", 0: "filter"}

// renderRules prints the declarations and chains of the table, without
// set elements.
func renderRules(chains []chainSpec) string {
	var b strings.Builder
	renderTable(&b, chains, nil, "")
	return b.String()
}

// renderTable prints the table in nft syntax. With plan nil the sets are
// printed without elements; fingerprint, if not "", is the comment of the
// fingerprint chain's rule.
func renderTable(b *strings.Builder, chains []chainSpec, plan *policyPlan, fingerprint string) {
	fmt.Fprintf(b, "table inet %s {\n", PolicyTable)
	for _, c := range policyCounters {
		fmt.Fprintf(b, "\tcounter %s {\n\t}\n\n", c)
	}

	b.WriteString("\tset " + setLocalIDs + " {\n\t\ttype ifname . ipv4_addr . ether_addr\n")
	if plan != nil {
		renderElements(b, len(plan.localIDs), func(i int) string {
			id := plan.localIDs[i]
			return fmt.Sprintf("%q . %s . %s", id.Veth, id.IP, containerMAC(id.IP))
		})
	}
	b.WriteString("\t}\n\n")

	b.WriteString("\tmap " + setSrcTag + " {\n\t\ttype ipv4_addr : mark\n")
	if plan != nil {
		renderElements(b, len(plan.srcTags), func(i int) string {
			return fmt.Sprintf("%s : 0x%08x", plan.srcTags[i].IP, plan.srcTags[i].Tag)
		})
	}
	b.WriteString("\t}\n")

	for _, set := range []struct {
		name, flags string
		elems       []allowElem
	}{{setAllowPorts, "", expandPorts(planAllows(plan, false))}, {setAllowRanges, "\t\tflags interval\n", planAllows(plan, true)}} {
		b.WriteString("\n\tset " + set.name + " {\n\t\ttype ipv4_addr . mark . inet_proto . inet_service\n" + set.flags + "\t\tcounter\n")
		if plan != nil {
			renderElements(b, len(set.elems), func(i int) string {
				e := set.elems[i]
				ports := fmt.Sprint(e.lo)
				if e.hi != e.lo {
					ports += fmt.Sprintf("-%d", e.hi)
				}
				return fmt.Sprintf("%s . 0x%08x . %s . %s", netip.AddrFrom4(e.dst()), e.tag(), protoName(e.proto()), ports)
			})
		}
		b.WriteString("\t}\n")
	}

	for _, c := range chains {
		fmt.Fprintf(b, "\n\tchain %s {\n", c.name)
		if c.hook != "" {
			fmt.Fprintf(b, "\t\ttype filter hook %s priority %s; policy accept;\n", c.hook, priorityNames[c.prio])
		}
		for _, r := range c.rules {
			if c.name == chainFingerprint && fingerprint != "" {
				r = append(r[:len(r):len(r)], comment{fingerprint})
			}
			b.WriteString("\t\t" + r.String() + "\n")
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
}

func renderElements(b *strings.Builder, n int, elem func(i int) string) {
	if n == 0 {
		return
	}
	b.WriteString("\t\telements = {")
	for i := range n {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString("\n\t\t\t" + elem(i))
	}
	b.WriteString("\n\t\t}\n")
}

func (r rule) String() string {
	parts := make([]string, len(r))
	for i, t := range r {
		parts[i] = t.String()
	}
	return strings.Join(parts, " ")
}

// planPolicy renders the table Dataplane.Set makes for p, in nft syntax, with
// the fingerprint it stores. It does no I/O.
func planPolicy(p Policy) (string, error) {
	plan, err := compilePolicy(p)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	renderTable(&b, plan.chains, plan, plan.fingerprint())
	return b.String(), nil
}

// expandPorts returns the single-port elements that hold es in the hash
// set.
func expandPorts(es []allowElem) []allowElem {
	var out []allowElem
	for _, e := range es {
		out = append(out, e.ports()...)
	}
	return out
}

// planAllows returns the allows of plan that are (or are not) ranges.
func planAllows(p *policyPlan, ranges bool) []allowElem {
	if p == nil {
		return nil
	}
	var out []allowElem
	for _, e := range p.allows {
		if e.isRange() == ranges {
			out = append(out, e)
		}
	}
	return out
}

// allowsDiff returns the allows of have that want does not hold, and those
// of want that have does not: from want's record when want was compiled
// as an update of have's allows, else by walking both.
func allowsDiff(have, want *policyPlan) (del, add []allowElem) {
	if want.hasDiff && want.diffBase == have.allowsSum {
		return want.allowsDel, want.allowsAdd
	}
	return diffSorted(have.allows, want.allows, compareAllowElem)
}

// revokesFrom reports whether going from the plan have to want takes
// away a port have allowed (see revokes): from the allows want's record
// says went, when it has one for have's allows.
func revokesFrom(have, want *policyPlan) bool {
	if !want.hasDiff || want.diffBase != have.allowsSum {
		return revokes(have.allows, want.allows)
	}
	for _, e := range want.allowsDel {
		// The first allow of want that could cover e: of e's group, and
		// ending at or after e's first port. Merged allows of a group do
		// not overlap, so they are sorted by their ends too.
		i, _ := slices.BinarySearchFunc(want.allows, e, func(w, e allowElem) int {
			return cmp.Or(cmp.Compare(w.group, e.group), cmp.Compare(w.hi, e.lo))
		})
		if i == len(want.allows) || want.allows[i].group != e.group || want.allows[i].lo > e.lo || want.allows[i].hi < e.hi {
			return true
		}
	}
	return false
}

// revokes reports whether going from the allows have to want (both
// merged and sorted, as in a plan) takes anything away: a port of have
// that want does not cover.
func revokes(have, want []allowElem) bool {
	j := 0
	for _, e := range have {
		for j < len(want) && (want[j].group < e.group || want[j].group == e.group && want[j].hi < e.lo) {
			j++
		}
		if j == len(want) || want[j].group != e.group || want[j].lo > e.lo || want[j].hi < e.hi {
			return true
		}
	}
	return false
}
