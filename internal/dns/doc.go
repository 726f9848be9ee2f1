// Package dns serves the internal domains (apps.internal and any domain
// created with --internal) to the containers of a cell, in the way Cloud
// Foundry's bosh-dns-adapter does:
//
//   - HOST.DOMAIN answers A with the address of every running instance of
//     every app mapped to the route, shuffled for each answer (clients take
//     the first address, which spreads load), with TTL 0 so that scaling
//     shows at once.
//   - INDEX.HOST.DOMAIN answers with the instance of that index alone.
//   - A name in an internal domain that nothing maps, or that maps to apps
//     with no running instance, is NXDOMAIN. AAAA and every other type for
//     a name that exists answer NOERROR with no records; so does ANY (the
//     minimal answer of RFC 8482). Negative answers carry no SOA, so
//     resolvers do not cache them.
//   - Names outside the internal domains are forwarded to the upstream
//     servers given explicitly, and answered REFUSED when none are given.
//
// Answers come from a Table, an immutable snapshot the agent builds from
// its copy of the desired state and swaps in atomically (Server.SetTable):
// a lookup never waits for the controller or for an update, and the last
// table keeps being served while the controller is down.
//
// Handler is a miekg/dns Handler, tested with dns.Msg values; Server runs it
// on UDP and TCP sockets opened inside a cell's network namespace, at
// 169.254.0.2:53 by default (AddAddress puts the address on the
// namespace's lo). Over UDP, Server answers the common query — one
// question, class IN, at most a bare EDNS0 OPT — on a fast path from wire
// bytes to wire bytes, which FuzzFastPath holds to the Handler's answers.
// Malformed queries get FORMERR, NOTIMP or REFUSED, or are dropped; none
// can stop the server answering others. UDP answers respect the client's
// EDNS0 size (at most MaxUDPSize, 512 without EDNS0) and are truncated
// with TC beyond it; TCP answers carry everything.
//
// DNS does not open access: a name resolves whether or not a policy allows
// connecting to the app behind it.
package dns
