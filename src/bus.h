/* bus.h - broadcast between worker processes, with the supervisor as the
 * hub (the design of Kore's msg.c and nginx's channels, kept to one job).
 *
 * Each worker process gets one end of an AF_UNIX SOCK_SEQPACKET socketpair
 * at spawn; the supervisor keeps the other. A worker publishes a message
 * (opaque bytes, one record each) to the hub, and the hub forwards every
 * record, in arrival order, to every attached worker - the publisher
 * included. That makes the hub a sequencer: all workers, and so all
 * sockets, see one total order of broadcasts, and a publisher's own local
 * delivery follows the same path as everyone else's.
 *
 * Nothing blocks and every queue is bounded: a worker's outgoing queue, the
 * hub's queue per worker, and the hub's total. When a queue is full the
 * record is dropped for that destination and counted (the alternative,
 * waiting, would let one stuck worker stall the supervisor and every other
 * worker). A restarted worker gets a fresh pair; the others are untouched.
 * When a worker exits, records it had already sent are still forwarded.
 *
 * Why not a shared-memory ring with an eventfd per worker: it saves one
 * copy and one hop, but needs a multi-producer protocol in shared memory,
 * per-reader cursors that a crashed reader must not wedge, and a wake-up
 * per reader anyway; at chat rates the hop costs microseconds (measured in
 * bench/ws_bench) while a socketpair gets crash cleanup from the kernel.
 */
#ifndef RESIL_BUS_H
#define RESIL_BUS_H

#include <stddef.h>
#include <stdint.h>

struct event_base;

#define BUS_MAX_MSG (64 * 1024)  /* largest record */
#define BUS_PEER_QUEUE_MSGS 4096 /* hub -> one worker, queued */
#define BUS_PEER_QUEUE_BYTES (4u << 20)
#define BUS_HUB_BYTES (32u << 20) /* all records held by the hub */
#define BUS_OUT_QUEUE_MSGS 4096   /* worker -> hub, queued */
#define BUS_OUT_QUEUE_BYTES (4u << 20)

struct bus_stats {
	uint64_t received;  /* hub: records read from workers; worker: records delivered */
	uint64_t forwarded; /* hub: record copies written to workers; worker: records published */
	uint64_t dropped;   /* records dropped because a bounded queue was full */
};

/* ---- supervisor side ---- */
struct bus_hub;

/* A hub for peers 0..max_peers-1 on base. NULL on allocation failure. */
struct bus_hub *bus_hub_new(struct event_base *base, int max_peers);
/* Close every pair and free. NULL is a no-op. */
void bus_hub_free(struct bus_hub *h);
/* Create the pair for peer idx (any previous one is detached first). The
 * worker's end goes to *child_fd: the child keeps it across fork, the
 * parent closes it right after fork. 0, or -1 (errno set; nothing kept). */
int bus_hub_attach(struct bus_hub *h, int idx, int *child_fd);
/* Forward what the peer already sent, then close its pair and drop its
 * queue. No-op for an unattached idx. */
void bus_hub_detach(struct bus_hub *h, int idx);
const struct bus_stats *bus_hub_stats(const struct bus_hub *h);

/* ---- worker side ---- */
struct bus;
typedef void (*bus_deliver_fn)(const unsigned char *msg, size_t len, void *ud);

/* Serve the worker's end fd (taken over; closed by bus_close). fd < 0: no
 * supervisor - records loop back to this process only. deliver(ud) runs on
 * the loop for every record, one at a time, never inside bus_publish.
 * NULL on failure (fd is closed). */
struct bus *bus_open(struct event_base *base, int fd, bus_deliver_fn deliver, void *ud);
/* Send one record (1..BUS_MAX_MSG bytes, copied). 0 when sent or queued;
 * -1 when dropped (queue full, too large, hub gone). */
int bus_publish(struct bus *b, const void *msg, size_t len);
void bus_close(struct bus *b);
const struct bus_stats *bus_stats(const struct bus *b);

#endif
