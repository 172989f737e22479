/* jobs.h - per-worker thread pool that keeps blocking work off the event loop.
 *
 * A worker is one single-threaded libevent loop; everything that may block
 * (SQLite and MongoDB calls) runs here instead, the way Node hands work to
 * libuv's thread pool. The caller embeds a struct job in its own request or
 * operation struct (no allocation per job), fills work/done/deadline and
 * submits it from the loop thread. work() runs on a pool thread; done() runs
 * back on the loop thread, exactly once per submitted job, whatever happens.
 *
 * Finished jobs travel back through one completion list and one eventfd
 * registered as a persistent read event on the loop: the loop drains every
 * completion in one wake-up. The submit queue is bounded (full -> EAGAIN,
 * which the HTTP layer answers 503 with Retry-After), and jobs marked slow
 * may occupy at most half of the threads so they cannot starve quick ones.
 *
 * Ownership: the struct job belongs to the caller, but its memory must stay
 * valid from jobs_submit() until its done() has been called. A caller that
 * gives up on a job (client gone, request deadline) calls jobs_abandon() and
 * frees its memory in done() when job->abandoned is set. The caller must not
 * change the job's fields nor resubmit it until done() has run.
 *
 * The pool's read event stays registered on the base until jobs_free(), so
 * event_base_dispatch() does not return for lack of events while a pool lives.
 *
 * Lanes: a pool made by jobs_create_lanes() has writer threads and reader
 * threads with separate queues, so jobs that only read never wait behind
 * jobs that write (a held database write lock, a slow commit). A job says
 * which lane it belongs to in job->lane: JOB_LANE_WRITE (0, the default)
 * runs on a writer thread and may do anything; JOB_LANE_READ runs on a
 * reader thread and must not write (a job that reads then writes belongs
 * to the write lane). Slow jobs run on reader threads whatever their lane
 * (at most half of them), so they never hold the writers; a slow job of the
 * write lane (hash a password, then store it) may write from there. A pool made by
 * jobs_create() has no lanes: every thread runs every job.
 *
 * Fork: a pool's threads do not survive fork(). Create the pool in the worker
 * process, after fork, and never use it in a child.
 */
#ifndef RESIL_JOBS_H
#define RESIL_JOBS_H

#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct event_base;
struct job_pool;

/* Status passed to done(). */
enum job_status {
	JOB_OK = 0,        /* work() ran to completion */
	JOB_EXPIRED = 1,   /* deadline passed before a thread picked it; work() not run */
	JOB_CANCELLED = 2, /* abandoned before it started, or pool shut down; work() not run */
};

/* job->lane. */
enum job_lane {
	JOB_LANE_WRITE = 0, /* may write: a writer thread (the default) */
	JOB_LANE_READ = 1,  /* reads only: a reader thread, never queued behind writes */
};

/* jobs_thread_index() outside a pool thread. */
#define JOBS_NOT_A_POOL_THREAD UINT_MAX

struct job {
	void (*work)(struct job *job);             /* runs on a pool thread */
	void (*done)(struct job *job, int status); /* runs on the loop thread, once */
	uint64_t deadline_ms;                      /* CLOCK_MONOTONIC ms (jobs_now_ms()); 0 = none */
	bool slow;                                 /* may block long: at most half the (reader) threads run slow jobs */
	int lane;              /* enum job_lane; set before jobs_submit(), not changed while queued */
	atomic_bool abandoned; /* set by jobs_abandon(); work() may poll it to stop early */
	struct {               /* private to jobs.c */
		struct job *prev, *next;
		struct job_pool *pool;
		uint64_t seq;
		int status;
		bool queued;
	} priv;
};

