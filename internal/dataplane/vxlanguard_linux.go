package dataplane

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// guardTable is the nftables table that, while encryption is on, drops
// VXLAN that reaches the cell other than out of its WireGuard device: a
// plain VXLAN packet from the underlay carries a GBP tag anyone could have
// written, and with encryption on every cell sends VXLAN only inside
// WireGuard. It is a table of its own, apart from the policy table.
const guardTable = "trellis_vxlan_guard"

// setVXLANGuard makes the guard table hold "drop UDP to port unless from
// WGName" (on) or removes it (off). It writes only when the guard this
// value applied last differs.
func (d *Dataplane) setVXLANGuard(on bool, port int) error {
	want := -1
	if on {
		want = port
	}
	if d.guardSet && d.guardPort == want {
		return nil
	}
	c, done, err := openPolicyConn(d.ns)
	if err != nil {
		return err
	}
	defer done()
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return fmt.Errorf("list nftables tables: %w", err)
	}
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: guardTable}
	for _, have := range tables {
		if have.Name == guardTable {
			c.DelTable(t)
		}
	}
	if on {
		c.AddTable(t)
		prio := nftables.ChainPriority(*nftables.ChainPriorityFilter - 10)
		accept := nftables.ChainPolicyAccept
		ch := c.AddChain(&nftables.Chain{Name: "input", Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookInput, Priority: &prio, Policy: &accept})
		p := make([]byte, 2)
		binary.BigEndian.PutUint16(p, uint16(port))
		ifname := make([]byte, unix.IFNAMSIZ)
		copy(ifname, WGName)
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p},
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname},
			&expr.Counter{},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("set VXLAN guard table: %w", err)
	}
	d.guardSet, d.guardPort = true, want
	return nil
}
