/* sio.c - Socket.IO v4 over Engine.IO v4, text packets only (see sio.h).
 *
 * Engine.IO frames every packet as one WebSocket text message whose first
 * character is the Engine.IO type; a "4" (message) carries a Socket.IO
 * packet: its type digit, for binary types an attachment count and '-',
 * an optional namespace "/name," , an optional acknowledgement id, and
 * the JSON payload. Decoding only splits those parts (pointers into the
 * message, nothing copied); the JSON payload is parsed on request
 * (sio_event_decode) so that a packet the caller refuses costs no parse.
 * Encoders produce exactly the bytes the reference socket.io server sends
 * for the packets the chat needs.
 */
#include "autoconfig.h"

#include "sio.h"

#include "json.h"

#include <stdio.h>
#include <string.h>

/* An append-only writer over the caller's buffer. */
struct out {
	char *buf;
	size_t cap, n;
	int over;
};

static void put(struct out *o, const char *s, size_t len)
{
	if (o->over || len > o->cap - o->n) {
		o->over = 1;
		return;
	}
	memcpy(o->buf + o->n, s, len);
	o->n += len;
}

static void put_str(struct out *o, const char *s)
{
	put(o, s, strlen(s));
}

static int finish(struct out *o)
{
	if (o->over || o->n > INT32_MAX)
		return -1;
	if (o->n < o->cap)
		o->buf[o->n] = '\0';
	return (int)o->n;
}

/* s as a JSON string literal. */
static void put_json_string(struct out *o, const char *s)
{
	static const char hex[] = "0123456789abcdef";
	put(o, "\"", 1);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\') {
			char e[2] = {'\\', (char)*p};
			put(o, e, 2);
		} else if (*p < 0x20) {
			char e[6] = {'\\', 'u', '0', '0', hex[*p >> 4], hex[*p & 15]};
			put(o, e, 6);
		} else {
			put(o, (const char *)p, 1);
		}
	}
	put(o, "\"", 1);
}

static int sid_valid(const char *sid)
{
	size_t n = strlen(sid);
	if (n < 1 || n > 64)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = sid[i];
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
		      c == '-'))
			return 0;
	}
	return 1;
}

/* Digits at m[*i..n) as an unsigned number below 2^63. 1 if there were
 * digits, 0 if none, -1 on overflow. */
static int parse_uint(const char *m, size_t n, size_t *i, uint64_t *v)
{
	size_t start = *i;
	uint64_t x = 0;
	while (*i < n && m[*i] >= '0' && m[*i] <= '9') {
		uint64_t d = (uint64_t)(m[*i] - '0');
		if (x > (INT64_MAX - d) / 10)
			return -1;
		x = x * 10 + d;
		(*i)++;
	}
	*v = x;
	return *i > start;
}

static int decode_socketio(const char *m, size_t n, struct sio_packet *o)
{
	static const enum sio_type types[] = {SIO_CONNECT,       SIO_DISCONNECT,   SIO_EVENT,     SIO_ACK,
	                                      SIO_CONNECT_ERROR, SIO_BINARY_EVENT, SIO_BINARY_ACK};
	if (n < 2 || m[1] < '0' || m[1] > '6')
		return -1;
	o->type = types[m[1] - '0'];
	size_t i = 2;
	uint64_t v;
	if (o->type == SIO_BINARY_EVENT || o->type == SIO_BINARY_ACK) {
		if (parse_uint(m, n, &i, &v) != 1 || v > UINT32_MAX || i >= n || m[i] != '-')
			return -1;
		o->attachments = (uint32_t)v;
		i++;
	}
	if (i < n && m[i] == '/') {
		const char *comma = memchr(m + i, ',', n - i);
		size_t end = comma ? (size_t)(comma - m) : n;
		o->nsp = m + i;
		o->nsp_len = end - i;
		i = comma ? end + 1 : n;
	}
	if (o->type == SIO_EVENT || o->type == SIO_ACK || o->type == SIO_BINARY_EVENT || o->type == SIO_BINARY_ACK) {
		int r = parse_uint(m, n, &i, &v);
		if (r < 0 || (r == 0 && o->type == SIO_ACK))
			return -1;
		o->has_ack = r;
		o->ack = v;
	}
	o->data = m + i;
	o->data_len = n - i;
	return 0;
}

