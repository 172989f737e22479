/* test_metrics.c - histogram buckets, label escaping, the text rendering
 * (src/metrics.c) and the fold of a released scoreboard entry into the
 * retired totals (src/scoreboard.c). */
#include "app.h"
#include "http.h"
#include "metrics.h"
#include "scoreboard.h"

#include <check.h>
#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>

static char *render(const struct scoreboard *sb)
{
	struct evbuffer *b = evbuffer_new();
	ck_assert_ptr_nonnull(b);
	ck_assert_int_eq(metrics_render(sb, b, "1.2.3"), 0);
	size_t n = evbuffer_get_length(b);
	char *s = malloc(n + 1);
	ck_assert_ptr_nonnull(s);
	evbuffer_remove(b, s, n);
	s[n] = '\0';
	evbuffer_free(b);
	return s;
}

/* An answered request, as the HTTP core hands it to on_complete. */
static struct http_request *answered(int method, int status)
{
	struct http_request *req = calloc(1, sizeof(*req));
	ck_assert_ptr_nonnull(req);
	req->method = method;
	req->res.status = status;
	req->start_ns = 1; /* long ago */
	return req;
}

START_TEST(test_buckets_are_upper_bounds_inclusive_with_an_inf_slot)
{
	ck_assert_int_eq(metrics_bucket(0), 0);
	ck_assert_int_eq(metrics_bucket(100000), 0); /* le="0.0001" includes 100 us */
	ck_assert_int_eq(metrics_bucket(100001), 1);
	ck_assert_int_eq(metrics_bucket(1000000), 3);         /* 1 ms */
	ck_assert_int_eq(metrics_bucket(10000000000ull), 15); /* 10 s */
	ck_assert_int_eq(metrics_bucket(10000000001ull), 16); /* above every bound */
	ck_assert_int_eq(metrics_bucket(UINT64_MAX), SB_METRIC_BUCKETS);
}
END_TEST

START_TEST(test_label_values_escape_backslash_quote_and_newline)
{
	char out[64];
	ck_assert_uint_eq(metrics_escape_label("a\\b\"c\nd", out, sizeof(out)), 10);
	ck_assert_str_eq(out, "a\\\\b\\\"c\\nd");
	/* Truncated, never in the middle of an escape. */
	ck_assert_uint_eq(metrics_escape_label("ab\"", out, 4), 2);
	ck_assert_str_eq(out, "ab");
}
END_TEST

START_TEST(test_unrouted_requests_render_as_unmatched_by_method_and_class)
{
	struct http_request *a = answered(HTTP_M_GET, 404), *b = answered(HTTP_M_DELETE, 503);
	metrics_attach(NULL, -1);
	metrics_request_done(a);
	metrics_request_done(a);
	metrics_request_done(b);
	metrics_count(MC_RATELIMIT_LOGIN);
	metrics_store_op(metrics_backend_index("sqlite"), 2, 4, 2000000); /* find_by_id timeout, 2 ms */
	char *s = render(NULL);
	ck_assert_ptr_nonnull(strstr(s, "# TYPE resil_http_requests_total counter\n"));
	ck_assert_ptr_nonnull(
	    strstr(s, "resil_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"4xx\"} 2\n"));
	ck_assert_ptr_nonnull(
	    strstr(s, "resil_http_requests_total{route=\"unmatched\",method=\"DELETE\",status=\"5xx\"} 1\n"));
	ck_assert_ptr_nonnull(strstr(s, "resil_http_request_duration_seconds_count{route=\"unmatched\"} 3\n"));
	ck_assert_ptr_nonnull(strstr(s, "resil_ratelimit_rejections_total{limiter=\"login\"} 1\n"));
	ck_assert_ptr_nonnull(
	    strstr(s, "resil_store_operations_total{backend=\"sqlite\",op=\"find_by_id\",result=\"timeout\"} 1\n"));
	ck_assert_ptr_nonnull(strstr(
	    s, "resil_store_operation_duration_seconds_bucket{backend=\"sqlite\",op=\"find_by_id\",le=\"0.001\"} 0\n"));
	ck_assert_ptr_nonnull(strstr(
	    s,
	    "resil_store_operation_duration_seconds_bucket{backend=\"sqlite\",op=\"find_by_id\",le=\"0.0025\"} 1\n"));
	ck_assert_ptr_nonnull(strstr(s, "resil_build_info{version=\"1.2.3\"} 1\n"));
	/* One HELP and one TYPE for the two rate-limit rows. */
	const char *first = strstr(s, "# TYPE resil_ratelimit_rejections_total");
	ck_assert_ptr_nonnull(first);
	ck_assert_ptr_null(strstr(first + 1, "# TYPE resil_ratelimit_rejections_total"));
	free(s);
	free(a);
	free(b);
	metrics_detach();
}
END_TEST

