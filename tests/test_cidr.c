/* test_cidr.c - network lists and the client address behind trusted
 * proxies (src/cidr.c). */
#include "cidr.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct cidr_list parse_ok(const char *s)
{
	struct cidr_list l;
	char err[128] = "";
	ck_assert_msg(cidr_list_parse(s, &l, err, sizeof(err)) == 0, "%s: %s", s, err);
	return l;
}

START_TEST(test_lists_parse_networks_and_plain_addresses)
{
	struct cidr_list l = parse_ok(" 10.0.0.0/8, 192.168.1.7 ,2001:db8::/32,::1 ");
	ck_assert_int_eq(l.n, 4);
	ck_assert_int_eq(l.v[0].bits, 8);
	ck_assert_int_eq(l.v[1].bits, 32);
	ck_assert_int_eq(l.v[2].bits, 32);
	ck_assert_int_eq(l.v[3].bits, 128);
	ck_assert_int_eq(parse_ok("").n, 0);
	ck_assert_int_eq(parse_ok(" , ").n, 0);
	/* Host bits are cleared: 10.1.2.3/8 is the network 10.0.0.0/8. */
	l = parse_ok("10.1.2.3/8");
	ck_assert_int_eq(cidr_list_match(&l, "10.200.0.1"), 1);
}
END_TEST

START_TEST(test_bad_lists_are_refused_with_a_reason)
{
	const char *bad[] = {"10.0.0.0/33", "::1/129", "10.0.0.0/",   "10.0.0.0/8x",
	                     "example.com", "1.2.3",   "10.0.0.0/-1", "::ffff:10.0.0.0/8"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct cidr_list l;
		l.n = 99;
		char err[128] = "";
		ck_assert_msg(cidr_list_parse(bad[i], &l, err, sizeof(err)) == -1, "%s accepted", bad[i]);
		ck_assert_msg(err[0] != '\0', "%s: no reason", bad[i]);
		ck_assert_int_eq(l.n, 99); /* unchanged */
	}
	char many[1024] = "";
	for (int i = 0; i <= CIDR_MAX; i++)
		snprintf(many + strlen(many), sizeof(many) - strlen(many), "10.0.0.%d,", i);
	struct cidr_list l;
	char err[128];
	ck_assert_int_eq(cidr_list_parse(many, &l, err, sizeof(err)), -1);
}
END_TEST

START_TEST(test_matching_honours_prefixes_families_and_mapped_addresses)
{
	struct cidr_list l = parse_ok("10.0.0.0/8,172.16.0.0/12,2001:db8::/32");
	ck_assert_int_eq(cidr_list_match(&l, "10.255.255.255"), 1);
	ck_assert_int_eq(cidr_list_match(&l, "11.0.0.1"), 0);
	ck_assert_int_eq(cidr_list_match(&l, "172.31.0.1"), 1);
	ck_assert_int_eq(cidr_list_match(&l, "172.32.0.1"), 0);
	ck_assert_int_eq(cidr_list_match(&l, "2001:db8:1::5"), 1);
	ck_assert_int_eq(cidr_list_match(&l, "2001:db9::5"), 0);
	ck_assert_int_eq(cidr_list_match(&l, "::ffff:10.1.1.1"), 1); /* dual-stack peer */
	ck_assert_int_eq(cidr_list_match(&l, "unix"), 0);
	struct cidr_list none = parse_ok("");
	ck_assert_int_eq(cidr_list_match(&none, "10.0.0.1"), 0);
}
END_TEST

START_TEST(test_forwarded_addresses_are_canonicalised)
{
	char out[CIDR_ADDRSTRLEN];
	ck_assert_int_eq(cidr_addr_canon(" 1.2.3.4 ", 9, out), 0);
	ck_assert_str_eq(out, "1.2.3.4");
	ck_assert_int_eq(cidr_addr_canon("1.2.3.4:8080", 12, out), 0);
	ck_assert_str_eq(out, "1.2.3.4");
	ck_assert_int_eq(cidr_addr_canon("\"[2001:DB8::1]:4711\"", 20, out), 0);
	ck_assert_str_eq(out, "2001:db8::1");
	ck_assert_int_eq(cidr_addr_canon("2001:db8:0:0::1", 15, out), 0);
	ck_assert_str_eq(out, "2001:db8::1");
	ck_assert_int_eq(cidr_addr_canon("unknown", 7, out), -1);
	ck_assert_int_eq(cidr_addr_canon("[::1", 4, out), -1);
	ck_assert_int_eq(cidr_addr_canon("", 0, out), -1);
}
END_TEST

