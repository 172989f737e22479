/* router.c - route table with segment matching (see router.h).
 *
 * Routes are kept in registration order and matched linearly: an API has
 * tens of routes, and a linear scan over pre-split segments costs less
 * than building a tree. The first route whose pattern and method match
 * wins, as in Express.
 */
#include "router.h"

#include "http.h"

#include <stdlib.h>
#include <string.h>

struct segment {
	char *text; /* literal, or parameter name without ':' */
	size_t len;
	int is_param;
};

struct route_entry {
	int methods;
	void *route;
	int nseg;
	struct segment seg[ROUTER_MAX_SEGMENTS];
	char *storage;
};

struct router {
	struct route_entry *routes;
	size_t n, cap;
};

struct router *router_new(void)
{
	return calloc(1, sizeof(struct router));
}

void router_free(struct router *r)
{
	if (!r)
		return;
	for (size_t i = 0; i < r->n; i++)
		free(r->routes[i].storage);
	free(r->routes);
	free(r);
}

int router_add(struct router *r, int methods, const char *pattern, void *route)
{
	if (!pattern || pattern[0] != '/' || methods == 0)
		return -1;
	struct route_entry e;
	memset(&e, 0, sizeof(e));
	e.methods = methods;
	if (methods & HTTP_M_GET)
		e.methods |= HTTP_M_HEAD;
	e.route = route;
	e.storage = strdup(pattern);
	if (!e.storage)
		return -1;
	int nparams = 0;
	char *p = e.storage + 1;
	while (*p) {
		char *slash = strchr(p, '/');
		size_t len = slash ? (size_t)(slash - p) : strlen(p);
		if (len == 0) {
			if (!slash)
				break; /* trailing slash */
			goto bad;      /* empty segment */
		}
		if (e.nseg >= ROUTER_MAX_SEGMENTS)
			goto bad;
		struct segment *s = &e.seg[e.nseg++];
		if (p[0] == ':') {
			if (len == 1 || ++nparams > ROUTER_MAX_PARAMS)
				goto bad;
			s->is_param = 1;
			s->text = p + 1;
			s->len = len - 1;
		} else {
			s->text = p;
			s->len = len;
		}
		if (!slash)
			break;
		*slash = '\0';
		p = slash + 1;
	}
	if (r->n == r->cap) {
		size_t cap = r->cap ? r->cap * 2 : 16;
		struct route_entry *nr = realloc(r->routes, cap * sizeof(*nr));
		if (!nr)
			goto bad;
		r->routes = nr;
		r->cap = cap;
	}
	r->routes[r->n++] = e;
	return 0;
bad:
	free(e.storage);
	return -1;
}

/* Split path into segments; returns count or -1 if too many/empty. */
static int split_path(const char *path, size_t len, const char **seg, size_t *seglen)
{
	if (len == 0 || path[0] != '/')
		return -1;
	size_t i = 1;
	int n = 0;
	while (i < len) {
		size_t start = i;
		while (i < len && path[i] != '/')
			i++;
		size_t sl = i - start;
		if (sl == 0)
			return -1; /* "//" */
		if (n >= ROUTER_MAX_SEGMENTS)
			return -1;
		seg[n] = path + start;
		seglen[n] = sl;
		n++;
		if (i < len)
			i++; /* skip '/'; a trailing slash ends the loop */
	}
	return n;
}

static int entry_matches(const struct route_entry *e, int nseg, const char **seg, const size_t *seglen,
                         struct route_params *params)
{
	if (e->nseg != nseg)
		return 0;
	int np = 0;
	for (int i = 0; i < nseg; i++) {
		const struct segment *s = &e->seg[i];
		if (s->is_param) {
			if (params) {
				params->name[np] = s->text;
				params->value[np] = seg[i];
				params->value_len[np] = seglen[i];
			}
			np++;
		} else if (s->len != seglen[i] || memcmp(s->text, seg[i], seglen[i]) != 0) {
			return 0;
		}
	}
	if (params)
		params->n = np;
	return 1;
}

enum router_result router_match(const struct router *r, int method, const char *path, size_t path_len, void **route,
                                struct route_params *params, int *allow)
{
	const char *seg[ROUTER_MAX_SEGMENTS];
	size_t seglen[ROUTER_MAX_SEGMENTS];
	int nseg = split_path(path, path_len, seg, seglen);
	int mask = 0;
	if (allow)
		*allow = 0;
	if (nseg < 0)
		return ROUTER_NOT_FOUND;
	for (size_t i = 0; i < r->n; i++) {
		const struct route_entry *e = &r->routes[i];
		if (!entry_matches(e, nseg, seg, seglen, NULL))
			continue;
		if (e->methods & method) {
			entry_matches(e, nseg, seg, seglen, params);
			*route = e->route;
			return ROUTER_FOUND;
		}
		mask |= e->methods;
	}
	if (allow)
		*allow = mask;
	return mask ? ROUTER_METHOD_NOT_ALLOWED : ROUTER_NOT_FOUND;
}

size_t router_allow_string(int allow, char *out, size_t outlen)
{
	static const struct {
		int bit;
		const char *name;
	} names[] = {{HTTP_M_GET, "GET"},        {HTTP_M_HEAD, "HEAD"},   {HTTP_M_POST, "POST"},
	             {HTTP_M_PUT, "PUT"},        {HTTP_M_PATCH, "PATCH"}, {HTTP_M_DELETE, "DELETE"},
	             {HTTP_M_OPTIONS, "OPTIONS"}};
	size_t w = 0;
	if (outlen == 0)
		return 0;
	out[0] = '\0';
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (!(allow & names[i].bit))
			continue;
		size_t nl = strlen(names[i].name);
		size_t sep = w ? 2 : 0;
		if (w + sep + nl + 1 > outlen)
			break;
		if (sep) {
			out[w++] = ',';
			out[w++] = ' ';
		}
		memcpy(out + w, names[i].name, nl);
		w += nl;
		out[w] = '\0';
	}
	return w;
}
