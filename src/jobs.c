/* jobs.c - per-worker thread pool that keeps blocking work off the event loop.
 *
 * Two lists, two mutexes, never held together:
 *  - the submit side (qlock): three FIFO queues - quick write-lane jobs,
 *    quick read-lane jobs and slow jobs - served in submission order; a slow
 *    job is only picked while fewer than max_slow threads run slow jobs, so
 *    quick jobs always find a thread eventually. In a pool with lanes
 *    (jobs_create_lanes) writer threads serve only the write queue and wait
 *    on wcond; reader threads serve the read and slow queues and wait on
 *    qcond, so a reader is never stuck behind a write. Without lanes every
 *    thread serves every queue and waits on qcond;
 *  - the completion side (clock): finished jobs in completion order. A thread
 *    writes the eventfd only when the list goes from empty to non-empty; the
 *    loop reads the eventfd, then takes the whole list and calls every done().
 *    Reading before taking means a push racing with the take always leaves a
 *    wake-up behind, never a stranded job.
 * Counters written only by the loop thread are single-writer atomics so that
 * jobs_stats() can be read from any thread without a lock on the hot path.
 */
#define _GNU_SOURCE
#include "jobs.h"
#include "clock.h"
#include "metrics.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#define JOBS_MAX_THREADS 256

struct job_queue {
	struct job *head, *tail;
};

struct pool_thread {
	struct job_pool *pool;
	pthread_t tid;
	unsigned idx;
	bool writer;         /* serves the write lane only (pool with lanes) */
	void *data;          /* touched only by this thread */
	uint64_t started_ms; /* current job's start, 0 when idle; under qlock */
};

struct job_pool {
	/* submit side, under qlock */
	pthread_mutex_t qlock;
	pthread_cond_t qcond;     /* readers (every thread without lanes) wait for work or stop */
	pthread_cond_t wcond;     /* writer threads wait for write-lane work or stop */
	pthread_cond_t readycond; /* jobs_create waits for thread_init results */
	struct job_queue quick, quick_read, slow;
	uint64_t seq;
	unsigned nqueued, nrunning, nslow_running;
	unsigned ninit_reported;
	int init_errno;
	bool stopping;
	uint64_t submitted, rejected;

	/* completion side, under clock */
	pthread_mutex_t clock;
	struct job *chead, *ctail;

	/* set at creation, then read-only */
	unsigned nthreads, max_queue, max_slow;
	unsigned nwrite; /* writer threads (0: no lanes) */
	int (*thread_init)(void *ud, unsigned idx);
	void (*thread_fini)(void *ud, unsigned idx);
	void *ud;
	struct pool_thread *threads;
	unsigned nstarted;
	struct event *ev;
	int efd;

	/* written by the loop thread only */
	_Atomic uint64_t completed, expired, cancelled, wakeups;
};

static _Thread_local struct pool_thread *tls_self;
static _Thread_local int tls_job_lane = -1; /* lane of the job inside work(), -1: none */

uint64_t jobs_now_ms(void)
{
	return clock_mono_ms();
}

static void bump(_Atomic uint64_t *c)
{
	atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + 1, memory_order_relaxed);
}

static void lock(pthread_mutex_t *m)
{
	if (pthread_mutex_lock(m) != 0)
		abort();
}

static void unlock(pthread_mutex_t *m)
{
	if (pthread_mutex_unlock(m) != 0)
		abort();
}

static void queue_push(struct job_queue *q, struct job *j)
{
	j->priv.next = NULL;
	j->priv.prev = q->tail;
	if (q->tail)
		q->tail->priv.next = j;
	else
		q->head = j;
	q->tail = j;
}

static void queue_unlink(struct job_queue *q, struct job *j)
{
	if (j->priv.prev)
		j->priv.prev->priv.next = j->priv.next;
	else
		q->head = j->priv.next;
	if (j->priv.next)
		j->priv.next->priv.prev = j->priv.prev;
	else
		q->tail = j->priv.prev;
	j->priv.prev = j->priv.next = NULL;
}

static struct job_queue *queue_of(struct job_pool *p, const struct job *j)
{
	if (j->slow)
		return &p->slow;
	return j->lane == JOB_LANE_READ ? &p->quick_read : &p->quick;
}

static struct job *oldest(struct job *a, struct job *b)
{
	return a && (!b || a->priv.seq < b->priv.seq) ? a : b;
}

/* Take a job off the queue it waits in. Caller holds qlock. */
static void dequeue(struct job_pool *p, struct job *j)
{
	queue_unlink(queue_of(p, j), j);
	j->priv.queued = false;
	p->nqueued--;
}

