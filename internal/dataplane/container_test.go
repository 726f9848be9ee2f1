package dataplane

import (
	"strings"
	"testing"

	gocmp "github.com/google/go-cmp/cmp"
)

func TestHostVethName(t *testing.T) {
	tests := []struct{ ip, want string }{
		{"10.255.1.2", "s-010255001002"},
		{"10.255.34.254", "s-010255034254"},
		{"1.2.3.4", "s-001002003004"},
	}
	for _, tt := range tests {
		got := HostVethName(addr(tt.ip))
		if got != tt.want || len(got) != 14 {
			t.Errorf("HostVethName(%s) = %q, want %q (14 characters)", tt.ip, got, tt.want)
		}
	}
}

func TestPlanContainerGolden(t *testing.T) {
	c := Container{NetNS: "/run/netns/app1", IfName: "eth0", IP: addr("10.255.1.2"), MTU: 1450}
	want := `
ip link add s-010255001002 address aa:aa:0a:ff:01:02 mtu 1450 group 0x74720001 type veth peer name eth0 address ee:ee:0a:ff:01:02 mtu 1450 netns /run/netns/app1
container: sysctl -w net.ipv6.conf.eth0.disable_ipv6=1
container: ip link set eth0 arp off
container: ip addr add 10.255.1.2/32 peer 169.254.0.1/32 dev eth0
container: ip link set eth0 up
sysctl -w net.ipv6.conf.s-010255001002.disable_ipv6=1
sysctl -w net.ipv4.conf.s-010255001002.rp_filter=1
ip link set s-010255001002 arp off
ip addr add 169.254.0.1/32 peer 10.255.1.2/32 dev s-010255001002
ip link set s-010255001002 up
container: ip neigh replace 169.254.0.1 lladdr aa:aa:0a:ff:01:02 dev eth0 nud permanent
container: ip route replace default via 169.254.0.1 dev eth0 src 10.255.1.2 onlink
ip neigh replace 10.255.1.2 lladdr ee:ee:0a:ff:01:02 dev s-010255001002 nud permanent
`[1:]
	if got := render(planContainer(c)); got != want {
		t.Errorf("planContainer(%+v) =\n%s\ndiff (-want +got):\n%s", c, got, gocmp.Diff(want, got))
	}

	// An interface name with a dot needs the slash form of sysctl keys.
	c.IfName = "eth0.1"
	if got := render(planContainer(c)); !strings.Contains(got, "container: sysctl -w net/ipv6/conf/eth0.1/disable_ipv6=1\n") {
		t.Errorf("planContainer(IfName eth0.1) =\n%s\nwant the slash form of the disable_ipv6 key", got)
	}
}

func TestContainerValidate(t *testing.T) {
	ok := Container{NetNS: "/run/netns/x", IfName: "eth0", IP: addr("10.255.1.2"), MTU: 1450}
	if err := ok.validate(); err != nil {
		t.Fatalf("validate(%+v) = %v", ok, err)
	}
	tests := []struct {
		name   string
		change func(c *Container)
		want   string
	}{
		{"no netns", func(c *Container) { c.NetNS = "" }, "netns path is empty"},
		{"IPv6", func(c *Container) { c.IP = addr("2001:db8::2") }, "not a usable IPv4"},
		{"gateway IP", func(c *Container) { c.IP = HostGateway }, "not a usable IPv4"},
		{"no MTU", func(c *Container) { c.MTU = 0 }, "MTU 0"},
		{"long name", func(c *Container) { c.IfName = "a-very-long-name0" }, "invalid interface name"},
		{"slash", func(c *Container) { c.IfName = "a/b" }, "invalid interface name"},
	}
	for _, tt := range tests {
		c := ok
		tt.change(&c)
		if err := c.validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: validate(%+v) = %v, want an error containing %q", tt.name, c, err, tt.want)
		}
	}
}
