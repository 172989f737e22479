/* test_http_util.c - response helpers of the HTTP core: gzip threshold
 * and encoding, Accept-Encoding parsing, UUIDs, Date caching, URL decoding. */
#include "app.h"
#include "http.h"

#include <check.h>
#include <event2/buffer.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

START_TEST(test_accept_encoding_parsing_honours_q_values)
{
	ck_assert(http_accepts_gzip("gzip", 4));
	ck_assert(http_accepts_gzip("deflate, gzip;q=0.5", 19));
	ck_assert(http_accepts_gzip("br, *", 5));
	ck_assert(!http_accepts_gzip("gzip;q=0", 8));
	ck_assert(!http_accepts_gzip("deflate, br", 11));
	ck_assert(!http_accepts_gzip("xgzip", 5));
	ck_assert(!http_accepts_gzip("", 0));
}
END_TEST

START_TEST(test_gzip_output_inflates_to_the_input)
{
	struct evbuffer *src = evbuffer_new(), *dst = evbuffer_new();
	char text[5000];
	for (size_t i = 0; i < sizeof(text); i++)
		text[i] = (char)('a' + i % 7);
	evbuffer_add(src, text, sizeof(text));
	ck_assert_int_eq(http_gzip(src, dst), 0);
	size_t zl = evbuffer_get_length(dst);
	ck_assert(zl > 10 && zl < sizeof(text));
	unsigned char *z = evbuffer_pullup(dst, -1);
	ck_assert(z[0] == 0x1f && z[1] == 0x8b);
	char out[6000];
	z_stream zs;
	memset(&zs, 0, sizeof(zs));
	ck_assert_int_eq(inflateInit2(&zs, 31), Z_OK);
	zs.next_in = z;
	zs.avail_in = (uInt)zl;
	zs.next_out = (unsigned char *)out;
	zs.avail_out = sizeof(out);
	ck_assert_int_eq(inflate(&zs, Z_FINISH), Z_STREAM_END);
	ck_assert_int_eq((int)zs.total_out, (int)sizeof(text));
	ck_assert(memcmp(out, text, sizeof(text)) == 0);
	inflateEnd(&zs);
	evbuffer_free(src);
	evbuffer_free(dst);
}
END_TEST

START_TEST(test_gzip_threshold_is_one_kib)
{
	ck_assert_int_eq(HTTP_GZIP_MIN, 1024);
}
END_TEST

START_TEST(test_uuid4_has_version_and_variant)
{
	char a[37], b[37];
	http_uuid4(a);
	http_uuid4(b);
	ck_assert_int_eq((int)strlen(a), 36);
	ck_assert(a[8] == '-' && a[13] == '-' && a[18] == '-' && a[23] == '-');
	ck_assert(a[14] == '4');
	ck_assert(strchr("89ab", a[19]) != NULL);
	ck_assert_str_ne(a, b);
}
END_TEST

START_TEST(test_date_header_is_rfc7231_format)
{
	size_t len;
	const char *d = http_date_header(&len);
	ck_assert_int_eq((int)len, 37);
	ck_assert(strncmp(d, "Date: ", 6) == 0);
	ck_assert(strncmp(d + len - 6, " GMT\r\n", 6) == 0);
}
END_TEST

START_TEST(test_url_decoding_rejects_bad_escapes)
{
	char out[64];
	ck_assert_int_eq(app_url_decode("a%20b+c", 7, out, sizeof(out), 1), 5);
	ck_assert_str_eq(out, "a b c");
	ck_assert_int_eq(app_url_decode("a+b", 3, out, sizeof(out), 0), 3);
	ck_assert_str_eq(out, "a+b");
	ck_assert_int_eq(app_url_decode("%zz", 3, out, sizeof(out), 1), -1);
	ck_assert_int_eq(app_url_decode("%2", 2, out, sizeof(out), 1), -1);
	ck_assert_int_eq(app_url_decode("%", 1, out, sizeof(out), 1), -1);
	ck_assert_int_eq(app_url_decode("a%00", 4, out, sizeof(out), 1), -1);
	ck_assert_int_eq(app_url_decode("a\0b", 3, out, sizeof(out), 1), -1); /* a raw NUL too */
	ck_assert_int_eq(app_url_decode("%C3%A9", 6, out, sizeof(out), 1), 2);
	ck_assert_int_eq(app_url_decode("abcdef", 6, out, 4, 1), -1);
}
END_TEST

int main(void)
{
	if (sodium_init() < 0)
		return EXIT_FAILURE;
	Suite *s = suite_create("http_util");
	TCase *tc = tcase_create("helpers");
	tcase_add_test(tc, test_accept_encoding_parsing_honours_q_values);
	tcase_add_test(tc, test_gzip_output_inflates_to_the_input);
	tcase_add_test(tc, test_gzip_threshold_is_one_kib);
	tcase_add_test(tc, test_uuid4_has_version_and_variant);
	tcase_add_test(tc, test_date_header_is_rfc7231_format);
	tcase_add_test(tc, test_url_decoding_rejects_bad_escapes);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