/* The oldest job thread t may start now, or NULL. Caller holds qlock. */
static struct job *pick(struct job_pool *p, const struct pool_thread *t)
{
	struct job *s = p->nslow_running < p->max_slow ? p->slow.head : NULL;
	struct job *j;

	if (p->nwrite == 0)
		j = oldest(oldest(p->quick.head, p->quick_read.head), s);
	else if (t->writer)
		j = p->quick.head;
	else
		j = oldest(p->quick_read.head, s);

	if (j)
		dequeue(p, j);
	return j;
}

static void wake_loop(struct job_pool *p)
{
	uint64_t one = 1;

	/* Only EAGAIN (counter saturated: a wake-up is pending anyway) can happen. */
	if (write(p->efd, &one, sizeof one) != (ssize_t)sizeof one && errno != EAGAIN)
		abort();
}

/* Append a chain first..last to the completion list; wake the loop if it was empty. */
static void push_completions(struct job_pool *p, struct job *first, struct job *last)
{
	bool was_empty;

	last->priv.next = NULL;
	lock(&p->clock);
	was_empty = p->chead == NULL;
	if (was_empty)
		p->chead = first;
	else
		p->ctail->priv.next = first;
	p->ctail = last;
	unlock(&p->clock);
	if (was_empty)
		wake_loop(p);
}

static void complete(struct job_pool *p, struct job *j, int status)
{
	j->priv.status = status;
	push_completions(p, j, j);
}

/* Call done() for everything completed so far. Returns how many. Loop thread. */
static unsigned drain(struct job_pool *p)
{
	struct job *j, *next;
	unsigned n = 0;

	lock(&p->clock);
	j = p->chead;
	p->chead = p->ctail = NULL;
	unlock(&p->clock);
	for (; j; j = next, n++) {
		int status = j->priv.status;

		next = j->priv.next; /* done() may free j */
		bump(status == JOB_OK ? &p->completed : status == JOB_EXPIRED ? &p->expired : &p->cancelled);
		j->done(j, status);
	}
	return n;
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
	struct job_pool *p = arg;
	uint64_t n;

	(void)what;
	/* EAGAIN: a push raced with the previous drain and left a spare wake-up. */
	if (read(fd, &n, sizeof n) != (ssize_t)sizeof n && errno != EAGAIN)
		abort();
	if (drain(p) > 0)
		bump(&p->wakeups);
}

/* A thread's job loop. Called and returns with qlock held. */
static void serve(struct job_pool *p, struct pool_thread *t)
{
	for (;;) {
		struct job *j = NULL;
		uint64_t now;
		bool slow;

		while (!p->stopping && !(j = pick(p, t)))
			if (pthread_cond_wait(t->writer ? &p->wcond : &p->qcond, &p->qlock) != 0)
				abort();
		if (!j)
			return;
		now = jobs_now_ms();
		if (j->deadline_ms != 0 && now >= j->deadline_ms) {
			unlock(&p->qlock);
			complete(p, j, JOB_EXPIRED);
			lock(&p->qlock);
			continue;
		}
		slow = j->slow; /* j may be freed once completed */
		p->nrunning++;
		p->nslow_running += slow;
		t->started_ms = now ? now : 1;
		unlock(&p->qlock);

		tls_job_lane = j->lane;
		j->work(j);
		tls_job_lane = -1;
		complete(p, j, JOB_OK);

		lock(&p->qlock);
		p->nrunning--;
		p->nslow_running -= slow;
		t->started_ms = 0;
	}
}

static void *thread_main(void *arg)
{
	struct pool_thread *t = arg;
	struct job_pool *p = t->pool;
	char name[16];
	int err = 0;

	tls_self = t;
	snprintf(name, sizeof name, "resil-job%u", t->idx);
	(void)pthread_setname_np(pthread_self(), name); /* cosmetic: names threads in top -H */
	errno = 0;
	if (p->thread_init && p->thread_init(p->ud, t->idx) != 0)
		err = errno ? errno : EIO;

	lock(&p->qlock);
	p->ninit_reported++;
	if (err && !p->init_errno)
		p->init_errno = err;
	if (pthread_cond_signal(&p->readycond) != 0)
		abort();
	if (!err)
		serve(p, t);
	unlock(&p->qlock);

	if (!err && p->thread_fini)
		p->thread_fini(p->ud, t->idx);
	tls_self = NULL;
	return NULL;
}