START_TEST(test_released_entry_is_folded_into_retired_and_totals_do_not_move)
{
	struct scoreboard *sb = sb_create();
	ck_assert_ptr_nonnull(sb);
	int idx = sb_claim(sb, 0, 1);
	ck_assert_int_ge(idx, 0);
	metrics_attach(sb, idx);
	struct http_request *r = answered(HTTP_M_POST, 201);
	for (int i = 0; i < 5; i++)
		metrics_request_done(r);
	metrics_count(MC_WS_MESSAGES_IN);
	metrics_circuit_transition("sqlite", 1);
	metrics_gauge_set(MG_JOBS_QUEUED, 7);
	metrics_detach();

	struct sb_counters *before = calloc(1, sizeof(*before));
	struct sb_counters *after = calloc(1, sizeof(*after));
	ck_assert_ptr_nonnull(before);
	ck_assert_ptr_nonnull(after);
	sb_counters_sum(sb, before);
	sb_release(sb, idx);
	sb_counters_sum(sb, after);
	ck_assert_int_eq(memcmp(before, after, sizeof(*before)), 0);
	ck_assert_uint_eq(sb->retired.requests[SB_METRIC_ROUTE_UNMATCHED][2][1], 5);
	ck_assert_uint_eq(sb->metrics[idx].c.requests[SB_METRIC_ROUTE_UNMATCHED][2][1], 0);
	ck_assert_int_eq(sb->metrics[idx].g.gauge[MG_JOBS_QUEUED], 0); /* a gone process has no gauges */
	ck_assert_uint_eq(sb->fold_seq % 2, 0);

	/* The entry's next process starts from zero; totals keep growing. */
	int again = sb_claim(sb, 0, 2);
	ck_assert_int_eq(again, idx);
	metrics_attach(sb, again);
	metrics_request_done(r);
	metrics_detach();
	char *s = render(sb);
	ck_assert_ptr_nonnull(
	    strstr(s, "resil_http_requests_total{route=\"unmatched\",method=\"POST\",status=\"2xx\"} 6\n"));
	ck_assert_ptr_nonnull(strstr(s, "resil_websocket_messages_received_total 1\n"));
	ck_assert_ptr_nonnull(strstr(s, "resil_circuit_transitions_total{circuit=\"sqlite\",to=\"open\"} 1\n"));
	free(s);
	free(before);
	free(after);
	free(r);
	sb_destroy(sb);
}
END_TEST

START_TEST(test_shared_names_get_one_index_each_and_a_full_table_says_so)
{
	struct sb_name tab[3];
	memset(tab, 0, sizeof(tab));
	ck_assert_int_eq(sb_name_index(tab, 3, "/a"), 0);
	ck_assert_int_eq(sb_name_index(tab, 3, "/b"), 1);
	ck_assert_int_eq(sb_name_index(tab, 3, "/a"), 0);
	ck_assert_int_eq(sb_name_index(tab, 3, "/c"), 2);
	ck_assert_int_eq(sb_name_index(tab, 3, "/d"), -1);
}
END_TEST

START_TEST(test_route_templates_are_numbered_once_per_pattern)
{
	struct app *a = app_new();
	ck_assert_ptr_nonnull(a);
	int (*h)(struct http_request *) = app_no_content;
	ck_assert_int_eq(app_get(a, "/api/posts", h), 0);
	ck_assert_int_eq(app_post(a, "/api/posts", h), 0);
	ck_assert_int_eq(app_get(a, "/api/posts/:id", h), 0);
	ck_assert_int_eq(app_template_count(a), 2);
	ck_assert_str_eq(app_template(a, 0), "/api/posts");
	ck_assert_str_eq(app_template(a, 1), "/api/posts/:id");
	ck_assert_ptr_null(app_template(a, 2));
	app_free(a);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("metrics");
	TCase *tc = tcase_create("metrics");
	tcase_add_test(tc, test_buckets_are_upper_bounds_inclusive_with_an_inf_slot);
	tcase_add_test(tc, test_label_values_escape_backslash_quote_and_newline);
	tcase_add_test(tc, test_unrouted_requests_render_as_unmatched_by_method_and_class);
	tcase_add_test(tc, test_released_entry_is_folded_into_retired_and_totals_do_not_move);
	tcase_add_test(tc, test_shared_names_get_one_index_each_and_a_full_table_says_so);
	tcase_add_test(tc, test_route_templates_are_numbered_once_per_pattern);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
