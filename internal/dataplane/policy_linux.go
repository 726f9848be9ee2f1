package dataplane

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	mdnetlink "github.com/mdlayher/netlink"
	"github.com/trellis-c2c/trellis/internal/netns"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// policyTable is the table every policy call works on.
var policyTable = &nftables.Table{Name: PolicyTable, Family: nftables.TableFamilyINet}

// Set declarations, the kernel side of renderTable's.
var (
	localIDsType = nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeIPAddr, nftables.TypeEtherAddr)
	allowsType   = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeMark, nftables.TypeInetProto, nftables.TypeInetService)
)

func newPolicySets() map[string]*nftables.Set {
	return map[string]*nftables.Set{
		setLocalIDs:   {Table: policyTable, Name: setLocalIDs, KeyType: localIDsType, Concatenation: true},
		setSrcTag:     {Table: policyTable, Name: setSrcTag, KeyType: nftables.TypeIPAddr, DataType: nftables.TypeMark, IsMap: true},
		setAllowPorts: {Table: policyTable, Name: setAllowPorts, KeyType: allowsType, Concatenation: true, Counter: true},
		setAllowRanges: {Table: policyTable, Name: setAllowRanges, KeyType: allowsType, Concatenation: true,
			Interval: true, Counter: true},
	}
}

// policySocketBuffer is the netlink socket buffer size for policy
// batches: google/nftables sends a whole batch in one sendmsg, and 10,000
// allows are about 600 KiB.
const policySocketBuffer = 16 << 20

// elemChunk bounds the elements per message: a message's element list is
// one netlink attribute, whose length is 16 bits.
const elemChunk = 512

// openPolicyConn opens an nftables connection in the namespace at path;
// the function it returns closes it.
func openPolicyConn(path string) (*nftables.Conn, func(), error) {
	c, err := dialNFT(path)
	if err != nil {
		return nil, nil, err
	}
	return c, func() { c.CloseLasting() }, nil
}

// dialNFT opens a lasting nftables connection in the namespace at path.
// The socket is made in New, in the namespace, so the namespace's handle
// is closed before it returns.
func dialNFT(path string) (*nftables.Conn, error) {
	fd, err := vnetns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", path, err)
	}
	defer fd.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(fd)), nftables.AsLasting(), nftables.WithSockOptions(bigBuffers))
	if err != nil {
		return nil, fmt.Errorf("nftables in netns %s: %w", path, err)
	}
	return c, nil
}

// nftConn is the connection Dataplane.nft keeps.
type nftConn = nftables.Conn

// tablesConn returns the nftables connection Set applies the policy and
// egress tables through, opening it in the cell's namespace if none is
// open. The caller holds d.mu, and calls dropTablesConn when an operation
// on it failed, so that a connection left in an unknown state (a reply
// not read, a message not encoded) is not used again.
//
// It stays open between calls because closing one is not cheap: when a
// netfilter netlink socket closes, nf_tables' release notifier
// (nft_rcv_nl_event) takes the namespace's commit mutex and waits for the
// deferred destruction of earlier commits (anything a commit deleted: a
// replaced fingerprint rule, a removed element, a replaced table), which
// waits for an RCU grace period. That wait was most of a CNI ADD's policy
// step: the close took 8.8 ms p50 of the step's 11.6 under the CNI
// bench's load, against about 0.2 ms to open a connection and 0.3 ms for
// the commit itself.
func (d *Dataplane) tablesConn() (*nftables.Conn, error) {
	if d.nft != nil {
		return d.nft, nil
	}
	c, err := dialNFT(d.ns)
	if err != nil {
		return nil, err
	}
	d.nft = c
	return c, nil
}

// dropTablesConn closes the connection tablesConn keeps, if any. The
// close runs apart, for the reason tablesConn gives (a commit in the
// namespace meanwhile waits for it on the kernel's mutex, but the caller
// does not). The caller holds d.mu.
func (d *Dataplane) dropTablesConn() {
	if c := d.nft; c != nil {
		d.nft = nil
		go c.CloseLasting()
	}
}

// bigBuffers raises the socket's buffers past net.core.[rw]mem_max, which
// root may do, and falls back to the capped size.
func bigBuffers(c *mdnetlink.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		for _, o := range []int{unix.SO_SNDBUFFORCE, unix.SO_RCVBUFFORCE} {
			if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o, policySocketBuffer); e != nil {
				serr = e
			}
		}
	})
	if err == nil && serr != nil {
		err = c.SetWriteBuffer(policySocketBuffer)
		if err == nil {
			err = c.SetReadBuffer(policySocketBuffer)
		}
	}
	if err != nil {
		return fmt.Errorf("raise netlink socket buffers: %w", err)
	}
	return nil
}

