/* test_sio.c - unit tests for workers/sio.c, the Socket.IO v4 / Engine.IO
 * v4 text codec: every packet type decoded and encoded, and malformed
 * input refused. Pure functions: no loop, no sockets.
 */
#include "../src/json.h"
#include "../workers/sio.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

static struct sio_packet pk;

static int dec(const char *s)
{
	return sio_decode(s, strlen(s), &pk);
}

static int data_is(const char *want)
{
	return pk.data_len == strlen(want) && memcmp(pk.data, want, pk.data_len) == 0;
}

static int nsp_is(const char *want)
{
	return pk.nsp_len == strlen(want) && memcmp(pk.nsp, want, pk.nsp_len) == 0;
}

START_TEST(test_sio_decodes_engineio_packets)
{
	ck_assert_int_eq(dec("1"), 0);
	ck_assert_int_eq(pk.type, SIO_EIO_CLOSE);
	ck_assert_int_eq(dec("2"), 0);
	ck_assert_int_eq(pk.type, SIO_EIO_PING);
	ck_assert(data_is(""));
	ck_assert_int_eq(dec("2probe"), 0);
	ck_assert_int_eq(pk.type, SIO_EIO_PING);
	ck_assert(data_is("probe"));
	ck_assert_int_eq(dec("3"), 0);
	ck_assert_int_eq(pk.type, SIO_EIO_PONG);
	ck_assert_int_eq(dec("5"), 0);
	ck_assert_int_eq(pk.type, SIO_EIO_UPGRADE);
	ck_assert_int_eq(dec("6"), 0);
	ck_assert_int_eq(pk.type, SIO_EIO_NOOP);
	ck_assert_int_eq(dec("0{\"sid\":\"x\"}"), 0);
	ck_assert_int_eq(pk.type, SIO_EIO_OPEN);
	ck_assert(data_is("{\"sid\":\"x\"}"));
}
END_TEST

START_TEST(test_sio_decodes_connect_with_and_without_namespace_and_auth)
{
	ck_assert_int_eq(dec("40"), 0);
	ck_assert_int_eq(pk.type, SIO_CONNECT);
	ck_assert(sio_nsp_default(&pk));
	ck_assert(data_is(""));
	ck_assert_int_eq(dec("40{\"token\":\"t\"}"), 0);
	ck_assert(sio_nsp_default(&pk));
	ck_assert(data_is("{\"token\":\"t\"}"));
	ck_assert_int_eq(dec("40/,{\"token\":\"t\"}"), 0);
	ck_assert(sio_nsp_default(&pk));
	ck_assert(data_is("{\"token\":\"t\"}"));
	ck_assert_int_eq(dec("40/admin,{\"a\":1}"), 0);
	ck_assert(!sio_nsp_default(&pk));
	ck_assert(nsp_is("/admin"));
	ck_assert(data_is("{\"a\":1}"));
	ck_assert_int_eq(dec("40/admin"), 0); /* the namespace runs to the end */
	ck_assert(nsp_is("/admin"));
	ck_assert(data_is(""));
}
END_TEST

START_TEST(test_sio_decodes_disconnect)
{
	ck_assert_int_eq(dec("41"), 0);
	ck_assert_int_eq(pk.type, SIO_DISCONNECT);
	ck_assert(sio_nsp_default(&pk));
	ck_assert_int_eq(dec("41/chat,"), 0);
	ck_assert_int_eq(pk.type, SIO_DISCONNECT);
	ck_assert(nsp_is("/chat"));
}
END_TEST

START_TEST(test_sio_decodes_events_with_namespace_and_ack_id)
{
	ck_assert_int_eq(dec("42[\"join_room\",\"r\"]"), 0);
	ck_assert_int_eq(pk.type, SIO_EVENT);
	ck_assert(sio_nsp_default(&pk));
	ck_assert_int_eq(pk.has_ack, 0);
	ck_assert(data_is("[\"join_room\",\"r\"]"));
	ck_assert_int_eq(dec("4217[\"x\"]"), 0);
	ck_assert_int_eq(pk.has_ack, 1);
	ck_assert_uint_eq(pk.ack, 17);
	ck_assert(data_is("[\"x\"]"));
	ck_assert_int_eq(dec("42/,3[\"x\"]"), 0);
	ck_assert(sio_nsp_default(&pk));
	ck_assert_uint_eq(pk.ack, 3);
	ck_assert_int_eq(dec("42/x,[]"), 0);
	ck_assert(nsp_is("/x"));
	ck_assert(data_is("[]"));
}
END_TEST

