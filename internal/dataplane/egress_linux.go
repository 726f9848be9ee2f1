package dataplane

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// egressTable is the table every egress call works on.
var egressTable = &nftables.Table{Name: EgressTable, Family: nftables.TableFamilyINet}

// Names in the egress table.
const (
	setEgressPorts   = "egress_ports"
	setEgressICMP    = "egress_icmp"
	setEgressAll     = "egress_all"
	setEgressGuarded = "guarded"
	setEgressLogged  = "egress_logged"
	chainEgressLog   = "egress_accept"
	chainEgressCheck = "egress_check"
)

var (
	egressPortsType = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeIPAddr, nftables.TypeInetService)
	// The ICMP type and code, read as one 16-bit value: type<<8 | code.
	egressICMPType = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeIPAddr, nftables.TypeInetService)
	egressAllType  = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeIPAddr)
)

// applyEgress replaces the egress table with plan's in one netlink batch,
// which the kernel applies atomically.
func (d *Dataplane) applyEgress(p *egressPlan) (err error) {
	c, err := d.tablesConn()
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			d.dropTablesConn()
		}
	}()
	c.AddTable(egressTable) // makes the delete valid when there is none
	c.DelTable(egressTable)
	t := c.AddTable(egressTable)
	sets := map[string]*nftables.Set{
		setEgressPorts:   {Table: t, Name: setEgressPorts, KeyType: egressPortsType, Concatenation: true, Interval: true},
		setEgressICMP:    {Table: t, Name: setEgressICMP, KeyType: egressICMPType, Concatenation: true, Interval: true},
		setEgressAll:     {Table: t, Name: setEgressAll, KeyType: egressAllType, Concatenation: true, Interval: true},
		setEgressGuarded: {Table: t, Name: setEgressGuarded, KeyType: nftables.TypeIPAddr},
		setEgressLogged:  {Table: t, Name: setEgressLogged, KeyType: egressAllType, Concatenation: true, Interval: true},
	}
	elems := map[string][]nftables.SetElement{}
	for _, e := range p.elems {
		dlo, dhi := a4(addr32(e.dlo)), a4(addr32(e.dhi))
		switch e.proto {
		case protoAll:
			elems[setEgressAll] = append(elems[setEgressAll], nftables.SetElement{
				Key: concat(a4(e.src), dlo), KeyEnd: concat(a4(e.src), dhi)})
		case protoICMP:
			elems[setEgressICMP] = append(elems[setEgressICMP], nftables.SetElement{
				Key: concat(a4(e.src), dlo, port4(e.plo)), KeyEnd: concat(a4(e.src), dhi, port4(e.phi))})
		default:
			elems[setEgressPorts] = append(elems[setEgressPorts], nftables.SetElement{
				Key:    concat(a4(e.src), pad4(e.proto), dlo, port4(e.plo)),
				KeyEnd: concat(a4(e.src), pad4(e.proto), dhi, port4(e.phi))})
		}
	}
	for _, e := range p.logged {
		elems[setEgressLogged] = append(elems[setEgressLogged], nftables.SetElement{
			Key: concat(a4(e.src), a4(addr32(e.dlo))), KeyEnd: concat(a4(e.src), a4(addr32(e.dhi)))})
	}
	for _, a := range p.guarded {
		elems[setEgressGuarded] = append(elems[setEgressGuarded], nftables.SetElement{Key: a4(a)})
	}
	for _, name := range []string{setEgressPorts, setEgressICMP, setEgressAll, setEgressGuarded, setEgressLogged} {
		s := sets[name]
		if err := c.AddSet(s, nil); err != nil {
			return fmt.Errorf("add set %s: %w", name, err)
		}
		for i := 0; i < len(elems[name]); i += elemChunk {
			if err := c.SetAddElements(s, elems[name][i:min(i+elemChunk, len(elems[name]))]); err != nil {
				return fmt.Errorf("add elements to %s: %w", name, err)
			}
		}
	}

	lookup := func(name string) *expr.Lookup {
		return &expr.Lookup{SourceRegister: reg32(0), SetName: sets[name].Name, SetID: sets[name].ID}
	}
	fromInstance := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.NFPROTO_IPV4}},
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte(hostVethPrefix)},
	}
	inOverlay := func(field uint32, op expr.CmpOp) []expr.Any {
		m := [4]byte{}
		for i := 0; i < p.overlay.Bits(); i++ {
			m[i/8] |= 0x80 >> (i % 8)
		}
		return []expr.Any{
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: field, Len: 4},
			&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: m[:], Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: op, Register: reg1, Data: a4(p.overlay.Addr())},
		}
	}
	accept := &expr.Verdict{Kind: expr.VerdictAccept}
	markEgress := []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: native32(^uint32(ctMarkEgress)), Xor: native32(ctMarkEgress)},
		&expr.Ct{Key: expr.CtKeyMARK, SourceRegister: true, Register: reg1},
	}
	add := func(ch *nftables.Chain, exprs ...[]expr.Any) {
		var all []expr.Any
		for _, e := range exprs {
			all = append(all, e...)
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: all})
	}
	// egress_accept accepts a new connection a set allowed: it logs it
	// when a logged rule names its source and destination, and marks it
	// for revocation.
	acceptChain := c.AddChain(&nftables.Chain{Name: chainEgressLog, Table: t})
	if p.allowGrp != 0 {
		add(acceptChain, []expr.Any{
			&expr.Payload{DestRegister: reg32(0), Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Payload{DestRegister: reg32(1), Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			lookup(setEgressLogged),
			&expr.Limit{Type: expr.LimitTypePkts, Rate: uint64(p.rate), Unit: expr.LimitTimeSecond, Burst: uint32(p.rate)},
			&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX, Group: p.allowGrp, Data: []byte(LogPrefixEgressAllowed)}})
	}
	add(acceptChain, markEgress, []expr.Any{accept})
	toAccept := []expr.Any{&expr.Verdict{Kind: expr.VerdictGoto, Chain: chainEgressLog}}
	// Established and related packets pass first, in each base chain:
	// every packet of a connection but its first leaves after one load of
	// its conntrack state, whoever sent it (the chains accept the rest of
	// what is not an instance's anyway), so egress_check sees only the
	// packets that open a connection. A connection whose entry a
	// revocation cut is no longer established: its next packet is checked.
	established := []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: native32(ctEstablished | ctRelated), Xor: native32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: native32(0)},
		accept}
	check := c.AddChain(&nftables.Chain{Name: chainEgressCheck, Table: t})
	add(check, []expr.Any{
		&expr.Payload{DestRegister: reg32(0), Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg32(1)},
		&expr.Payload{DestRegister: reg32(2), Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Payload{DestRegister: reg32(3), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		lookup(setEgressPorts)}, toAccept)
	add(check, []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.IPPROTO_ICMP}},
		&expr.Payload{DestRegister: reg32(0), Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Payload{DestRegister: reg32(1), Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Payload{DestRegister: reg32(2), Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
		lookup(setEgressICMP)}, toAccept)
	add(check, []expr.Any{
		&expr.Payload{DestRegister: reg32(0), Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Payload{DestRegister: reg32(1), Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		lookup(setEgressAll)}, toAccept)
	if p.logGrp != 0 {
		add(check, []expr.Any{
			&expr.Limit{Type: expr.LimitTypePkts, Rate: uint64(p.rate), Unit: expr.LimitTimeSecond, Burst: uint32(p.rate)},
			&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX, Group: p.logGrp, Data: []byte(LogPrefixEgressDenied)}})
	}
	add(check, []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}})
	add(check, []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED}})

	policy := nftables.ChainPolicyAccept
	fwd := c.AddChain(&nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityRef(10), Policy: &policy})
	add(fwd, established)
	add(fwd, fromInstance, inOverlay(16, expr.CmpOpNeq), []expr.Any{&expr.Verdict{Kind: expr.VerdictGoto, Chain: chainEgressCheck}})
	in := c.AddChain(&nftables.Chain{Name: "input", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityRef(10), Policy: &policy})
	add(in, established)
	add(in, fromInstance, []expr.Any{
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Lookup{SourceRegister: reg1, SetName: setEgressGuarded, SetID: sets[setEgressGuarded].ID},
		&expr.Verdict{Kind: expr.VerdictGoto, Chain: chainEgressCheck}})
	nat := c.AddChain(&nftables.Chain{Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &policy})
	add(nat, []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.NFPROTO_IPV4}}},
		inOverlay(12, expr.CmpOpEq), inOverlay(16, expr.CmpOpNeq), []expr.Any{&expr.Masq{}})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("replace table %s: %w", EgressTable, err)
	}
	return nil
}