// applyPolicy makes the trellis table enforce p and reports whether it
// changed anything, with the plan it applied.
//
// It reads the fingerprint the table holds and writes nothing when it is
// p's. Otherwise it sends one netlink batch, which the kernel applies
// atomically: packets see the old rules or the new, never a mix. When the
// rules are unchanged and this value applied the table's current state,
// the batch holds only the set elements that differ; otherwise it deletes
// and recreates the whole table (which resets its counters). With verify,
// it reads back the whole table (every set element, the number of rules in
// every chain, the fingerprint) instead of trusting the fingerprint, and
// replaces the table if anything differs from p.
//
// A change of a few allows costs about the same with 100 or 10,000
// present, provided the rest of p.Allows keeps its order from the
// previous call; single-port allows change in constant time in the
// kernel, while every change of port ranges costs time in proportion to
// the number of ranges (the kernel's concatenated-range sets rebuild
// their lookup tables on every commit).
func (d *Dataplane) applyPolicy(ctx context.Context, p Policy, verify bool) (plan *policyPlan, changed bool, err error) {
	verb := "set policy"
	if verify {
		verb = "verify policy"
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("%s in %s: %w", verb, d.ns, err)
		}
	}()
	plan, err = d.compiler.compile(p)
	if err != nil {
		return nil, false, err
	}

	c, err := d.tablesConn()
	if err != nil {
		return nil, false, err
	}
	defer func() {
		if err != nil {
			d.dropTablesConn()
		}
	}()
	have, handle, found := readFingerprint(c)
	if verify {
		k, err := readPolicy(c)
		found = err == nil && k.matches(plan)
		have = plan.fingerprint()
		if !found {
			d.trusted = nil // the table is not what this value made
		}
	}
	if found && have == plan.fingerprint() {
		d.trusted = plan
		return plan, false, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	if found && d.trusted != nil && have == d.trusted.fingerprint() && d.trusted.rulesHash == plan.rulesHash {
		d.updates++
		err = updatePolicySets(c, d.trusted, plan, handle)
	} else {
		// A read that failed may have left replies unread on the
		// connection: the replacement goes through a fresh one, so that
		// its acknowledgements cannot be confused with them.
		d.dropTablesConn()
		if c, err = d.tablesConn(); err != nil {
			return nil, false, err
		}
		d.replaces++
		d.groupDevices()
		err = replacePolicyTable(c, plan)
	}
	if err == nil {
		err = c.Flush()
	}
	if err != nil {
		// A failed batch changes nothing, but start afresh anyway.
		d.trusted = nil
		return nil, false, err
	}
	d.trusted = plan
	return plan, true, nil
}

// groupDevices puts every host veth (by its name prefix) in HostVethGroup
// and the VTEP in VTEPGroup where they are not yet: devices made before
// groups were used, or by something other than AddContainer and the
// overlay. The table polices such devices anyway, by name and at a higher
// cost per packet, so a failure here is logged and the table is written
// all the same.
func (d *Dataplane) groupDevices() {
	path := d.ns
	if path == selfNetNS {
		path = ""
	}
	k, err := openRoute(path)
	if err != nil {
		d.log.Warn("device groups not checked", "err", err)
		return
	}
	defer k.close()
	links, err := k.h.LinkList()
	if err != nil {
		d.log.Warn("device groups not checked", "err", err)
		return
	}
	for _, l := range links {
		a := l.Attrs()
		var want uint32
		switch {
		case strings.HasPrefix(a.Name, hostVethPrefix):
			want = HostVethGroup
		case strings.HasPrefix(a.Name, VTEPName):
			want = VTEPGroup
		default:
			continue
		}
		if a.Group == want {
			continue
		}
		if err := k.h.LinkSetGroup(l, int(want)); err != nil {
			if !errors.Is(err, unix.ENODEV) { // not gone meanwhile
				d.log.Warn("device group not set", "dev", a.Name, "group", want, "err", err)
			}
			continue
		}
		d.log.Debug("device group set", "dev", a.Name, "group", want)
	}
}