struct jobs_stats {
	unsigned threads;
	unsigned max_queue;
	unsigned queued;             /* waiting for a thread now */
	unsigned running;            /* inside work() now */
	unsigned running_slow;       /* of which marked slow */
	uint64_t longest_running_ms; /* age of the oldest job inside work() (0 = none) */
	uint64_t submitted;          /* accepted by jobs_submit() */
	uint64_t completed;          /* done() called with JOB_OK */
	uint64_t expired;            /* done() called with JOB_EXPIRED */
	uint64_t cancelled;          /* done() called with JOB_CANCELLED */
	uint64_t rejected;           /* jobs_submit() refused with EAGAIN (queue full) */
	uint64_t wakeups;            /* loop wake-ups that delivered completions */
};

/* Start a pool of nthreads (1..256) threads whose completions are delivered on
 * base; at most max_queue (>= 1) jobs wait for a thread. Each thread first runs
 * thread_init(ud, idx) (optional; idx 0..nthreads-1 distinct; returns 0, or -1
 * with errno set) and on exit thread_fini(ud, idx) (optional; only if its init
 * succeeded). Pool threads block all signals. Call after fork, on the loop
 * thread. Returns the pool, or NULL with errno set (nothing left running). */
struct job_pool *jobs_create(struct event_base *base, unsigned nthreads, unsigned max_queue,
                             int (*thread_init)(void *ud, unsigned idx), void (*thread_fini)(void *ud, unsigned idx),
                             void *ud);

/* Like jobs_create() with lanes: threads 0..nwrite-1 serve the write lane,
 * threads nwrite..nwrite+nread-1 the read lane and slow jobs (nread >= 1;
 * nwrite 0 = no lanes, as jobs_create()). thread_init gets the index, so
 * the caller knows each thread's lane. */
struct job_pool *jobs_create_lanes(struct event_base *base, unsigned nread, unsigned nwrite, unsigned max_queue,
                                   int (*thread_init)(void *ud, unsigned idx),
                                   void (*thread_fini)(void *ud, unsigned idx), void *ud);

/* Queue job (loop thread only). Returns 0, or -1 with errno EAGAIN (queue
 * full), ESHUTDOWN (pool stopping) or EINVAL (missing work/done); on failure
 * done() will not be called and the caller keeps the job. */
int jobs_submit(struct job_pool *pool, struct job *job);

/* Give up on a submitted job whose done() has not run yet (loop thread only).
 * Sets job->abandoned; a job still waiting is taken off the queue and later
 * completes with JOB_CANCELLED, a running one keeps its eventual status.
 * done() is still called exactly once, from the loop, never from inside this
 * call; the job's memory must stay valid until then. */
void jobs_abandon(struct job *job);

/* Snapshot of the pool's gauges and counters (any thread). */
void jobs_stats(struct job_pool *pool, struct jobs_stats *out);

/* Stop the pool (loop thread only, never from a done() callback): refuse new
 * jobs, complete every waiting job with JOB_CANCELLED, wait for running ones,
 * join the threads (thread_fini on each) and call every outstanding done()
 * before returning. Releases the event and the eventfd. NULL is a no-op. */
void jobs_free(struct job_pool *pool);

/* Index of the calling pool thread, or JOBS_NOT_A_POOL_THREAD. */
unsigned jobs_thread_index(void);

/* The calling pool thread's lane: JOB_LANE_READ on a reader thread of a
 * pool with lanes, JOB_LANE_WRITE on any other pool thread; -1 off the pool. */
int jobs_thread_lane(void);
/* The lane of the job whose work() runs on the calling thread, or -1. */
int jobs_job_lane(void);

/* Per-thread handle (e.g. the thread's SQLite connection): set it from
 * thread_init or work(); returns 0, or -1 with errno EPERM off a pool thread. */
int jobs_set_thread_data(void *data);

/* The calling pool thread's handle set by jobs_set_thread_data(), else NULL. */
void *jobs_thread_data(void);

/* CLOCK_MONOTONIC in milliseconds, the clock of job deadlines. */
uint64_t jobs_now_ms(void);

#endif