static const char *client(const struct cidr_list *t, const char *peer, const char *xff, const char *fwd)
{
	static char out[CIDR_ADDRSTRLEN];
	cidr_client_address(t, peer, xff, xff ? strlen(xff) : 0, fwd, fwd ? strlen(fwd) : 0, out);
	return out;
}

START_TEST(test_client_address_is_the_rightmost_untrusted_hop)
{
	struct cidr_list t = parse_ok("10.0.0.0/8,127.0.0.1");
	/* Untrusted peer: headers are ignored. */
	ck_assert_str_eq(client(&t, "203.0.113.9", "198.51.100.1", NULL), "203.0.113.9");
	/* Trusted peer: the right-most address that is not a trusted proxy. */
	ck_assert_str_eq(client(&t, "127.0.0.1", "198.51.100.1", NULL), "198.51.100.1");
	ck_assert_str_eq(client(&t, "127.0.0.1", "6.6.6.6, 198.51.100.1, 10.0.0.5", NULL), "198.51.100.1");
	/* Spoofed left part is never reached. */
	ck_assert_str_eq(client(&t, "10.1.1.1", "1.1.1.1,  198.51.100.2", NULL), "198.51.100.2");
	/* Garbage where the client should be: stop at the last trusted hop. */
	ck_assert_str_eq(client(&t, "127.0.0.1", "10.0.0.7, unknown", NULL), "127.0.0.1");
	ck_assert_str_eq(client(&t, "127.0.0.1", "unknown, 10.0.0.7", NULL), "10.0.0.7");
	/* Every hop trusted: the left-most. */
	ck_assert_str_eq(client(&t, "127.0.0.1", "10.0.0.1, 10.0.0.2", NULL), "10.0.0.1");
	/* Forwarded (RFC 7239), used when there is no X-Forwarded-For. */
	ck_assert_str_eq(client(&t, "127.0.0.1", NULL, "for=192.0.2.60;proto=http;by=203.0.113.43"), "192.0.2.60");
	ck_assert_str_eq(client(&t, "127.0.0.1", NULL, "for=6.6.6.6, for=\"[2001:db8:cafe::17]:4711\";proto=https"),
	                 "2001:db8:cafe::17");
	ck_assert_str_eq(client(&t, "127.0.0.1", NULL, "proto=https"), "127.0.0.1");
	ck_assert_str_eq(client(&t, "127.0.0.1", "198.51.100.3", "for=192.0.2.1"), "198.51.100.3");
	/* Nothing trusted (the default): always the peer. */
	struct cidr_list none = parse_ok("");
	ck_assert_str_eq(client(&none, "127.0.0.1", "198.51.100.1", "for=192.0.2.1"), "127.0.0.1");
	ck_assert_str_eq(client(&none, "unix", "198.51.100.1", NULL), "unix");
	ck_assert_str_eq(client(&t, "::ffff:127.0.0.1", "198.51.100.4", NULL), "198.51.100.4");
}
END_TEST

int main(void)
{
	Suite *s = suite_create("cidr");
	TCase *tc = tcase_create("cidr");
	tcase_add_test(tc, test_lists_parse_networks_and_plain_addresses);
	tcase_add_test(tc, test_bad_lists_are_refused_with_a_reason);
	tcase_add_test(tc, test_matching_honours_prefixes_families_and_mapped_addresses);
	tcase_add_test(tc, test_forwarded_addresses_are_canonicalised);
	tcase_add_test(tc, test_client_address_is_the_rightmost_untrusted_hop);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