// makeConntrackStrict turns off conntrack's pick-up of TCP connections in
// the middle (nf_conntrack_tcp_loose).
func (d *Dataplane) makeConntrackStrict() error {
	if err := netns.Sysctl(d.ns, "net.netfilter.nf_conntrack_tcp_loose", "0"); err != nil {
		return fmt.Errorf("make conntrack strict: %w", err)
	}
	return nil
}

// kernelPolicy is what readPolicy finds in the kernel.
type kernelPolicy struct {
	sets        policyPlan     // only the element slices are filled
	rules       map[string]int // rules per chain
	fingerprint string
}

// matches reports whether the kernel holds exactly plan.
func (k *kernelPolicy) matches(plan *policyPlan) bool {
	if k.fingerprint != plan.fingerprint() || len(k.rules) != len(plan.chains) {
		return false
	}
	for _, cs := range plan.chains {
		if n, ok := k.rules[cs.name]; !ok || n != len(cs.rules) {
			return false
		}
	}
	return slices.Equal(k.sets.localIDs, plan.localIDs) && slices.Equal(k.sets.srcTags, plan.srcTags) &&
		slices.Equal(k.sets.allows, plan.allows)
}

// readPolicy reads back the trellis table: set elements (sorted), rules
// per chain and the fingerprint.
func readPolicy(c *nftables.Conn) (*kernelPolicy, error) {
	k := &kernelPolicy{rules: map[string]int{}}
	sets := newPolicySets()
	read := func(name string) ([]nftables.SetElement, error) {
		es, err := c.GetSetElements(sets[name])
		if err != nil {
			return nil, fmt.Errorf("read set %s: %w", name, err)
		}
		return es, nil
	}
	es, err := read(setLocalIDs)
	if err != nil {
		return nil, err
	}
	for _, e := range es {
		if len(e.Key) != 28 {
			return nil, fmt.Errorf("malformed %s element %x", setLocalIDs, e.Key)
		}
		ip := netip.AddrFrom4([4]byte(e.Key[16:20]))
		id := localID{strings.TrimRight(string(e.Key[:16]), "\x00"), ip}
		if !bytes.Equal(localIDElement(id).Key, e.Key) {
			return nil, fmt.Errorf("%s element %x: MAC is not %s", setLocalIDs, e.Key, containerMAC(ip))
		}
		k.sets.localIDs = append(k.sets.localIDs, id)
	}
	if es, err = read(setSrcTag); err != nil {
		return nil, err
	}
	for _, e := range es {
		if len(e.Key) != 4 || len(e.Val) != 4 {
			return nil, fmt.Errorf("malformed %s element %x : %x", setSrcTag, e.Key, e.Val)
		}
		tag := binary.NativeEndian.Uint32(e.Val)
		if tag > TagMask {
			return nil, fmt.Errorf("%s element %x : %x: tag above %#x", setSrcTag, e.Key, e.Val, TagMask)
		}
		k.sets.srcTags = append(k.sets.srcTags, srcTag{netip.AddrFrom4([4]byte(e.Key)), uint16(tag)})
	}
	for _, x := range []struct {
		name   string
		ranges bool
	}{{setAllowPorts, false}, {setAllowRanges, true}} {
		if es, err = read(x.name); err != nil {
			return nil, err
		}
		var got []allowElem
		for _, e := range es {
			a, ok := allowFromElement(e)
			if !ok || a.isRange() != x.ranges {
				return nil, fmt.Errorf("malformed %s element %x", x.name, e.Key)
			}
			got = append(got, a)
		}
		if !x.ranges {
			// The hash set holds short ranges port by port.
			slices.SortFunc(got, compareAllowElem)
			got, _ = mergePorts(got)
		}
		k.sets.allows = append(k.sets.allows, got...)
	}
	slices.SortFunc(k.sets.localIDs, compareLocalID)
	slices.SortFunc(k.sets.srcTags, compareSrcTag)
	slices.SortFunc(k.sets.allows, compareAllowElem)

	chains, err := c.ListChainsOfTableFamily(policyTable.Family)
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table.Name != PolicyTable {
			continue
		}
		rs, err := c.GetRules(policyTable, ch)
		if err != nil {
			return nil, fmt.Errorf("list rules of chain %s: %w", ch.Name, err)
		}
		k.rules[ch.Name] = len(rs)
	}
	k.fingerprint, _, _ = readFingerprint(c)
	return k, nil
}