func concat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func a4(a netip.Addr) []byte { b := a.As4(); return b[:] }

func pad4(v uint8) []byte { return []byte{v, 0, 0, 0} }

func port4(p uint16) []byte { return []byte{byte(p >> 8), byte(p), 0, 0} }

// TeardownEgress deletes the egress table, if any, and forgets the plan.
func (d *Dataplane) TeardownEgress() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, done, err := openPolicyConn(d.ns)
	if err != nil {
		return fmt.Errorf("teardown egress: %w", err)
	}
	defer done()
	d.egress = nil
	c.AddTable(egressTable)
	c.DelTable(egressTable)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("teardown egress in %s: %w", d.ns, err)
	}
	return nil
}

// cutEgress deletes the conntrack entries of egress connections the table
// accepted that plan no longer allows, and returns how many.
func (d *Dataplane) cutEgress(p *egressPlan) (int, error) {
	n, err := deleteConntrack(d.ns, egressFilter{p})
	if err != nil {
		return n, fmt.Errorf("cut revoked egress in %s: %w", d.ns, err)
	}
	return n, nil
}

type egressFilter struct{ p *egressPlan }

// MatchConntrackFlow reports whether the entry is an accepted egress
// connection the plan no longer allows.
func (f egressFilter) MatchConntrackFlow(c *netlink.ConntrackFlow) bool {
	if c.Mark&ctMarkEgress == 0 {
		return false
	}
	t := c.Forward
	return !f.p.allowsEgress(addrOf(t.SrcIP), addrOf(t.DstIP), t.Protocol, t.DstPort)
}
