/* scoreboard.c - the shared-memory worker table (see scoreboard.h). */
#include "scoreboard.h"

#include "clock.h"
#include "shm.h"

#include <errno.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define SB_MAGIC 0x52534c42u /* "RSLB" */

struct scoreboard *sb_create_fd(int *fd_out)
{
	struct scoreboard *sb = shm_create("resil-scoreboard", sizeof(struct scoreboard), fd_out);
	if (sb)
		sb->hdr.magic = SB_MAGIC;
	return sb;
}

struct scoreboard *sb_create(void)
{
	return sb_create_fd(NULL);
}

struct scoreboard *sb_attach(int fd)
{
	size_t bytes;
	struct scoreboard *sb = shm_attach(fd, &bytes);
	if (!sb)
		return NULL;
	if (bytes != sizeof(*sb) || sb->hdr.magic != SB_MAGIC) {
		munmap(sb, bytes);
		errno = EPROTO;
		return NULL;
	}
	return sb;
}

void sb_destroy(struct scoreboard *sb)
{
	if (sb)
		munmap(sb, sizeof(*sb));
}

uint64_t sb_now_mono_ms(void)
{
	return clock_mono_ms();
}

uint64_t sb_now_real_ms(void)
{
	return (uint64_t)clock_real_ms();
}

int sb_claim(struct scoreboard *sb, int worker_id, unsigned generation)
{
	for (int i = 0; i < SB_MAX_ENTRIES; i++) {
		struct sb_entry *e = &sb->entries[i];
		if (atomic_load(&e->state) != SB_FREE)
			continue;
		memset(e->route, 0, sizeof(e->route));
		atomic_store(&e->pid, 0);
		atomic_store(&e->worker_id, worker_id);
		atomic_store(&e->generation, generation);
		atomic_store(&e->started_ms, sb_now_real_ms());
		atomic_store(&e->heartbeat_ms, sb_now_mono_ms());
		atomic_store(&e->requests, 0);
		atomic_store(&e->inflight, 0);
		atomic_store(&e->connections, 0);
		atomic_store(&e->websockets, 0);
		atomic_store(&e->db_state, SB_DB_UNKNOWN);
		atomic_store(&e->ncircuits, 0);
		atomic_store(&e->route_seq, 0);
		atomic_store(&e->state, SB_STARTING);
		if (atomic_load(&sb->hdr.entries_hwm) < i + 1)
			atomic_store(&sb->hdr.entries_hwm, i + 1);
		return i;
	}
	return -1;
}

/* The entry's process is gone: its counters move to the retired totals.
 * Readers (sb_counters_sum) retry while fold_seq is odd or changed, so
 * none sees the counters twice (added, not yet zeroed) or not at all. */
static void fold(struct scoreboard *sb, int idx)
{
	atomic_uint_least64_t *from = (atomic_uint_least64_t *)&sb->metrics[idx].c;
	atomic_uint_least64_t *to = (atomic_uint_least64_t *)&sb->retired;
	unsigned seq = atomic_load_explicit(&sb->fold_seq, memory_order_relaxed);
	atomic_store_explicit(&sb->fold_seq, seq + 1, memory_order_relaxed);
	atomic_thread_fence(memory_order_release);
	for (size_t i = 0; i < SB_COUNTER_WORDS; i++) {
		uint64_t v = atomic_load_explicit(&from[i], memory_order_relaxed);
		if (!v)
			continue;
		atomic_store_explicit(&to[i], atomic_load_explicit(&to[i], memory_order_relaxed) + v,
		                      memory_order_relaxed);
		atomic_store_explicit(&from[i], 0, memory_order_relaxed);
	}
	atomic_store_explicit(&sb->fold_seq, seq + 2, memory_order_release);
	atomic_int_least64_t *gauge = sb->metrics[idx].g.gauge;
	for (int i = 0; i < SB_METRIC_GAUGES; i++)
		atomic_store_explicit(&gauge[i], 0, memory_order_relaxed);
	atomic_store_explicit(&sb->metrics[idx].g.rss_bytes, 0, memory_order_relaxed);
	atomic_store_explicit(&sb->metrics[idx].g.cpu_ns, 0, memory_order_relaxed);
	atomic_store_explicit(&sb->metrics[idx].g.cpu_permille, 0, memory_order_relaxed);
}