// readFingerprint returns the comment of the fingerprint chain's rule and
// the rule's handle; found is false when there is no such rule (or no
// table).
func readFingerprint(c *nftables.Conn) (fp string, handle uint64, found bool) {
	rules, err := c.GetRules(policyTable, &nftables.Chain{Name: chainFingerprint, Table: policyTable})
	if err != nil || len(rules) != 1 {
		return "", 0, false
	}
	fp, ok := userdata.GetString(rules[0].UserData, userdata.TypeComment)
	return fp, rules[0].Handle, ok
}

// replacePolicyTable queues the batch that deletes the table if there is
// one and creates it as plan says. Adding the table first makes the
// delete valid whether or not it existed.
func replacePolicyTable(c *nftables.Conn, plan *policyPlan) error {
	c.AddTable(policyTable)
	c.DelTable(policyTable)
	c.AddTable(policyTable)
	for _, name := range policyCounters {
		c.AddObj(&nftables.CounterObj{Table: policyTable, Name: name})
	}
	sets := newPolicySets()
	for _, name := range []string{setLocalIDs, setSrcTag, setAllowPorts, setAllowRanges} {
		if err := c.AddSet(sets[name], nil); err != nil {
			return fmt.Errorf("add set %s: %w", name, err)
		}
	}
	err := addElements(c, sets[setLocalIDs], plan.localIDs, localIDElement)
	if err == nil {
		err = addElements(c, sets[setSrcTag], plan.srcTags, srcTagElement)
	}
	if err == nil {
		err = changeAllows(c, sets, plan.allows, false)
	}
	if err != nil {
		return err
	}

	chains := make(map[string]*nftables.Chain, len(plan.chains))
	for _, cs := range plan.chains {
		ch := &nftables.Chain{Name: cs.name, Table: policyTable}
		if cs.hook != "" {
			ch.Type = nftables.ChainTypeFilter
			ch.Priority = nftables.ChainPriorityRef(nftables.ChainPriority(cs.prio))
			accept := nftables.ChainPolicyAccept
			ch.Policy = &accept
			switch cs.hook {
			case "prerouting":
				ch.Hooknum = nftables.ChainHookPrerouting
			case "forward":
				ch.Hooknum = nftables.ChainHookForward
			case "output":
				ch.Hooknum = nftables.ChainHookOutput
			default:
				return fmt.Errorf("chain %s: unknown hook %s", cs.name, cs.hook)
			}
		}
		chains[cs.name] = c.AddChain(ch)
	}
	for _, cs := range plan.chains {
		for _, r := range cs.rules {
			exprs, err := ruleExprs(r, sets)
			if err != nil {
				return fmt.Errorf("chain %s: %v: %w", cs.name, r, err)
			}
			nr := &nftables.Rule{Table: policyTable, Chain: chains[cs.name], Exprs: exprs}
			if cs.name == chainFingerprint {
				nr.UserData = userdata.AppendString(nil, userdata.TypeComment, plan.fingerprint())
			}
			c.AddRule(nr)
		}
	}
	return nil
}

// updatePolicySets queues the batch that turns the sets of have into
// those of want and replaces the fingerprint rule (handle). Deletions come
// first, so that a port range can be replaced by an overlapping one.
func updatePolicySets(c *nftables.Conn, have, want *policyPlan, handle uint64) error {
	sets := newPolicySets()
	delIDs, addIDs := diffSorted(have.localIDs, want.localIDs, compareLocalID)
	delTags, addTags := diffSorted(have.srcTags, want.srcTags, compareSrcTag)
	delA, addA := allowsDiff(have, want)
	keyOnly := func(t srcTag) nftables.SetElement { e := srcTagElement(t); e.Val = nil; return e }
	for _, err := range []error{
		delElements(c, sets[setLocalIDs], delIDs, localIDElement),
		delElements(c, sets[setSrcTag], delTags, keyOnly),
		changeAllows(c, sets, delA, true),
		addElements(c, sets[setLocalIDs], addIDs, localIDElement),
		addElements(c, sets[setSrcTag], addTags, srcTagElement),
		changeAllows(c, sets, addA, false),
	} {
		if err != nil {
			return err
		}
	}
	exprs, err := ruleExprs(rule{verdict{Kind: "return"}}, sets)
	if err != nil {
		return err
	}
	c.ReplaceRule(&nftables.Rule{
		Table:    policyTable,
		Chain:    &nftables.Chain{Name: chainFingerprint, Table: policyTable},
		Handle:   handle,
		Exprs:    exprs,
		UserData: userdata.AppendString(nil, userdata.TypeComment, want.fingerprint()),
	})
	return nil
}

