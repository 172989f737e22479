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

/* Metrics (GET /metrics, src/metrics.c). Every counter of a process lives
 * in its own block below (struct sb_metrics, indexed like entries[]) and
 * has one writer thread, or is bumped with an atomic add where pool
 * threads share it (store ops, breaker transitions). Labels that are
 * names (route templates, circuits) index shared name tables, so the hot
 * path is an array index and every process uses the same index. */
#define SB_METRIC_ROUTES 64                        /* route templates; beyond: "other" */
#define SB_METRIC_ROUTE_UNMATCHED SB_METRIC_ROUTES /* 404/405 and requests refused before routing */
#define SB_METRIC_ROUTE_OTHER (SB_METRIC_ROUTES + 1)
#define SB_METRIC_ROUTE_SLOTS (SB_METRIC_ROUTES + 2)
#define SB_METRIC_METHODS 8  /* GET HEAD POST PUT PATCH DELETE OPTIONS other */
#define SB_METRIC_CLASSES 5  /* 1xx..5xx */
#define SB_METRIC_BUCKETS 16 /* latency bounds (metrics.c); one more slot for +Inf */
#define SB_METRIC_BACKENDS 2 /* sqlite, mongodb */
#define SB_METRIC_STORE_OPS 9
#define SB_METRIC_STORE_RESULTS 8
#define SB_METRIC_CIRCUITS 8
#define SB_METRIC_COUNTERS 16 /* enum metrics_counter (metrics.h) */
#define SB_METRIC_GAUGES 8    /* enum metrics_gauge (metrics.h) */
#define SB_NAME_LEN SB_ROUTE_LEN
enum sb_restart_cause {
	SB_RESTART_CRASH = 0, /* killed by a signal */
	SB_RESTART_EXIT,      /* exited although nobody asked it to */
	SB_RESTART_HUNG,      /* heartbeat too old: killed */
	SB_RESTART_MEMORY,    /* over max_memory: recycled */
	SB_RESTART_RELOAD,    /* reload (SIGHUP, resilctl reload) */
	SB_RESTART_RESTART,   /* resilctl restart */
	SB_RESTART_CAUSES
};

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

/* Latency histogram: per-bucket (not cumulative) counts, the last slot
 * for values above the highest bound; sum in nanoseconds. */
struct sb_hist {
	atomic_uint_least64_t bucket[SB_METRIC_BUCKETS + 1];
	atomic_uint_least64_t count;
	atomic_uint_least64_t sum_ns;
};

/* The counters of one process, folded into the retired block when its
 * entry is released: nothing but atomic_uint_least64_t, so folding and
 * summing treat it as an array of words. */
struct sb_counters {
	atomic_uint_least64_t requests[SB_METRIC_ROUTE_SLOTS][SB_METRIC_METHODS][SB_METRIC_CLASSES];
	struct sb_hist request_seconds[SB_METRIC_ROUTE_SLOTS];
	atomic_uint_least64_t store_ops[SB_METRIC_BACKENDS][SB_METRIC_STORE_OPS][SB_METRIC_STORE_RESULTS];
	struct sb_hist store_seconds[SB_METRIC_BACKENDS][SB_METRIC_STORE_OPS];
	atomic_uint_least64_t circuit_transitions[SB_METRIC_CIRCUITS][3]; /* by the state entered */
	atomic_uint_least64_t counter[SB_METRIC_COUNTERS];                /* enum metrics_counter */
};
#define SB_COUNTER_WORDS (sizeof(struct sb_counters) / sizeof(atomic_uint_least64_t))

/* Gauges of one process: not folded (a gone process has none). */
struct sb_gauges {
	atomic_int_least64_t gauge[SB_METRIC_GAUGES]; /* enum metrics_gauge, written by the worker */
	/* Written by the supervisor's monitor (250 ms tick). */
	atomic_uint_least64_t rss_bytes;
	atomic_uint_least64_t cpu_ns;       /* user + system since the process started */
	atomic_uint_least64_t cpu_permille; /* of one core, over the last tick */
};

struct sb_metrics {
	struct sb_counters c;
	struct sb_gauges g;
} __attribute__((aligned(64)));

/* A shared name table slot (route templates, circuit names): claimed once
 * by whichever process or thread needs the name first, never freed. */
struct sb_name {
	atomic_int state; /* 0 free, 1 being written, 2 set */
	char name[SB_NAME_LEN];
};

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
	/* Metrics. Readers sum retired + metrics[0..entries_hwm): a released
	 * entry's counters are folded into retired and then zeroed inside a
	 * sequence-counter section (fold_seq odd while folding), so a reader
	 * that saw fold_seq change sums again and a counter never goes back. */
	atomic_uint fold_seq;
	atomic_uint_least64_t restarts[SB_RESTART_CAUSES]; /* supervisor only */
	struct sb_name route_names[SB_METRIC_ROUTES];
	struct sb_name circuit_names[SB_METRIC_CIRCUITS];
	struct sb_counters retired; /* supervisor only */
	struct sb_metrics metrics[SB_MAX_ENTRIES];
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
/* Supervisor, after the entry's process exited (or never started): fold
 * its counters into the retired totals, zero its metrics, free it. */
void sb_release(struct scoreboard *sb, int idx);
/* Supervisor: one worker restart of this cause (enum sb_restart_cause). */
void sb_count_restart(struct scoreboard *sb, int cause);

/* Index of name in a shared name table of n slots, claiming a free slot
 * for a new name (names longer than SB_NAME_LEN - 1 are cut). Any process,
 * any thread; -1 when the table is full. Not for a hot path: it compares
 * strings. */
int sb_name_index(struct sb_name *tab, int n, const char *name);
/* Sum of retired + every entry's counters into out (a private copy),
 * consistent with respect to folds. */
void sb_counters_sum(const struct scoreboard *sb, struct sb_counters *out);

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