START_TEST(test_sio_decodes_ack_error_and_binary_packets)
{
	ck_assert_int_eq(dec("439[\"ok\"]"), 0);
	ck_assert_int_eq(pk.type, SIO_ACK);
	ck_assert_uint_eq(pk.ack, 9);
	ck_assert(data_is("[\"ok\"]"));
	ck_assert_int_eq(dec("44{\"message\":\"no\"}"), 0);
	ck_assert_int_eq(pk.type, SIO_CONNECT_ERROR);
	ck_assert_int_eq(dec("451-[\"f\",{\"_placeholder\":true,\"num\":0}]"), 0);
	ck_assert_int_eq(pk.type, SIO_BINARY_EVENT);
	ck_assert_uint_eq(pk.attachments, 1);
	ck_assert_int_eq(dec("462-/a,5[]"), 0);
	ck_assert_int_eq(pk.type, SIO_BINARY_ACK);
	ck_assert_uint_eq(pk.attachments, 2);
	ck_assert(nsp_is("/a"));
	ck_assert_uint_eq(pk.ack, 5);
}
END_TEST

START_TEST(test_sio_refuses_malformed_packets)
{
	static const char *bad[] = {
	    "",     /* empty */
	    "7",    /* no such Engine.IO type */
	    "x",    /* not a digit */
	    "4",    /* message without a Socket.IO type */
	    "47[]", /* no such Socket.IO type */
	    "4x",   /* not a digit */
	    "1x",   /* close carries nothing */
	    "5x",
	    "6x",                       /* nor do upgrade and noop */
	    "43[]",                     /* an ack needs its id */
	    "45[]",                     /* a binary event needs "<n>-" */
	    "45-[]",                    /* ... with a number */
	    "451[]",                    /* ... and the dash */
	    "4299999999999999999999[]", /* an ack id past 2^63 */
	    "459999999999-[]",          /* attachments past 32 bits */
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(dec(bad[i]) == -1, "accepted \"%s\"", bad[i]);
	/* A packet is decoded from its length, not a NUL. */
	ck_assert_int_eq(sio_decode("2\0x", 3, &pk), 0);
	ck_assert_uint_eq(pk.data_len, 2);
}
END_TEST

START_TEST(test_sio_event_payload_decodes_name_and_argument)
{
	struct json_value *doc;
	const struct json_value *name, *arg;
	const char *ok = "[\"send_message\",{\"roomId\":\"r\"},7]";
	ck_assert_int_eq(sio_event_decode(ok, strlen(ok), 16, &doc, &name, &arg), SIO_EVENT_OK);
	ck_assert_str_eq(name->s, "send_message");
	ck_assert_int_eq(arg->type, JSON_OBJECT);
	json_free(doc);
	ck_assert_int_eq(sio_event_decode("[\"only\"]", 8, 16, &doc, &name, &arg), SIO_EVENT_OK);
	ck_assert_ptr_null(arg);
	json_free(doc);
	static const struct {
		const char *in;
		enum sio_event_status want;
	} bad[] = {{"{nope", SIO_EVENT_BAD_JSON}, {"{\"a\":1}", SIO_EVENT_BAD_JSON}, {"", SIO_EVENT_BAD_JSON},
	           {"[]", SIO_EVENT_NO_NAME},     {"[7]", SIO_EVENT_NO_NAME},        {"[[[[1]]]]", SIO_EVENT_BAD_JSON}};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		enum sio_event_status st = sio_event_decode(bad[i].in, strlen(bad[i].in), 3, &doc, &name, &arg);
		ck_assert_msg(st == bad[i].want, "%s: %d", bad[i].in, (int)st);
		ck_assert_ptr_null(doc);
	}
}
END_TEST