// addAllows queues adding (or, with del, deleting) allows to the set of
// their kind.
func changeAllows(c *nftables.Conn, sets map[string]*nftables.Set, allows []allowElem, del bool) error {
	var ports, ranges []allowElem
	for _, e := range allows {
		if e.isRange() {
			ranges = append(ranges, e)
		} else {
			ports = append(ports, e.ports()...)
		}
	}
	if del {
		return errors.Join(
			delElements(c, sets[setAllowPorts], ports, portElement),
			delElements(c, sets[setAllowRanges], ranges, allowElement))
	}
	return errors.Join(
		addElements(c, sets[setAllowPorts], ports, portElement),
		addElements(c, sets[setAllowRanges], ranges, allowElement))
}

func addElements[T any](c *nftables.Conn, s *nftables.Set, elems []T, conv func(T) nftables.SetElement) error {
	for chunk := range slices.Chunk(elems, elemChunk) {
		out := make([]nftables.SetElement, len(chunk))
		for i, e := range chunk {
			out[i] = conv(e)
		}
		if err := c.SetAddElements(s, out); err != nil {
			return fmt.Errorf("add elements to %s: %w", s.Name, err)
		}
	}
	return nil
}

func delElements[T any](c *nftables.Conn, s *nftables.Set, elems []T, conv func(T) nftables.SetElement) error {
	for chunk := range slices.Chunk(elems, elemChunk) {
		out := make([]nftables.SetElement, len(chunk))
		for i, e := range chunk {
			out[i] = conv(e)
		}
		if err := c.SetDeleteElements(s, out); err != nil {
			return fmt.Errorf("delete elements from %s: %w", s.Name, err)
		}
	}
	return nil
}

// Set element encodings. Concatenated keys pad every field to 4 bytes;
// marks are in host byte order, addresses and ports in network order.

func localIDElement(id localID) nftables.SetElement {
	k := make([]byte, 0, 28)
	var name [unix.IFNAMSIZ]byte
	copy(name[:], id.Veth)
	ip := id.IP.As4()
	m := containerMAC(id.IP)
	k = append(k, name[:]...)
	k = append(k, ip[:]...)
	k = append(k, m[:]...)
	k = append(k, 0, 0)
	return nftables.SetElement{Key: k}
}

func srcTagElement(t srcTag) nftables.SetElement {
	ip := t.IP.As4()
	return nftables.SetElement{Key: ip[:], Val: binaryutil.NativeEndian.PutUint32(uint32(t.Tag))}
}

func allowKey(e allowElem, port uint16) []byte {
	k := make([]byte, 16)
	dst := e.dst()
	copy(k, dst[:])
	binary.NativeEndian.PutUint32(k[4:], uint32(e.tag()))
	k[8] = e.proto()
	binary.BigEndian.PutUint16(k[12:], port)
	return k
}

func portElement(e allowElem) nftables.SetElement {
	return nftables.SetElement{Key: allowKey(e, e.lo)}
}

func allowElement(e allowElem) nftables.SetElement {
	return nftables.SetElement{Key: allowKey(e, e.lo), KeyEnd: allowKey(e, e.hi)}
}

func allowFromElement(s nftables.SetElement) (allowElem, bool) {
	if len(s.KeyEnd) == 0 {
		s.KeyEnd = s.Key
	}
	if len(s.Key) != 16 || len(s.KeyEnd) != 16 {
		return allowElem{}, false
	}
	dst := netip.AddrFrom4([4]byte(s.Key[:4]))
	tag := binary.NativeEndian.Uint32(s.Key[4:8])
	return allowElem{
		group: packGroup(dst, uint16(tag), s.Key[8]),
		lo:    binary.BigEndian.Uint16(s.Key[12:14]),
		hi:    binary.BigEndian.Uint16(s.KeyEnd[12:14]),
	}, true
}

// Registers: NFT_REG_1 is the same storage as NFT_REG32_00..03, so a
// concatenation loaded from NFT_REG32_00 on is looked up from NFT_REG_1.
const reg1 = 1

func reg32(n uint32) uint32 { return 8 + n }

// TCP header flag bits.
const (
	tcpSYN = 0x02
	tcpACK = 0x10
)

