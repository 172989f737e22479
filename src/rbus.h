/* rbus.h - the cross-host bus: Redis pub/sub and counters, asynchronous on a
 * worker's event loop (hiredis and its libevent adapter).
 *
 * Each worker process opens its own two connections after fork: one
 * subscribed to the bus channel, one for commands. Every record published
 * by any worker of any host comes back, in Redis's one order for the
 * channel, to every subscribed worker, the publisher included; a worker
 * that publishes through the bus delivers locally only what comes back.
 *
 * Ordered records (stored chat messages): rbus_reserve() takes a range of
 * sequence numbers and a matching range of strictly increasing Redis-clock
 * timestamps (microseconds) before the store, so the stored documents sort
 * (createdAt, _id) in sequence order; rbus_publish_ordered() hands the
 * records to a Lua script that releases them on the channel in sequence
 * order, holding early ones in Redis until the gap before them is filled
 * (or RBUS_GAP_MS passes: a host that died between reserve and publish
 * cannot stall the others for longer). So every host delivers stored
 * messages in the order they sort in history.
 *
 * Nothing blocks: commands in flight are bounded (RBUS_MAX_INFLIGHT,
 * RBUS_MAX_INFLIGHT_BYTES); a command that gets no answer within
 * RBUS_STALL_MS drops both connections. While the link is down the state is
 * RBUS_DEGRADED, every call fails fast (callers fall back to their local
 * path) and the bus reconnects with capped, jittered exponential backoff.
 */
#ifndef RESIL_RBUS_H
#define RESIL_RBUS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

struct event_base;

#define RBUS_MAX_INFLIGHT 4096             /* commands waiting for a reply */
#define RBUS_MAX_INFLIGHT_BYTES (8u << 20) /* their arguments' bytes */
#define RBUS_STALL_MS 2000                 /* no reply for this long: reconnect */
#define RBUS_BACKOFF_MIN_MS 100            /* reconnect backoff: doubles ... */
#define RBUS_BACKOFF_MAX_MS 2000           /* ... up to this, then jittered to 50-100% */
#define RBUS_GAP_MS 2000                   /* an ordered record missing this long is skipped */
#define RBUS_TICK_MS 500                   /* watchdog, keep-alive and ordered-release tick */

enum rbus_state {
	RBUS_OFF = 0,      /* not configured: single host */
	RBUS_UP = 1,       /* both connections up and subscribed */
	RBUS_DEGRADED = 2, /* configured, not connected: local only, reconnecting */
};

struct rbus_addr {
	char host[256]; /* name or address, without IPv6 brackets */
	int port;
	int db;
};

/* Parse redis://host[:port][/db] (port 6379, db 0 when left out). rediss://
 * and user:password@ forms are refused (not supported yet); the message
 * never repeats a password. a may be NULL. 0, or -1 with a message. */
int rbus_parse_uri(const char *uri, struct rbus_addr *a, char *err, size_t errlen);

struct rbus_stats {
	uint64_t published; /* records handed to Redis */
	uint64_t received;  /* records delivered from the channel */
	uint64_t dropped;   /* refused: link down or in-flight bound reached */
	uint64_t reconnects;
};

typedef void (*rbus_deliver_fn)(const unsigned char *msg, size_t len, void *ud);

/* Open the process's bus (one per process) on base for uri; deliver(ud)
 * runs on the loop for each record from the channel. Connecting starts
 * at once, in the background. -1 on a bad uri or allocation failure. */
int rbus_open(struct event_base *base, const char *uri, rbus_deliver_fn deliver, void *ud);
/* Drop the connections (pending callbacks run with failure) and free. */
void rbus_close(void);
/* RBUS_OFF when no bus is open. For /health and metrics. */
enum rbus_state rbus_state(void);
const char *rbus_state_name(enum rbus_state s); /* "off", "up", "degraded" */
const struct rbus_stats *rbus_stats(void);

/* Publish one record on the channel. 0 when handed to Redis; -1 when not
 * up or over the in-flight bound (the caller delivers locally instead). */
int rbus_publish(const void *msg, size_t len);

/* Reserve count (1..1024) ordered slots. done(ud, ok, first_seq, first_us)
 * runs later on the loop, exactly once, also when the link fails (ok 0);
 * slot i has sequence first_seq + i and timestamp first_us + i. -1 (done
 * never runs) when not up. */
typedef void (*rbus_reserve_fn)(void *ud, int ok, uint64_t first_seq, uint64_t first_us);
int rbus_reserve(unsigned count, rbus_reserve_fn done, void *ud);
/* The _id (big-endian seconds, then the big-endian microsecond timestamp)
 * and createdAt (ms) of the document stored in the slot stamped us, so that
 * (createdAt, _id) sorts in sequence order. */
void rbus_stamp(uint64_t us, unsigned char id[12], int64_t *created_ms);
/* Release the reserved slots first_seq.. with these records, in order; an
 * empty iovec gives its slot up (a message that was not stored). -1 when
 * not up or over the bound (the slots are then skipped after RBUS_GAP_MS). */
int rbus_publish_ordered(uint64_t first_seq, const struct iovec *recs, unsigned count);

/* Count one hit on key in a fixed window of window_ms kept in Redis:
 * done(ud, ok, hits so far in this window, ms until it ends). The returned
 * handle may be passed to rbus_cancel() until done has run; NULL (done
 * never runs) when not up. */
struct rbus_req;
typedef void (*rbus_count_fn)(void *ud, int ok, int64_t hits, int64_t reset_ms);
struct rbus_req *rbus_count(const char *key, size_t keylen, uint64_t window_ms, rbus_count_fn done, void *ud);
/* done will not run for req (its reply is still awaited, then dropped). */
void rbus_cancel(struct rbus_req *req);

#endif
