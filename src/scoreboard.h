/* scoreboard.h - shared-memory table of worker processes (like Apache's
 * scoreboard). Created by the supervisor before the first fork; each worker
 * process owns exactly one entry and is its only writer; the supervisor and
 * every worker's /health read all entries. Fields are relaxed atomics: no
 * locks, and a reader may see a slightly stale but never torn value.
 */
#ifndef RESIL_SCOREBOARD_H
#define RESIL_SCOREBOARD_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define SB_MAX_WORKERS 256
#define SB_MAX_ENTRIES (2 * SB_MAX_WORKERS) /* old + new generation during reloads */
#define SB_MAX_CIRCUITS 4
#define SB_ROUTE_LEN 80

enum sb_state { SB_FREE = 0, SB_STARTING, SB_READY, SB_DRAINING, SB_STOPPED, SB_ERRORED };
enum sb_db_state { SB_DB_UNKNOWN = 0, SB_DB_CONNECTED, SB_DB_DISCONNECTED };

struct sb_circuit {
	char name[16];
	atomic_int state; /* breaker state: 0 closed, 1 open, 2 half-open */
};

struct sb_entry {
	atomic_int state; /* enum sb_state */
	atomic_int pid;
	atomic_int worker_id; /* 0-based worker id (slot): log lines' "worker", resilctl's id */
	atomic_uint generation;
	atomic_uint_least64_t started_ms;   /* CLOCK_REALTIME ms */
	atomic_uint_least64_t heartbeat_ms; /* CLOCK_MONOTONIC ms */
	atomic_uint_least64_t requests;
	atomic_int_least64_t inflight;
	atomic_int_least64_t connections;
	atomic_int_least64_t websockets;
	atomic_int db_state; /* enum sb_db_state */
	atomic_int ncircuits;
	struct sb_circuit circuits[SB_MAX_CIRCUITS];
	/* The route being served ("GET /api/posts/:id"), for crash reports.
	 * Written by the worker with a sequence counter (odd while writing). */
	atomic_uint route_seq;
	char route[SB_ROUTE_LEN];
	char pad[64];
} __attribute__((aligned(64)));

struct sb_header {
	uint32_t magic;
	atomic_int workers_target;
	atomic_int supervisor_pid;
	atomic_uint generation;
	atomic_uint_least64_t started_ms;
	atomic_int post_generation;  /* bumped on every post write (cache invalidation) */
	atomic_int users_generation; /* bumped on every user write (auth cache) */
	atomic_int entries_hwm;      /* 1 + highest entry index ever claimed */
};

struct scoreboard {
	struct sb_header hdr;
	struct sb_entry entries[SB_MAX_ENTRIES];
};

/* Map a new zeroed scoreboard (MAP_SHARED|MAP_ANONYMOUS): call before fork.
 * NULL on failure. */
struct scoreboard *sb_create(void);
/* The same, memfd-backed: *fd_out receives the descriptor (close-on-exec)
 * that an exec'd process passes to sb_attach(). */
struct scoreboard *sb_create_fd(int *fd_out);
/* Map the scoreboard behind fd (left open). NULL with errno EPROTO when
 * it was built by a binary with another layout (its size or magic differ). */
struct scoreboard *sb_attach(int fd);
void sb_destroy(struct scoreboard *sb);

/* Supervisor: claim a free entry for a new process; -1 if none. */
int sb_claim(struct scoreboard *sb, int worker_id, unsigned generation);
void sb_release(struct scoreboard *sb, int idx);

/* Worker side (own entry only). */
void sb_set_state(struct sb_entry *e, int state);
void sb_heartbeat(struct sb_entry *e);
void sb_set_route(struct sb_entry *e, const char *route);
void sb_get_route(const struct sb_entry *e, char *out, size_t outlen);
void sb_set_circuit(struct sb_entry *e, const char *name, int state);

/* Readers: count READY entries (not draining). */
int sb_count_ready(const struct scoreboard *sb);

/* One circuit merged over workers: how many READY workers see it in each
 * breaker state, and the worst of them (open over half-open over closed). */
struct sb_circuit_sum {
	char name[16];
	int worst;    /* 0 closed, 1 open, 2 half-open */
	int count[3]; /* indexed by state */
};
#define SB_MAX_CIRCUIT_NAMES 8
/* Merge the breakers of every READY entry, by name, into out[0..max);
 * returns the number of names (names beyond max are left out). */
int sb_circuits_merge(const struct scoreboard *sb, struct sb_circuit_sum *out, int max);
const char *sb_state_name(int state);
uint64_t sb_now_mono_ms(void);
uint64_t sb_now_real_ms(void);

#endif