func native32(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

// ifCmp loads an attribute of the input device (in: inKey) or the output
// device (outKey) and compares it with data: equal, or unequal with not.
// A name compares as a prefix: data holds no terminating NUL.
func ifCmp(in, not bool, inKey, outKey expr.MetaKey, data []byte) []expr.Any {
	key, op := outKey, expr.CmpOpEq
	if in {
		key = inKey
	}
	if not {
		op = expr.CmpOpNeq
	}
	return []expr.Any{&expr.Meta{Key: key, Register: reg1}, &expr.Cmp{Op: op, Register: reg1, Data: data}}
}

// ruleExprs turns a rule into expressions; lookups refer to sets.
func ruleExprs(r rule, sets map[string]*nftables.Set) ([]expr.Any, error) {
	var out []expr.Any
	lookup := func(name string, src uint32) *expr.Lookup {
		s := sets[name]
		return &expr.Lookup{SourceRegister: src, SetName: s.Name, SetID: s.ID}
	}
	for _, t := range r {
		switch t := t.(type) {
		case ifPrefix:
			out = append(out, ifCmp(t.In, t.Not, expr.MetaKeyIIFNAME, expr.MetaKeyOIFNAME, []byte(t.Prefix))...)
		case devGroup:
			out = append(out, ifCmp(t.In, t.Not, expr.MetaKeyIIFGROUP, expr.MetaKeyOIFGROUP, native32(t.Group))...)
		case nfprotoIPv4:
			out = append(out,
				&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.NFPROTO_IPV4}})
		case inLocalIDs:
			out = append(out,
				&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg32(0)},
				&expr.Payload{DestRegister: reg32(4), Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
				&expr.Payload{DestRegister: reg32(5), Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
				lookup(setLocalIDs, reg32(0)))
		case markFromSrcTag:
			l := lookup(setSrcTag, reg1)
			l.DestRegister, l.IsDestRegSet = reg1, true
			out = append(out,
				&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
				l,
				&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg1})
		case ctState:
			out = append(out,
				&expr.Ct{Key: expr.CtKeySTATE, Register: reg1},
				&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: native32(t.Bits), Xor: native32(0)},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: native32(0)})
		case inAllows:
			out = append(out,
				&expr.Payload{DestRegister: reg32(0), Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
				&expr.Meta{Key: expr.MetaKeyMARK, Register: reg32(1)},
				&expr.Bitwise{SourceRegister: reg32(1), DestRegister: reg32(1), Len: 4, Mask: native32(TagMask), Xor: native32(0)},
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg32(2)},
				&expr.Payload{DestRegister: reg32(3), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				lookup(t.Set, reg32(0)))
		case l4proto:
			out = append(out,
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{t.Proto}})
		case udpDport:
			out = append(out,
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.IPPROTO_UDP}},
				&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.BigEndian.PutUint16(t.Port)})
		case tcpSynOnly:
			out = append(out,
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.IPPROTO_TCP}},
				&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
				&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 1, Mask: []byte{tcpSYN | tcpACK}, Xor: []byte{0}},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{tcpSYN}})
		case tcpNotSynOnly:
			out = append(out,
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.IPPROTO_TCP}},
				&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
				&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 1, Mask: []byte{tcpSYN | tcpACK}, Xor: []byte{0}},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: []byte{tcpSYN}})
		case notrack:
			out = append(out, &expr.Notrack{})
		case limitRate:
			out = append(out, &expr.Limit{Type: expr.LimitTypePkts, Rate: uint64(t.Rate), Unit: expr.LimitTimeSecond, Burst: uint32(t.Rate)})
		case counterRef:
			out = append(out, &expr.Objref{Type: int(nftables.ObjTypeCounter), Name: t.Name})
		case logGroup:
			out = append(out, &expr.Log{
				Key:   1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX,
				Group: t.Group,
				Data:  []byte(t.Prefix),
			})
		case ctMarkFromTag:
			out = append(out,
				&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
				&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: native32(TagMask), Xor: native32(ctMarkPoliced)},
				&expr.Ct{Key: expr.CtKeyMARK, SourceRegister: true, Register: reg1})
		case verdict:
			kinds := map[string]expr.VerdictKind{
				"accept": expr.VerdictAccept, "drop": expr.VerdictDrop, "return": expr.VerdictReturn,
				"jump": expr.VerdictJump, "goto": expr.VerdictGoto,
			}
			k, ok := kinds[t.Kind]
			if !ok {
				return nil, fmt.Errorf("unknown verdict %q", t.Kind)
			}
			out = append(out, &expr.Verdict{Kind: k, Chain: t.Chain})
		case rejectTCPReset:
			out = append(out, &expr.Reject{Type: unix.NFT_REJECT_TCP_RST})
		case rejectPortUnreach:
			out = append(out, &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH})
		default:
			return nil, fmt.Errorf("no expressions for %T", t)
		}
	}
	return out, nil
}