void sb_release(struct scoreboard *sb, int idx)
{
	if (idx < 0 || idx >= SB_MAX_ENTRIES)
		return;
	fold(sb, idx);
	atomic_store(&sb->entries[idx].state, SB_FREE);
}

void sb_count_restart(struct scoreboard *sb, int cause)
{
	if (cause < 0 || cause >= SB_RESTART_CAUSES)
		return;
	atomic_uint_least64_t *c = &sb->restarts[cause];
	atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + 1, memory_order_relaxed);
}

void sb_counters_sum(const struct scoreboard *sb, struct sb_counters *sum)
{
	atomic_uint_least64_t *out = (atomic_uint_least64_t *)sum;
	int hwm = atomic_load_explicit(&sb->hdr.entries_hwm, memory_order_relaxed);
	if (hwm > SB_MAX_ENTRIES)
		hwm = SB_MAX_ENTRIES;
	/* A fold takes microseconds; after many retries (a supervisor that
	 * died inside one) take what is there. */
	for (int tries = 0;; tries++) {
		unsigned seq = atomic_load_explicit(&sb->fold_seq, memory_order_acquire);
		int last = tries >= 1000;
		if ((seq & 1) && !last) {
			sched_yield();
			continue;
		}
		const atomic_uint_least64_t *r = (const atomic_uint_least64_t *)&sb->retired;
		for (size_t i = 0; i < SB_COUNTER_WORDS; i++)
			atomic_store_explicit(&out[i], atomic_load_explicit(&r[i], memory_order_relaxed),
			                      memory_order_relaxed);
		for (int e = 0; e < hwm; e++) {
			const atomic_uint_least64_t *w = (const atomic_uint_least64_t *)&sb->metrics[e].c;
			for (size_t i = 0; i < SB_COUNTER_WORDS; i++) {
				uint64_t v = atomic_load_explicit(&w[i], memory_order_relaxed);
				if (v)
					atomic_store_explicit(&out[i],
					                      atomic_load_explicit(&out[i], memory_order_relaxed) + v,
					                      memory_order_relaxed);
			}
		}
		atomic_thread_fence(memory_order_acquire);
		if (last || atomic_load_explicit(&sb->fold_seq, memory_order_relaxed) == seq)
			return;
	}
}

int sb_name_index(struct sb_name *tab, int n, const char *name)
{
	char want[SB_NAME_LEN];
	size_t len = strlen(name);
	if (len >= sizeof(want))
		len = sizeof(want) - 1;
	memcpy(want, name, len);
	want[len] = '\0';
	for (int i = 0; i < n; i++) {
		struct sb_name *s = &tab[i];
		int st = atomic_load_explicit(&s->state, memory_order_acquire);
		if (st == 0) {
			int expect = 0;
			if (atomic_compare_exchange_strong(&s->state, &expect, 1)) {
				memcpy(s->name, want, len + 1);
				atomic_store_explicit(&s->state, 2, memory_order_release);
				return i;
			}
			st = expect;
		}
		/* Someone is writing this slot: wait for it (a writer that died
		 * in between leaves the slot unusable, not the table). */
		for (int spin = 0; st == 1 && spin < 10000; spin++) {
			sched_yield();
			st = atomic_load_explicit(&s->state, memory_order_acquire);
		}
		if (st == 2 && strcmp(s->name, want) == 0)
			return i;
	}
	return -1;
}

void sb_set_state(struct sb_entry *e, int state)
{
	atomic_store_explicit(&e->state, state, memory_order_release);
}

void sb_heartbeat(struct sb_entry *e)
{
	atomic_store_explicit(&e->heartbeat_ms, sb_now_mono_ms(), memory_order_relaxed);
}

