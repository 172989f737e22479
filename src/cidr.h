/* cidr.h - lists of IPv4/IPv6 networks ("10.0.0.0/8, ::1") and the
 * client address behind trusted proxies (SPEC section 5).
 *
 * A list is a fixed-size value (no allocation): parse it once from the
 * configuration, keep it as long as whoever matches against it. IPv4
 * addresses mapped into IPv6 (::ffff:a.b.c.d, as a dual-stack listener
 * reports IPv4 peers) match IPv4 networks.
 */
#ifndef RESIL_CIDR_H
#define RESIL_CIDR_H

#include <stddef.h>

#define CIDR_MAX 32
#define CIDR_ADDRSTRLEN 46 /* INET6_ADDRSTRLEN */

struct cidr {
	int family;             /* AF_INET or AF_INET6 */
	unsigned char addr[16]; /* network address, host bits cleared */
	int bits;               /* prefix length */
};

struct cidr_list {
	int n;
	struct cidr v[CIDR_MAX];
};

/* Parse a comma-separated list of addresses or networks (whitespace
 * around items ignored; "" is the empty list; a plain address is a /32 or
 * /128). Returns 0, or -1 with a one-line reason in err (out unchanged). */
int cidr_list_parse(const char *s, struct cidr_list *out, char *err, size_t errlen);
/* 1 if the textual address ip (IPv4 or IPv6) lies in one of the networks. */
int cidr_list_match(const struct cidr_list *l, const char *ip);
/* Parse one address as found in X-Forwarded-For or Forwarded: "1.2.3.4",
 * "1.2.3.4:80", "::1", "[::1]", "[::1]:80" (quotes already removed).
 * Writes the canonical text form into out; 0 or -1. */
int cidr_addr_canon(const char *s, size_t len, char out[CIDR_ADDRSTRLEN]);

/* The client address of a request that came from peer (textual, as the
 * socket reports it): when peer is in trusted, the right-most address of
 * xff (the X-Forwarded-For values, comma-joined; or, without it, the "for="
 * addresses of fwd, the Forwarded header) that is not itself trusted; an
 * entry that is no address stops the walk at the last trusted hop. When
 * peer is not trusted or no header names a client, peer itself. The
 * result goes to out (canonical text). */
void cidr_client_address(const struct cidr_list *trusted, const char *peer, const char *xff, size_t xff_len,
                         const char *fwd, size_t fwd_len, char out[CIDR_ADDRSTRLEN]);

#endif