START_TEST(test_sio_encodes_open_and_connect)
{
	char buf[SIO_OPEN_MAX];
	int n = sio_encode_open(buf, sizeof(buf), "00ff00ff00ff00ff", 25000, 20000, 65536);
	const char *want = "0{\"sid\":\"00ff00ff00ff00ff\",\"upgrades\":[],\"pingInterval\":25000,"
	                   "\"pingTimeout\":20000,\"maxPayload\":65536}";
	ck_assert_int_eq(n, (int)strlen(want));
	ck_assert_str_eq(buf, want);
	n = sio_encode_connect(buf, SIO_CONNECT_MAX, "abc");
	ck_assert_str_eq(buf, "40{\"sid\":\"abc\"}");
	ck_assert_int_eq(n, 15);
	/* A sid is never something that needs escaping. */
	ck_assert_int_eq(sio_encode_connect(buf, sizeof(buf), "a\"b"), -1);
	ck_assert_int_eq(sio_encode_open(buf, sizeof(buf), "", 1, 1, 1), -1);
	/* Too small a buffer: -1, never a partial packet reported as whole. */
	ck_assert_int_eq(sio_encode_connect(buf, 10, "abc"), -1);
	ck_assert_int_eq(sio_encode_connect(buf, 15, "abc"), 15); /* no room for the NUL is fine */
}
END_TEST

START_TEST(test_sio_encodes_connect_errors_escaped_with_their_namespace)
{
	char buf[256];
	ck_assert_int_gt(sio_encode_connect_error(buf, sizeof(buf), "/", 1, "access token required"), 0);
	ck_assert_str_eq(buf, "44{\"message\":\"access token required\"}");
	ck_assert_int_gt(sio_encode_connect_error(buf, sizeof(buf), "/admin", 6, "Invalid namespace"), 0);
	ck_assert_str_eq(buf, "44/admin,{\"message\":\"Invalid namespace\"}");
	ck_assert_int_gt(sio_encode_connect_error(buf, sizeof(buf), "/", 1, "a \"q\" \\ \n"), 0);
	ck_assert_str_eq(buf, "44{\"message\":\"a \\\"q\\\" \\\\ \\u000a\"}");
	ck_assert_int_eq(sio_encode_connect_error(buf, sizeof(buf), "/a,b", 4, "x"), -1);
	/* A long namespace is cut at 64 bytes, never inside a character. */
	char nsp[80];
	nsp[0] = '/';
	memset(nsp + 1, 'n', 62);
	memcpy(nsp + 63, "\xc3\xa9\xc3\xa9", 4); /* an "é" straddles byte 64 */
	int n = sio_encode_connect_error(buf, sizeof(buf), nsp, 67, "x");
	ck_assert_int_gt(n, 0);
	ck_assert(json_utf8_valid(buf, (size_t)n));
	ck_assert_int_eq(memcmp(buf + 2 + 63, ",{", 2), 0);
}
END_TEST

START_TEST(test_sio_encodes_events_from_json_texts)
{
	char buf[64];
	int n = sio_encode_event(buf, sizeof(buf), "\"new_message\"", 13, "{\"a\":1}", 7);
	ck_assert_int_eq(n, 13 + 7 + SIO_EVENT_OVERHEAD);
	ck_assert_int_eq(memcmp(buf, "42[\"new_message\",{\"a\":1}]", (size_t)n), 0);
	ck_assert_int_eq(sio_encode_event(buf, 20, "\"new_message\"", 13, "{\"a\":1}", 7), -1);
	ck_assert_int_eq(sio_encode_event(buf, sizeof(buf), "new", 3, "1", 1), -1);  /* not a JSON string */
	ck_assert_int_eq(sio_encode_event(buf, sizeof(buf), "\"e\"", 3, "", 0), -1); /* no data */
	/* Round trip: what is encoded decodes to the same event. */
	n = sio_encode_event(buf, sizeof(buf), "\"typing\"", 8, "[1,2]", 5);
	ck_assert_int_eq(sio_decode(buf, (size_t)n, &pk), 0);
	ck_assert_int_eq(pk.type, SIO_EVENT);
	struct json_value *doc;
	const struct json_value *name, *arg;
	ck_assert_int_eq(sio_event_decode(pk.data, pk.data_len, 16, &doc, &name, &arg), SIO_EVENT_OK);
	ck_assert_str_eq(name->s, "typing");
	ck_assert_int_eq(arg->type, JSON_ARRAY);
	json_free(doc);
}
END_TEST