/* Tell every thread to exit once its current job is done, and join them. */
static void stop_threads(struct job_pool *p)
{
	lock(&p->qlock);
	p->stopping = true;
	if (pthread_cond_broadcast(&p->qcond) != 0 || pthread_cond_broadcast(&p->wcond) != 0)
		abort();
	unlock(&p->qlock);
	for (unsigned i = 0; i < p->nstarted; i++)
		if (pthread_join(p->threads[i].tid, NULL) != 0)
			abort();
	p->nstarted = 0;
}

/* Start the threads with every signal blocked (they inherit the mask) and
 * wait for their thread_init results. Returns 0 or an errno value. */
static int start_threads(struct job_pool *p)
{
	sigset_t all, old;
	int rc, rc2;

	if (sigfillset(&all) != 0)
		return EINVAL;
	rc = pthread_sigmask(SIG_SETMASK, &all, &old);
	if (rc != 0)
		return rc;
	for (unsigned i = 0; i < p->nthreads; i++) {
		p->threads[i].pool = p;
		p->threads[i].idx = i;
		p->threads[i].writer = i < p->nwrite;
		rc = pthread_create(&p->threads[i].tid, NULL, thread_main, &p->threads[i]);
		if (rc != 0)
			break;
		p->nstarted++;
	}
	rc2 = pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc == 0)
		rc = rc2;

	lock(&p->qlock);
	while (p->ninit_reported < p->nstarted)
		if (pthread_cond_wait(&p->readycond, &p->qlock) != 0)
			abort();
	if (rc == 0)
		rc = p->init_errno;
	unlock(&p->qlock);
	return rc;
}

struct job_pool *jobs_create(struct event_base *base, unsigned nthreads, unsigned max_queue,
                             int (*thread_init)(void *ud, unsigned idx), void (*thread_fini)(void *ud, unsigned idx),
                             void *ud)
{
	return jobs_create_lanes(base, nthreads, 0, max_queue, thread_init, thread_fini, ud);
}

struct job_pool *jobs_create_lanes(struct event_base *base, unsigned nread, unsigned nwrite, unsigned max_queue,
                                   int (*thread_init)(void *ud, unsigned idx),
                                   void (*thread_fini)(void *ud, unsigned idx), void *ud)
{
	unsigned nthreads = nread + nwrite;
	struct job_pool *p;
	int err, stage = 0;

	if (!base || nread == 0 || nread > JOBS_MAX_THREADS || nwrite > JOBS_MAX_THREADS ||
	    nthreads > JOBS_MAX_THREADS || max_queue == 0) {
		errno = EINVAL;
		return NULL;
	}
	p = calloc(1, sizeof *p);
	if (!p)
		return NULL;
	p->nthreads = nthreads;
	p->nwrite = nwrite;
	p->max_queue = max_queue;
	p->max_slow = (nread + 1) / 2;
	p->thread_init = thread_init;
	p->thread_fini = thread_fini;
	p->ud = ud;
	p->efd = -1;

	p->threads = calloc(nthreads, sizeof *p->threads);
	if (!p->threads) {
		err = errno;
		goto fail;
	}
	if ((err = pthread_mutex_init(&p->qlock, NULL)) != 0)
		goto fail;
	stage = 1;
	if ((err = pthread_mutex_init(&p->clock, NULL)) != 0)
		goto fail;
	stage = 2;
	if ((err = pthread_cond_init(&p->qcond, NULL)) != 0)
		goto fail;
	stage = 3;
	if ((err = pthread_cond_init(&p->readycond, NULL)) != 0)
		goto fail;
	stage = 4;
	if ((err = pthread_cond_init(&p->wcond, NULL)) != 0)
		goto fail;
	stage = 5;
	p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (p->efd < 0) {
		err = errno;
		goto fail;
	}
	p->ev = event_new(base, p->efd, EV_READ | EV_PERSIST, on_wake, p);
	if (!p->ev || event_add(p->ev, NULL) != 0) {
		err = ENOMEM;
		goto fail;
	}
	if ((err = start_threads(p)) != 0) {
		stop_threads(p);
		goto fail;
	}
	return p;

fail:
	if (p->ev)
		event_free(p->ev);
	if (p->efd >= 0)
		close(p->efd);
	if (stage >= 5)
		pthread_cond_destroy(&p->wcond);
	if (stage >= 4)
		pthread_cond_destroy(&p->readycond);
	if (stage >= 3)
		pthread_cond_destroy(&p->qcond);
	if (stage >= 2)
		pthread_mutex_destroy(&p->clock);
	if (stage >= 1)
		pthread_mutex_destroy(&p->qlock);
	free(p->threads);
	free(p);
	errno = err;
	return NULL;
}

