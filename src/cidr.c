/* cidr.c - network lists and the client address behind trusted proxies
 * (see cidr.h). Addresses are parsed with inet_pton and compared as bytes;
 * forwarded-address headers are walked right to left, so that only what
 * trusted proxies appended decides the client address. */
#include "cidr.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* Parse a bare address (no brackets, no port) into family/bytes. */
static int parse_ip(const char *s, int *family, unsigned char addr[16])
{
	struct in_addr a4;
	struct in6_addr a6;
	if (inet_pton(AF_INET, s, &a4) == 1) {
		*family = AF_INET;
		memcpy(addr, &a4, 4);
		return 0;
	}
	if (inet_pton(AF_INET6, s, &a6) == 1) {
		if (memcmp(&a6, v4mapped, 12) == 0) {
			*family = AF_INET;
			memcpy(addr, (const unsigned char *)&a6 + 12, 4);
		} else {
			*family = AF_INET6;
			memcpy(addr, &a6, 16);
		}
		return 0;
	}
	return -1;
}

static int prefix_match(const unsigned char *a, const unsigned char *net, int bits)
{
	int full = bits / 8, rest = bits % 8;
	if (memcmp(a, net, (size_t)full) != 0)
		return 0;
	if (rest) {
		unsigned char mask = (unsigned char)(0xff << (8 - rest));
		if ((a[full] & mask) != (net[full] & mask))
			return 0;
	}
	return 1;
}

static int list_match(const struct cidr_list *l, int family, const unsigned char *addr)
{
	for (int i = 0; i < l->n; i++)
		if (l->v[i].family == family && prefix_match(addr, l->v[i].addr, l->v[i].bits))
			return 1;
	return 0;
}

int cidr_list_match(const struct cidr_list *l, const char *ip)
{
	int family;
	unsigned char addr[16];
	if (!l || l->n == 0 || parse_ip(ip, &family, addr) < 0)
		return 0;
	return list_match(l, family, addr);
}

int cidr_list_parse(const char *s, struct cidr_list *out, char *err, size_t errlen)
{
	struct cidr_list l;
	memset(&l, 0, sizeof(l));
	const char *p = s;
	while (*p) {
		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		if (!*p)
			break;
		const char *start = p;
		while (*p && *p != ',')
			p++;
		size_t len = (size_t)(p - start);
		while (len && (start[len - 1] == ' ' || start[len - 1] == '\t'))
			len--;
		char item[64];
		if (len >= sizeof(item)) {
			snprintf(err, errlen, "network too long: \"%.40s...\"", start);
			return -1;
		}
		memcpy(item, start, len);
		item[len] = '\0';
		if (l.n >= CIDR_MAX) {
			snprintf(err, errlen, "more than %d networks", CIDR_MAX);
			return -1;
		}
		struct cidr *c = &l.v[l.n];
		char *slash = strchr(item, '/');
		long bits = -1;
		if (slash) {
			char *end;
			*slash = '\0';
			if (!isdigit((unsigned char)slash[1])) {
				snprintf(err, errlen, "invalid prefix length in \"%s/%s\"", item, slash + 1);
				return -1;
			}
			bits = strtol(slash + 1, &end, 10);
			if (*end || bits > 128) {
				snprintf(err, errlen, "invalid prefix length in \"%s/%s\"", item, slash + 1);
				return -1;
			}
		}
		struct in6_addr a6;
		int mapped = inet_pton(AF_INET6, item, &a6) == 1 && memcmp(&a6, v4mapped, 12) == 0;
		if (parse_ip(item, &c->family, c->addr) < 0) {
			snprintf(err, errlen, "invalid address \"%s\" (expected an IPv4 or IPv6 address or network)",
			         item);
			return -1;
		}
		int max = c->family == AF_INET ? 32 : 128;
		if (mapped && bits >= 96)
			bits -= 96; /* ::ffff:10.0.0.0/104 is 10.0.0.0/8 */
		else if (mapped && bits >= 0) {
			snprintf(err, errlen, "invalid prefix length for an IPv4-mapped address in \"%s\"", item);
			return -1;
		}
		if (bits > max) {
			snprintf(err, errlen, "prefix length too long in \"%s/%ld\"", item, bits);
			return -1;
		}
		c->bits = bits < 0 ? max : (int)bits;
		/* Clear host bits so that matching compares networks. */
		for (int b = c->bits; b < max; b++)
			c->addr[b / 8] &= (unsigned char)~(0x80 >> (b % 8));
		l.n++;
	}
	*out = l;
	return 0;
}