START_TEST(test_sio_encodes_acks_with_their_id_that_decode_back)
{
	char buf[64];
	int n = sio_encode_ack(buf, sizeof(buf), 7, "{\"ok\":true}", 11);
	ck_assert_int_eq(n, 16);
	ck_assert_str_eq(buf, "437[{\"ok\":true}]");
	ck_assert_int_eq(sio_decode(buf, (size_t)n, &pk), 0);
	ck_assert_int_eq(pk.type, SIO_ACK);
	ck_assert_int_eq(pk.has_ack, 1);
	ck_assert_uint_eq(pk.ack, 7);
	ck_assert(data_is("[{\"ok\":true}]"));
	/* The largest id a client may send fits in the overhead. */
	n = sio_encode_ack(buf, sizeof(buf), (uint64_t)INT64_MAX, "1", 1);
	ck_assert_int_eq(n, 1 + SIO_ACK_OVERHEAD);
	ck_assert_str_eq(buf, "439223372036854775807[1]");
	ck_assert_int_eq(sio_decode(buf, (size_t)n, &pk), 0);
	ck_assert_uint_eq(pk.ack, (uint64_t)INT64_MAX);
	ck_assert_int_eq(sio_encode_ack(buf, sizeof(buf), 0, "0", 1), 6);
	ck_assert_str_eq(buf, "430[0]");
	/* Refused: an id the decoder would refuse, no data, too small a buffer. */
	ck_assert_int_eq(sio_encode_ack(buf, sizeof(buf), (uint64_t)INT64_MAX + 1, "1", 1), -1);
	ck_assert_int_eq(sio_encode_ack(buf, sizeof(buf), 1, "", 0), -1);
	ck_assert_int_eq(sio_encode_ack(buf, 5, 12, "{}", 2), -1);
	ck_assert_int_eq(sio_encode_ack(buf, 7, 12, "{}", 2), -1);
	ck_assert_int_eq(sio_encode_ack(buf, 8, 12, "{}", 2), 8); /* no room for the NUL is fine */
	ck_assert_int_eq(memcmp(buf, "4312[{}]", 8), 0);
}
END_TEST

START_TEST(test_sio_formats_session_ids_as_16_hex_digits)
{
	char sid[17];
	sio_sid_format(0x0123456789abcdefull, sid);
	ck_assert_str_eq(sid, "0123456789abcdef");
	sio_sid_format(0, sid);
	ck_assert_str_eq(sid, "0000000000000000");
}
END_TEST

static Suite *sio_suite(void)
{
	Suite *s = suite_create("sio");
	struct {
		const char *name;
		const TTest *test;
	} cases[] = {
	    {"engineio", test_sio_decodes_engineio_packets},
	    {"connect", test_sio_decodes_connect_with_and_without_namespace_and_auth},
	    {"disconnect", test_sio_decodes_disconnect},
	    {"event", test_sio_decodes_events_with_namespace_and_ack_id},
	    {"ack_error_binary", test_sio_decodes_ack_error_and_binary_packets},
	    {"malformed", test_sio_refuses_malformed_packets},
	    {"event_payload", test_sio_event_payload_decodes_name_and_argument},
	    {"encode_open_connect", test_sio_encodes_open_and_connect},
	    {"encode_connect_error", test_sio_encodes_connect_errors_escaped_with_their_namespace},
	    {"encode_event", test_sio_encodes_events_from_json_texts},
	    {"encode_ack", test_sio_encodes_acks_with_their_id_that_decode_back},
	    {"sid", test_sio_formats_session_ids_as_16_hex_digits},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		TCase *tc = tcase_create(cases[i].name);
		tcase_add_test(tc, cases[i].test);
		suite_add_tcase(s, tc);
	}
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(sio_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