void sb_set_route(struct sb_entry *e, const char *route)
{
	unsigned seq = atomic_load_explicit(&e->route_seq, memory_order_relaxed);
	atomic_store_explicit(&e->route_seq, seq + 1, memory_order_release);
	size_t n = strlen(route);
	if (n >= SB_ROUTE_LEN)
		n = SB_ROUTE_LEN - 1;
	memcpy(e->route, route, n);
	e->route[n] = '\0';
	atomic_store_explicit(&e->route_seq, seq + 2, memory_order_release);
}

void sb_get_route(const struct sb_entry *e, char *out, size_t outlen)
{
	/* The writer may be dead mid-write (that is when we read it): take what
	 * is there, bounded and NUL-terminated. */
	size_t n = 0;
	while (n + 1 < outlen && n < SB_ROUTE_LEN && e->route[n])
		n++;
	memcpy(out, e->route, n);
	out[n] = '\0';
}

void sb_set_circuit(struct sb_entry *e, const char *name, int state)
{
	int n = atomic_load_explicit(&e->ncircuits, memory_order_relaxed);
	for (int i = 0; i < n; i++) {
		if (strncmp(e->circuits[i].name, name, sizeof(e->circuits[i].name)) == 0) {
			atomic_store_explicit(&e->circuits[i].state, state, memory_order_relaxed);
			return;
		}
	}
	if (n >= SB_MAX_CIRCUITS)
		return;
	strncpy(e->circuits[n].name, name, sizeof(e->circuits[n].name) - 1);
	atomic_store_explicit(&e->circuits[n].state, state, memory_order_relaxed);
	atomic_store_explicit(&e->ncircuits, n + 1, memory_order_release);
}

int sb_count_ready(const struct scoreboard *sb)
{
	int n = 0;
	int hwm = atomic_load_explicit(&sb->hdr.entries_hwm, memory_order_relaxed);
	if (hwm > SB_MAX_ENTRIES)
		hwm = SB_MAX_ENTRIES;
	for (int i = 0; i < hwm; i++)
		if (atomic_load_explicit(&sb->entries[i].state, memory_order_relaxed) == SB_READY)
			n++;
	return n;
}

/* Rank for "worst": open (1) > half-open (2) > closed (0). */
static int circuit_rank(int st)
{
	return st == 1 ? 2 : st == 2 ? 1 : 0;
}

int sb_circuits_merge(const struct scoreboard *sb, struct sb_circuit_sum *out, int max)
{
	int n = 0;
	int hwm = atomic_load_explicit(&sb->hdr.entries_hwm, memory_order_relaxed);
	if (hwm > SB_MAX_ENTRIES)
		hwm = SB_MAX_ENTRIES;
	for (int i = 0; i < hwm; i++) {
		const struct sb_entry *e = &sb->entries[i];
		if (atomic_load_explicit(&e->state, memory_order_relaxed) != SB_READY)
			continue;
		int nc = atomic_load_explicit(&e->ncircuits, memory_order_acquire);
		for (int k = 0; k < nc && k < SB_MAX_CIRCUITS; k++) {
			const struct sb_circuit *c = &e->circuits[k];
			if (!c->name[0])
				continue;
			int st = atomic_load_explicit(&c->state, memory_order_relaxed);
			if (st < 0 || st > 2)
				st = 0;
			int j = 0;
			while (j < n && strncmp(out[j].name, c->name, sizeof(out[j].name)) != 0)
				j++;
			if (j == n) {
				if (n >= max)
					continue;
				memset(&out[j], 0, sizeof(out[j]));
				memcpy(out[j].name, c->name, sizeof(out[j].name) - 1);
				n++;
			}
			out[j].count[st]++;
			if (circuit_rank(st) > circuit_rank(out[j].worst))
				out[j].worst = st;
		}
	}
	return n;
}

const char *sb_state_name(int state)
{
	switch (state) {
	case SB_STARTING: return "starting";
	case SB_READY: return "ready";
	case SB_DRAINING: return "draining";
	case SB_STOPPED: return "stopped";
	case SB_ERRORED: return "errored";
	default: return "free";
	}
}
