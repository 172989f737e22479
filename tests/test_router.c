/* test_router.c - route matching, parameters, 404/405 and Allow. */
#include "http.h"
#include "router.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

static int tag_list, tag_get, tag_post, tag_patch, tag_members;
static struct router *r;

static void setup(void)
{
	r = router_new();
	ck_assert_int_eq(router_add(r, HTTP_M_GET, "/api/posts", &tag_list), 0);
	ck_assert_int_eq(router_add(r, HTTP_M_POST, "/api/posts", &tag_post), 0);
	ck_assert_int_eq(router_add(r, HTTP_M_GET, "/api/posts/:id", &tag_get), 0);
	ck_assert_int_eq(router_add(r, HTTP_M_PATCH | HTTP_M_DELETE, "/api/posts/:id", &tag_patch), 0);
	ck_assert_int_eq(router_add(r, HTTP_M_POST, "/api/rooms/:id/members", &tag_members), 0);
}

static void teardown(void)
{
	router_free(r);
}

static enum router_result match(int m, const char *path, void **route, struct route_params *p, int *allow)
{
	return router_match(r, m, path, strlen(path), route, p, allow);
}

START_TEST(test_router_matches_static_route)
{
	void *route = NULL;
	struct route_params p;
	int allow;
	ck_assert_int_eq(match(HTTP_M_GET, "/api/posts", &route, &p, &allow), ROUTER_FOUND);
	ck_assert_ptr_eq(route, &tag_list);
	ck_assert_int_eq(p.n, 0);
	ck_assert_int_eq(match(HTTP_M_POST, "/api/posts", &route, &p, &allow), ROUTER_FOUND);
	ck_assert_ptr_eq(route, &tag_post);
}
END_TEST

START_TEST(test_router_extracts_named_params)
{
	void *route = NULL;
	struct route_params p;
	int allow;
	ck_assert_int_eq(match(HTTP_M_POST, "/api/rooms/abc123/members", &route, &p, &allow), ROUTER_FOUND);
	ck_assert_ptr_eq(route, &tag_members);
	ck_assert_int_eq(p.n, 1);
	ck_assert_str_eq(p.name[0], "id");
	ck_assert_int_eq((int)p.value_len[0], 6);
	ck_assert(memcmp(p.value[0], "abc123", 6) == 0);
}
END_TEST

START_TEST(test_router_tolerates_one_trailing_slash)
{
	void *route = NULL;
	struct route_params p;
	int allow;
	ck_assert_int_eq(match(HTTP_M_GET, "/api/posts/", &route, &p, &allow), ROUTER_FOUND);
	ck_assert_ptr_eq(route, &tag_list);
	ck_assert_int_eq(match(HTTP_M_GET, "/api/posts//", &route, &p, &allow), ROUTER_NOT_FOUND);
	ck_assert_int_eq(match(HTTP_M_GET, "/api//posts", &route, &p, &allow), ROUTER_NOT_FOUND);
}
END_TEST

START_TEST(test_router_returns_405_with_allow_mask)
{
	void *route = NULL;
	struct route_params p;
	int allow = 0;
	ck_assert_int_eq(match(HTTP_M_PUT, "/api/posts/1", &route, &p, &allow), ROUTER_METHOD_NOT_ALLOWED);
	ck_assert_int_eq(allow, HTTP_M_GET | HTTP_M_HEAD | HTTP_M_PATCH | HTTP_M_DELETE);
	char s[96];
	router_allow_string(allow, s, sizeof(s));
	ck_assert_str_eq(s, "GET, HEAD, PATCH, DELETE");
}
END_TEST

START_TEST(test_router_returns_404_for_unknown_paths)
{
	void *route = NULL;
	struct route_params p;
	int allow = 0;
	ck_assert_int_eq(match(HTTP_M_GET, "/api/nope", &route, &p, &allow), ROUTER_NOT_FOUND);
	ck_assert_int_eq(match(HTTP_M_GET, "/api/posts/1/2", &route, &p, &allow), ROUTER_NOT_FOUND);
	ck_assert_int_eq(match(HTTP_M_GET, "", &route, &p, &allow), ROUTER_NOT_FOUND);
	ck_assert_int_eq(match(HTTP_M_GET, "api/posts", &route, &p, &allow), ROUTER_NOT_FOUND);
	ck_assert_int_eq(allow, 0);
}
END_TEST

START_TEST(test_router_get_routes_answer_head)
{
	void *route = NULL;
	struct route_params p;
	int allow;
	ck_assert_int_eq(match(HTTP_M_HEAD, "/api/posts/42", &route, &p, &allow), ROUTER_FOUND);
	ck_assert_ptr_eq(route, &tag_get);
}
END_TEST

START_TEST(test_router_is_case_sensitive)
{
	void *route = NULL;
	struct route_params p;
	int allow;
	ck_assert_int_eq(match(HTTP_M_GET, "/API/posts", &route, &p, &allow), ROUTER_NOT_FOUND);
}
END_TEST

START_TEST(test_router_rejects_bad_patterns)
{
	int tag;
	ck_assert_int_eq(router_add(r, HTTP_M_GET, "nope", &tag), -1);
	ck_assert_int_eq(router_add(r, HTTP_M_GET, "/a/:/b", &tag), -1);
	ck_assert_int_eq(router_add(r, HTTP_M_GET, "/a//b", &tag), -1);
	ck_assert_int_eq(router_add(r, 0, "/a", &tag), -1);
	ck_assert_int_eq(router_add(r, HTTP_M_GET, "/1/2/3/4/5/6/7/8/9/10/11/12/13/14/15/16/17", &tag), -1);
}
END_TEST

START_TEST(test_router_first_registered_route_wins)
{
	int a, b;
	struct router *rr = router_new();
	router_add(rr, HTTP_M_GET, "/u/me", &a);
	router_add(rr, HTTP_M_GET, "/u/:id", &b);
	void *route;
	struct route_params p;
	int allow;
	ck_assert_int_eq(router_match(rr, HTTP_M_GET, "/u/me", 5, &route, &p, &allow), ROUTER_FOUND);
	ck_assert_ptr_eq(route, &a);
	ck_assert_int_eq(router_match(rr, HTTP_M_GET, "/u/42", 5, &route, &p, &allow), ROUTER_FOUND);
	ck_assert_ptr_eq(route, &b);
	router_free(rr);
}
END_TEST

static Suite *router_suite(void)
{
	Suite *s = suite_create("router");
	TCase *tc = tcase_create("match");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_router_matches_static_route);
	tcase_add_test(tc, test_router_extracts_named_params);
	tcase_add_test(tc, test_router_tolerates_one_trailing_slash);
	tcase_add_test(tc, test_router_returns_405_with_allow_mask);
	tcase_add_test(tc, test_router_returns_404_for_unknown_paths);
	tcase_add_test(tc, test_router_get_routes_answer_head);
	tcase_add_test(tc, test_router_is_case_sensitive);
	tcase_add_test(tc, test_router_rejects_bad_patterns);
	tcase_add_test(tc, test_router_first_registered_route_wins);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(router_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