int sio_decode(const char *m, size_t n, struct sio_packet *o)
{
	memset(o, 0, sizeof(*o));
	o->nsp = "/";
	o->nsp_len = 1;
	if (!n)
		return -1;
	o->data = m + 1;
	o->data_len = n - 1;
	switch (m[0]) {
	case '0': o->type = SIO_EIO_OPEN; return 0;
	case '1': o->type = SIO_EIO_CLOSE; return n == 1 ? 0 : -1;
	case '2': o->type = SIO_EIO_PING; return 0;
	case '3': o->type = SIO_EIO_PONG; return 0;
	case '4': return decode_socketio(m, n, o);
	case '5': o->type = SIO_EIO_UPGRADE; return n == 1 ? 0 : -1;
	case '6': o->type = SIO_EIO_NOOP; return n == 1 ? 0 : -1;
	default: return -1;
	}
}

int sio_nsp_default(const struct sio_packet *pk)
{
	return pk->nsp_len == 1 && pk->nsp[0] == '/';
}

enum sio_event_status sio_event_decode(const char *data, size_t len, int max_depth, struct json_value **doc,
                                       const struct json_value **name, const struct json_value **arg)
{
	*doc = NULL;
	*name = *arg = NULL;
	struct json_value *a = NULL;
	if (json_parse(data, len, max_depth, 0, &a) != JSON_OK || a->type != JSON_ARRAY) {
		json_free(a);
		return SIO_EVENT_BAD_JSON;
	}
	if (!a->len || a->items[0]->type != JSON_STRING) {
		json_free(a);
		return SIO_EVENT_NO_NAME;
	}
	*doc = a;
	*name = a->items[0];
	*arg = a->len > 1 ? a->items[1] : NULL;
	return SIO_EVENT_OK;
}

int sio_encode_open(char *buf, size_t cap, const char *sid, uint32_t ping_interval_ms, uint32_t ping_timeout_ms,
                    uint32_t max_payload)
{
	if (!sid_valid(sid))
		return -1;
	struct out o = {.buf = buf, .cap = cap};
	char nums[96];
	snprintf(nums, sizeof(nums), ",\"upgrades\":[],\"pingInterval\":%u,\"pingTimeout\":%u,\"maxPayload\":%u}",
	         ping_interval_ms, ping_timeout_ms, max_payload);
	put_str(&o, "0{\"sid\":\"");
	put_str(&o, sid);
	put_str(&o, "\"");
	put_str(&o, nums);
	return finish(&o);
}

int sio_encode_connect(char *buf, size_t cap, const char *sid)
{
	if (!sid_valid(sid))
		return -1;
	struct out o = {.buf = buf, .cap = cap};
	put_str(&o, "40{\"sid\":\"");
	put_str(&o, sid);
	put_str(&o, "\"}");
	return finish(&o);
}

int sio_encode_connect_error(char *buf, size_t cap, const char *nsp, size_t nsp_len, const char *message)
{
	if (nsp_len && memchr(nsp, ',', nsp_len))
		return -1;
	struct out o = {.buf = buf, .cap = cap};
	put_str(&o, "44");
	if (nsp_len && !(nsp_len == 1 && nsp[0] == '/')) {
		size_t k = nsp_len;
		if (k > SIO_NSP_ECHO_MAX) {
			k = SIO_NSP_ECHO_MAX;
			while (k > 0 && ((unsigned char)nsp[k] & 0xC0u) == 0x80u)
				k--; /* never end inside a UTF-8 sequence */
		}
		put(&o, nsp, k);
		put(&o, ",", 1);
	}
	put_str(&o, "{\"message\":");
	put_json_string(&o, message);
	put_str(&o, "}");
	return finish(&o);
}

int sio_encode_event(char *buf, size_t cap, const char *name_json, size_t name_len, const char *data_json,
                     size_t data_len)
{
	if (name_len < 2 || name_json[0] != '"' || name_json[name_len - 1] != '"' || !data_len)
		return -1;
	struct out o = {.buf = buf, .cap = cap};
	put(&o, "42[", 3);
	put(&o, name_json, name_len);
	put(&o, ",", 1);
	put(&o, data_json, data_len);
	put(&o, "]", 1);
	if (o.over || o.n > INT32_MAX)
		return -1;
	return (int)o.n;
}

int sio_encode_ack(char *buf, size_t cap, uint64_t id, const char *data_json, size_t data_len)
{
	if (id > INT64_MAX || !data_len)
		return -1;
	struct out o = {.buf = buf, .cap = cap};
	char num[24];
	int k = snprintf(num, sizeof(num), "43%llu[", (unsigned long long)id);
	put(&o, num, (size_t)k);
	put(&o, data_json, data_len);
	put(&o, "]", 1);
	return finish(&o);
}

void sio_sid_format(uint64_t v, char sid[17])
{
	static const char hex[] = "0123456789abcdef";
	for (int i = 0; i < 16; i++)
		sid[i] = hex[(v >> (60 - 4 * i)) & 15];
	sid[16] = '\0';
}