// TeardownPolicy deletes the trellis table from the cell's namespace, and
// with it every rule, set and counter of trellis, and forgets the policy
// this value applied. It is not an error if there is none.
func (d *Dataplane) TeardownPolicy() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.dropTablesConn()
	c, done, err := openPolicyConn(d.ns)
	if err != nil {
		return fmt.Errorf("teardown policy: %w", err)
	}
	defer done()
	d.trusted, d.last, d.compiler = nil, nil, planCache{}
	// Adding first makes the delete valid when there is no table.
	c.AddTable(policyTable)
	c.DelTable(policyTable)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("teardown policy in %s: %w", d.ns, err)
	}
	return nil
}

// Counters reads the counters of the cell's trellis table.
func (d *Dataplane) Counters() (Counters, error) {
	return readCounters(d.ns, true)
}

// Totals is Counters without Allows: the table's named counters only, a
// read whose cost does not grow with the policies.
func (d *Dataplane) Totals() (Counters, error) {
	return readCounters(d.ns, false)
}

func readCounters(nsPath string, allows bool) (Counters, error) {
	var cs Counters
	c, done, err := openPolicyConn(nsPath)
	if err != nil {
		return cs, fmt.Errorf("policy counters: %w", err)
	}
	defer done()
	objs, err := c.GetObjects(policyTable)
	if err != nil {
		return cs, fmt.Errorf("policy counters in %s: %w", nsPath, err)
	}
	fields := map[string]*uint64{
		counterSpoofed: &cs.Spoofed, counterDenied: &cs.Denied, counterDeniedLogged: &cs.DeniedLogged,
		counterAllowed: &cs.Allowed, counterAllowedLogged: &cs.AllowedLogged,
	}
	for _, o := range objs {
		if co, ok := o.(*nftables.CounterObj); ok && fields[co.Name] != nil {
			*fields[co.Name] = co.Packets
		}
	}
	if !allows {
		return cs, nil
	}
	type hit struct {
		e allowElem
		c *expr.Counter
	}
	var hits []hit
	sets := newPolicySets()
	for _, name := range []string{setAllowPorts, setAllowRanges} {
		elems, err := c.GetSetElements(sets[name])
		if err != nil {
			return cs, fmt.Errorf("policy counters in %s: read %s: %w", nsPath, name, err)
		}
		var got []hit
		for _, el := range elems {
			e, ok := allowFromElement(el)
			if !ok {
				return cs, fmt.Errorf("policy counters in %s: malformed %s element %x-%x", nsPath, name, el.Key, el.KeyEnd)
			}
			got = append(got, hit{e, el.Counter})
		}
		if name == setAllowPorts {
			// The hash set holds short ranges port by port: their hits
			// are the sums of their ports'.
			slices.SortFunc(got, func(a, b hit) int { return compareAllowElem(a.e, b.e) })
			es := make([]allowElem, len(got))
			for i, h := range got {
				es[i] = h.e
			}
			merged, first := mergePorts(es)
			runs := make([]hit, len(merged))
			for i, e := range merged {
				runs[i].e = e
				end := len(got)
				if i+1 < len(first) {
					end = first[i+1]
				}
				for _, h := range got[first[i]:end] {
					if h.c == nil {
						continue
					}
					if runs[i].c == nil {
						runs[i].c = &expr.Counter{}
					}
					runs[i].c.Packets += h.c.Packets
					runs[i].c.Bytes += h.c.Bytes
				}
			}
			got = runs
		}
		hits = append(hits, got...)
	}
	slices.SortFunc(hits, func(a, b hit) int { return compareAllowElem(a.e, b.e) })
	for _, h := range hits {
		ah := AllowHits{Allow: h.e.allow()}
		if h.c != nil {
			ah.Packets, ah.Bytes = h.c.Packets, h.c.Bytes
		}
		cs.Allows = append(cs.Allows, ah)
	}
	return cs, nil
}
