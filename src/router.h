/* router.h - Express-style route table: patterns such as
 * "/api/posts/:id" with named parameters, method dispatch, and the
 * information needed for 404 vs 405 (with Allow).
 *
 * The router knows nothing about HTTP connections: it maps (method mask,
 * path) to an opaque route value and fills parameters. Matching is by
 * segment, case-sensitive; a single trailing slash is tolerated
 * ("/api/posts/" matches "/api/posts"), as in Express's default mode.
 */
#ifndef RESIL_ROUTER_H
#define RESIL_ROUTER_H

#include <stddef.h>

#define ROUTER_MAX_PARAMS 8
#define ROUTER_MAX_SEGMENTS 16

struct router;

struct route_params {
	int n;
	const char *name[ROUTER_MAX_PARAMS];
	/* Raw (not percent-decoded) pointers into the matched path. */
	const char *value[ROUTER_MAX_PARAMS];
	size_t value_len[ROUTER_MAX_PARAMS];
};

enum router_result { ROUTER_FOUND = 0, ROUTER_NOT_FOUND, ROUTER_METHOD_NOT_ALLOWED };

struct router *router_new(void);
void router_free(struct router *r);

/* Register pattern for a method bit mask (enum http_method values).
 * Returns 0, or -1 for an invalid pattern (must start with '/', at most
 * ROUTER_MAX_SEGMENTS segments and ROUTER_MAX_PARAMS parameters, no empty
 * parameter names) or on allocation failure. GET routes also match HEAD. */
int router_add(struct router *r, int methods, const char *pattern, void *route);

/* Match path (not including the query) for a single method bit.
 * ROUTER_FOUND: *route and params are set. ROUTER_METHOD_NOT_ALLOWED:
 * *allow has the mask of methods that would match the path. */
enum router_result router_match(const struct router *r, int method, const char *path, size_t path_len, void **route,
                                struct route_params *params, int *allow);

/* Format an Allow header value ("GET, HEAD, POST") for a method mask. */
size_t router_allow_string(int allow, char *out, size_t outlen);

#endif
