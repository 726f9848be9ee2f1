// Package proxy terminates TLS on port 61443 for every app instance of a
// cell and forwards the plaintext stream to the app, as Cloud Foundry's
// per-container Envoy does for 61443 → 8080, but with one Server in the
// cell's agent for all its instances: an idle served instance costs a
// listening socket, one goroutine and about 6 KiB of memory (measured by
// TestMemoryPerIdleInstance), not a process.
//
// For each instance (Server.Set) the Server opens a listener on
// 0.0.0.0:61443 inside the instance's network namespace — the whole port,
// so that the app cannot bind it at all — and dials the app at
// INSTANCE_IP:8080 from inside the same namespace. Sockets keep the
// namespace they were made in, so only socket(2) runs on a thread switched
// into the namespace; accepting, handshaking and copying run on ordinary
// goroutines.
//
// TLS: versions 1.2 and 1.3, ECDHE with AEAD ciphers only for 1.2, no
// session tickets (a ticket would let a client skip the checks below and,
// with one process serving every instance, be replayed at another one).
// The instance's certificate and settings are read from an atomic pointer
// at each ClientHello (tls.Config.GetConfigForClient), so a rotated
// certificate (Set again) serves new handshakes while open connections go
// on. Each handshake is checked before any certificate is shown:
//
//   - the instance's certificate must be valid now (never an expired or
//     not-yet-valid one): otherwise an internal_error alert;
//   - the SNI, if any, must be one of the certificate's DNS names (case
//     does not matter): otherwise an unrecognized_name alert;
//   - with Instance.RequireClientCert, the client must present a
//     certificate that verifies against Instance.ClientCAs and that
//     Instance.Authorize accepts: otherwise a bad_certificate alert, and
//     Config.OnRefused hears who was refused and why.
//
// A client that speaks plaintext gets an unexpected_message alert and a
// clean close, not a hang. Handshakes are bounded in time and in number,
// per instance and for the whole cell: connections beyond the bounds are
// closed at once, so that a flood on one instance cannot starve the others.
//
// Forwarding: two goroutines per connection copy a 64 KiB buffer at a time;
// the TLS records of one buffer leave in one write. Socket reads and writes
// are raw system calls that park in the runtime's poller only on EAGAIN
// (rawSocket): the runtime's own system-call path woke sysmon and, when the
// woken peer preempted the proxy inside write(2), handed the goroutine to
// another thread: 3.5 context switches per request against haproxy's 2.0
// (2.45 with raw calls).
package proxy