int jobs_submit(struct job_pool *p, struct job *j)
{
	int err = 0;

	if (!p || !j || !j->work || !j->done) {
		errno = EINVAL;
		return -1;
	}
	atomic_store_explicit(&j->abandoned, false, memory_order_relaxed);
	j->priv.pool = p;
	j->priv.status = JOB_OK;

	lock(&p->qlock);
	if (p->stopping) {
		err = ESHUTDOWN;
	} else if (p->nqueued >= p->max_queue) {
		p->rejected++;
		err = EAGAIN;
	} else {
		j->priv.seq = p->seq++;
		j->priv.queued = true;
		queue_push(queue_of(p, j), j);
		p->nqueued++;
		p->submitted++;
		if (pthread_cond_signal(p->nwrite && !j->slow && j->lane != JOB_LANE_READ ? &p->wcond : &p->qcond) != 0)
			abort();
	}
	unlock(&p->qlock);
	if (err == EAGAIN)
		metrics_count(MC_JOBS_REJECTED); /* loop thread only, as this call */
	if (err) {
		errno = err;
		return -1;
	}
	return 0;
}

void jobs_abandon(struct job *j)
{
	struct job_pool *p = j->priv.pool;
	bool waiting;

	atomic_store(&j->abandoned, true);
	lock(&p->qlock);
	waiting = j->priv.queued;
	if (waiting)
		dequeue(p, j);
	unlock(&p->qlock);
	/* Completed through the list, not here, so done() never runs inside this call. */
	if (waiting)
		complete(p, j, JOB_CANCELLED);
}

void jobs_stats(struct job_pool *p, struct jobs_stats *out)
{
	uint64_t now = jobs_now_ms();

	memset(out, 0, sizeof *out);
	out->threads = p->nthreads;
	out->max_queue = p->max_queue;
	lock(&p->qlock);
	out->queued = p->nqueued;
	out->running = p->nrunning;
	out->running_slow = p->nslow_running;
	out->submitted = p->submitted;
	out->rejected = p->rejected;
	for (unsigned i = 0; i < p->nthreads; i++) {
		uint64_t s = p->threads[i].started_ms;

		if (s && now > s && now - s > out->longest_running_ms)
			out->longest_running_ms = now - s;
	}
	unlock(&p->qlock);
	out->completed = atomic_load_explicit(&p->completed, memory_order_relaxed);
	out->expired = atomic_load_explicit(&p->expired, memory_order_relaxed);
	out->cancelled = atomic_load_explicit(&p->cancelled, memory_order_relaxed);
	out->wakeups = atomic_load_explicit(&p->wakeups, memory_order_relaxed);
}

void jobs_free(struct job_pool *p)
{
	struct job *first = NULL, *last = NULL;

	if (!p)
		return;
	/* Detach every waiting job, oldest first, before any thread can pick one. */
	lock(&p->qlock);
	p->stopping = true;
	for (;;) {
		struct job *j = oldest(oldest(p->quick.head, p->quick_read.head), p->slow.head);

		if (!j)
			break;
		dequeue(p, j);
		j->priv.status = JOB_CANCELLED;
		if (last)
			last->priv.next = j;
		else
			first = j;
		last = j;
	}
	unlock(&p->qlock);
	if (first)
		push_completions(p, first, last);

	stop_threads(p);
	while (drain(p) > 0)
		;

	event_free(p->ev);
	close(p->efd);
	pthread_cond_destroy(&p->readycond);
	pthread_cond_destroy(&p->wcond);
	pthread_cond_destroy(&p->qcond);
	pthread_mutex_destroy(&p->clock);
	pthread_mutex_destroy(&p->qlock);
	free(p->threads);
	free(p);
}

unsigned jobs_thread_index(void)
{
	return tls_self ? tls_self->idx : JOBS_NOT_A_POOL_THREAD;
}

int jobs_thread_lane(void)
{
	if (!tls_self)
		return -1;
	return tls_self->pool->nwrite && !tls_self->writer ? JOB_LANE_READ : JOB_LANE_WRITE;
}

int jobs_job_lane(void)
{
	return tls_job_lane;
}

int jobs_set_thread_data(void *data)
{
	if (!tls_self) {
		errno = EPERM;
		return -1;
	}
	tls_self->data = data;
	return 0;
}

void *jobs_thread_data(void)
{
	return tls_self ? tls_self->data : NULL;
}