int cidr_addr_canon(const char *s, size_t len, char out[CIDR_ADDRSTRLEN])
{
	char buf[64];
	while (len && (*s == ' ' || *s == '\t')) {
		s++;
		len--;
	}
	while (len && (s[len - 1] == ' ' || s[len - 1] == '\t'))
		len--;
	if (len >= 2 && s[0] == '"' && s[len - 1] == '"') {
		s++;
		len -= 2;
	}
	if (len == 0 || len >= sizeof(buf))
		return -1;
	if (s[0] == '[') {
		const char *rb = memchr(s, ']', len);
		if (!rb)
			return -1;
		size_t after = len - (size_t)(rb - s) - 1;
		if (after && rb[1] != ':')
			return -1;
		len = (size_t)(rb - s - 1);
		memcpy(buf, s + 1, len);
	} else {
		const char *colon = memchr(s, ':', len);
		/* One colon: IPv4 with a port. More: a bare IPv6 address. */
		if (colon && !memchr(colon + 1, ':', len - (size_t)(colon - s) - 1))
			len = (size_t)(colon - s);
		memcpy(buf, s, len);
	}
	buf[len] = '\0';
	int family;
	unsigned char addr[16];
	if (parse_ip(buf, &family, addr) < 0)
		return -1;
	return inet_ntop(family, addr, out, CIDR_ADDRSTRLEN) ? 0 : -1;
}

/* Next comma-separated element from the right of [s, *end): sets *start
 * and *len, moves *end before it. 0 when none is left. */
static int prev_element(const char *s, const char **end, const char **start, size_t *len)
{
	const char *e = *end;
	if (e <= s)
		return 0;
	const char *b = e;
	while (b > s && b[-1] != ',')
		b--;
	*start = b;
	*len = (size_t)(e - b);
	*end = b > s ? b - 1 : s;
	return 1;
}

/* In a Forwarded element ("for=1.2.3.4;proto=https;by=..."), find the
 * for= value. 0 or -1. */
static int forwarded_for(const char *el, size_t len, const char **v, size_t *vlen)
{
	size_t i = 0;
	while (i < len) {
		while (i < len && (el[i] == ' ' || el[i] == '\t' || el[i] == ';'))
			i++;
		size_t ps = i;
		while (i < len && el[i] != ';')
			i++;
		if (i - ps > 4 && strncasecmp(el + ps, "for=", 4) == 0) {
			*v = el + ps + 4;
			*vlen = i - ps - 4;
			return 0;
		}
	}
	return -1;
}

void cidr_client_address(const struct cidr_list *trusted, const char *peer, const char *xff, size_t xff_len,
                         const char *fwd, size_t fwd_len, char out[CIDR_ADDRSTRLEN])
{
	if (cidr_addr_canon(peer, strlen(peer), out) < 0)
		snprintf(out, CIDR_ADDRSTRLEN, "%s", peer); /* "unix" */
	if (!trusted || trusted->n == 0 || !cidr_list_match(trusted, out))
		return;
	const char *list = xff && xff_len ? xff : fwd;
	size_t list_len = xff && xff_len ? xff_len : fwd_len;
	if (!list || !list_len)
		return;
	int is_fwd = list == fwd;
	const char *end = list + list_len, *el;
	size_t el_len;
	while (prev_element(list, &end, &el, &el_len)) {
		const char *v = el;
		size_t vl = el_len;
		if (is_fwd && forwarded_for(el, el_len, &v, &vl) < 0)
			return; /* no for= here: stop at the last trusted hop */
		char addr[CIDR_ADDRSTRLEN];
		if (cidr_addr_canon(v, vl, addr) < 0)
			return; /* not an address ("unknown", garbage): the same */
		memcpy(out, addr, CIDR_ADDRSTRLEN);
		if (!cidr_list_match(trusted, addr))
			return; /* the right-most untrusted address: the client */
	}
}
