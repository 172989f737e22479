/* clock.h - the process's clocks, in one place.
 *
 * Deadlines, timeouts, backoff and latency use the monotonic clock (never
 * steps); timestamps that leave the process (createdAt, log and audit
 * lines) use the wall clock. The coarse monotonic clock (a few ms of
 * resolution, no syscall) is for hot paths that only need "about now",
 * such as per-socket rate buckets. clock_gettime cannot fail for these
 * clocks on Linux; if it did, every timeout in the process would be wrong,
 * which is not recoverable, so it aborts.
 */
#ifndef RESIL_CLOCK_H
#define RESIL_CLOCK_H

#include <stdint.h>
#include <stdlib.h>
#include <time.h>

static inline struct timespec clock_read_(clockid_t id)
{
	struct timespec ts;
	if (clock_gettime(id, &ts) != 0)
		abort();
	return ts;
}

/* CLOCK_MONOTONIC in nanoseconds. */
static inline uint64_t clock_mono_ns(void)
{
	struct timespec ts = clock_read_(CLOCK_MONOTONIC);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* CLOCK_MONOTONIC in milliseconds: the clock of every deadline. */
static inline uint64_t clock_mono_ms(void)
{
	struct timespec ts = clock_read_(CLOCK_MONOTONIC);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* CLOCK_MONOTONIC_COARSE in milliseconds (hot paths, a few ms resolution). */
static inline uint64_t clock_coarse_ms(void)
{
	struct timespec ts = clock_read_(CLOCK_MONOTONIC_COARSE);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* CLOCK_REALTIME in milliseconds since the epoch. */
static inline int64_t clock_real_ms(void)
{
	struct timespec ts = clock_read_(CLOCK_REALTIME);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* CLOCK_REALTIME as a timespec (absolute waits such as pthread_cond_timedwait). */
static inline struct timespec clock_real_ts(void)
{
	return clock_read_(CLOCK_REALTIME);
}

#endif
