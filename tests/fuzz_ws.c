/* fuzz_ws.c - libFuzzer target for the WebSocket input path: bytes from a
 * client through src/ws.c (frame tracker, wslay, close handling, queues)
 * into the chat's event handling (workers/chat*.c, the Socket.IO codec in
 * workers/sio.c), and the chat's message parsers on their own.
 *
 *   make fuzz && ./tests/fuzz_ws -max_total_time=20
 *
 * The first input byte picks the mode: even - the rest is one chat message
 * for chat_parse(); odd - the rest is the byte stream a client sends after
 * the handshake, written into one end of a socketpair whose other end a
 * real ws_server serves with the chat's handlers. The socket is already a
 * member of a room, so typing events travel the (loopback) bus and come
 * back as broadcast frames; store calls fail fast (there is no store) and
 * answer with error events. Bit 1 of the first byte makes the client a
 * Socket.IO one: Engine.IO packets on the stream, chat_parse_sio() for the
 * parser mode; with bit 2 as well it came without a token (CONNECT carries
 * it). Built with clang -fsanitize=fuzzer,address.
 */
#include "../workers/authmw.h"
#include "../workers/chat.h"
#include "../workers/chat_rooms.h"
#include "config.h"
#include "handlers.h"
#include "log.h"
#include "ws.h"

#include <event2/event.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static struct event_base *fz_base;
static const bson_oid_t fz_room = {{0x65, 0x00, 0x00, 0x01, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x00, 0x00, 0x01}};

static struct resil_config fz_cfg;

static const struct ws_limits fz_lim = {.max_backlog = 64 * 1024, .close_timeout_ms = 100, .text_ping = "2"};

static void fz_init(void)
{
	log_set_level(LOG_LVL_ERROR);
	config_defaults(&fz_cfg);
	memcpy(fz_cfg.jwt_secret, "fuzz-secret-fuzz-secret-fuzz-sec", 32);
	fz_cfg.jwt_secret_len = 32;
	fz_cfg.ws_message_rate = 50; /* the default */
	authmw_init(NULL, &fz_cfg);  /* tokens in Socket.IO CONNECT packets are verified */
	fz_base = event_base_new();
	/* A loopback bus: typing events come back as broadcast frames. */
	if (!fz_base || chat_init(fz_base, &fz_cfg, &fz_lim, -1) < 0)
		abort();
}

static void fz_drain_client(int fd)
{
	char buf[65536];
	while (read(fd, buf, sizeof(buf)) > 0)
		;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!fz_base)
		fz_init();
	if (size < 1)
		return 0;
	const char *p = (const char *)data + 1;
	size_t n = size - 1;
	int sio = (data[0] & 2) != 0; /* a Socket.IO client (Engine.IO packets) */
	if (!(data[0] & 1)) {
		struct chat_cmd cmd;
		if (sio)
			chat_parse_sio(p, n, &cmd);
		else
			chat_parse(p, n, &cmd);
		chat_cmd_free(&cmd);
		return 0;
	}
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) < 0)
		return 0;
	struct ws_conn *c = ws_conn_new(chat_server(), sv[0], sizeof(struct chat_sock));
	if (!c) {
		close(sv[1]);
		return 0;
	}
	struct chat_peer peer = {.username = "fuzzer", .sio = sio, .authed = !(sio && (data[0] & 4))};
	peer.user.bytes[11] = 1;
	chat_sock_init(c, &peer);
	struct chat_sock *cs = ws_conn_app(c);
	if (chat_rooms_join(cs, &fz_room, 0) == 0 && (chat_rooms_join(cs, &fz_room, 0) < 0 || cs->nrooms != 1))
		abort(); /* joining twice must not add a second entry */
	ws_conn_start(c, NULL, 0);
	size_t off = 0;
	for (int turn = 0; turn < 2000 && ws_server_count(chat_server()) > 0; turn++) {
		if (off < n) {
			ssize_t w = write(sv[1], p + off, n - off);
			if (w > 0)
				off += (size_t)w;
			if (off == n)
				shutdown(sv[1], SHUT_WR); /* end of stream: the client is done */
		}
		fz_drain_client(sv[1]);
		event_base_loop(fz_base, EVLOOP_NONBLOCK);
	}
	if (off < n || n == 0)
		shutdown(sv[1], SHUT_WR);
	close(sv[1]);
	/* Whatever is left (a close handshake in progress): end it now. */
	for (int turn = 0; turn < 100 && ws_server_count(chat_server()) > 0; turn++)
		event_base_loop(fz_base, EVLOOP_NONBLOCK);
	if (ws_server_count(chat_server()) > 0 || chat_rooms_count()) {
		chat_stop(); /* closes every socket */
		if (chat_rooms_count())
			abort(); /* every socket left its rooms when it closed */
		if (chat_init(fz_base, &fz_cfg, &fz_lim, -1) < 0)
			abort();
	}
	/* Deliver what the loopback bus still holds (no member is left). */
	event_base_loop(fz_base, EVLOOP_NONBLOCK);
	return 0;
}
