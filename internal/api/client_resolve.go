package api

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"sync"
	"time"
)

// Resolver looks up the addresses of a controller's host name.
type Resolver func(ctx context.Context, host string) ([]netip.Addr, error)

// SystemResolver is the system's resolver (/etc/hosts, then DNS).
func SystemResolver(ctx context.Context, host string) ([]netip.Addr, error) {
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}

// resolveTimeout bounds one look-up of the controllers' names.
const resolveTimeout = 2 * time.Second

// NewCellClientResolving is NewCellClient for controllers named by host
// names with several addresses (one per controller, say): each address of
// a name is a controller of its own, tried in turn as the URLs are, in the
// order the resolver gives them. The connection to an address still
// verifies the controller's certificate for the name (and sends it as the
// TLS server name and the Host). The names are looked up again after a
// request that no controller answered, so that controllers that moved are
// found; a name that does not resolve is dialed as it is.
func NewCellClientResolving(apiURLs []string, caPEM string, cert tls.Certificate, resolve Resolver) (*Client, error) {
	c, err := NewCellClient(apiURLs, caPEM, cert)
	if err != nil {
		return nil, err
	}
	nt := &nameTargets{specs: c.bases, resolve: resolve, names: map[string]string{}}
	c.names = nt
	tr := c.http.Transport.(*http.Transport)
	base := tr.TLSClientConfig
	tr.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		cfg := base.Clone()
		name, _, err := net.SplitHostPort(nt.host(addr))
		if err != nil {
			return nil, err
		}
		cfg.ServerName = name
		if tr.ForceAttemptHTTP2 {
			cfg.NextProtos = []string{"h2", "http/1.1"}
		}
		raw, err := (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		hctx, cancel := context.WithTimeout(ctx, tr.TLSHandshakeTimeout)
		defer cancel()
		conn := tls.Client(raw, cfg)
		if err := conn.HandshakeContext(hctx); err != nil {
			raw.Close()
			return nil, err
		}
		return conn, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
	defer cancel()
	c.bases = nt.expand(ctx)
	return c, nil
}

// nameTargets are the controllers of a Client whose URLs name hosts: the
// URLs as given (specs), the resolver, and the host name (with port) of
// each address (with port) they resolved to.
type nameTargets struct {
	specs   []*url.URL
	resolve Resolver

	mu    sync.Mutex
	names map[string]string // "addr:port" -> "name:port"
	bases []*url.URL        // the last expansion
}

// expand resolves the specs' host names into one URL per address, and
// records the name of each. A spec whose host is an address stays as it
// is; one whose name does not resolve keeps the addresses it had, or else
// stays as it is.
func (nt *nameTargets) expand(ctx context.Context) []*url.URL {
	var out []*url.URL
	names := map[string]string{}
	for _, u := range nt.specs {
		host := u.Hostname()
		if _, err := netip.ParseAddr(host); err == nil {
			out = append(out, u)
			continue
		}
		addrs, err := nt.resolve(ctx, host)
		if err != nil || len(addrs) == 0 {
			// Not now: the addresses it had, if any, else the name.
			nt.mu.Lock()
			var kept []*url.URL
			for _, b := range nt.bases {
				if nt.names[b.Host] == u.Host {
					kept = append(kept, b)
					names[b.Host] = u.Host
				}
			}
			nt.mu.Unlock()
			if len(kept) == 0 {
				kept = []*url.URL{u}
			}
			out = append(out, kept...)
			continue
		}
		port := u.Port()
		if port == "" {
			port = "443"
		}
		seen := map[netip.Addr]bool{}
		for _, a := range addrs {
			a = a.Unmap()
			if seen[a] {
				continue
			}
			seen[a] = true
			v := *u
			v.Host = net.JoinHostPort(a.String(), port)
			names[v.Host] = u.Host
			out = append(out, &v)
		}
	}
	nt.mu.Lock()
	defer nt.mu.Unlock()
	nt.names, nt.bases = names, out
	return out
}

// host is the host (with port) to name in requests to addr: the name addr
// was resolved from, or addr itself.
func (nt *nameTargets) host(addr string) string {
	nt.mu.Lock()
	defer nt.mu.Unlock()
	if n, ok := nt.names[addr]; ok {
		return n
	}
	return addr
}

// targets are the controllers' URLs, in the order they are tried.
func (c *Client) targets() []*url.URL {
	if c.names == nil {
		return c.bases
	}
	c.names.mu.Lock()
	defer c.names.mu.Unlock()
	return c.names.bases
}

// reresolve looks the controllers' names up again (after a failure) and,
// if they resolve to other addresses, tries the first from now on.
func (c *Client) reresolve(ctx context.Context) {
	if c.names == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), resolveTimeout)
	defer cancel()
	old := c.targets()
	now := c.names.expand(ctx)
	if !slices.EqualFunc(old, now, func(a, b *url.URL) bool { return a.String() == b.String() }) {
		c.cur.Store(0)
	}
}
