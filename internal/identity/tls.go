package identity

import "crypto/tls"

// CipherSuites are the TLS 1.2 suites trellis offers, on its API and on
// every instance's port 61443: ECDHE for forward secrecy and AEAD only, no
// CBC or static-RSA suites. (TLS 1.3's suites are all AEAD and not
// configurable.) It returns a new slice each call.
func CipherSuites() []uint16 {
	return []uint16{
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
		tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
	}
}
