/* test_jobs.c - unit tests for src/jobs.c, the per-worker thread pool.
 *
 * Every test runs a real libevent base on the test's main thread (the "loop
 * thread") and real pool threads. Waits are bounded: the loop helper gives up
 * after 10 s and pollers after 10 000 short sleeps, so a bug fails instead of
 * hanging. The only timing assertion is the generous loop-latency bound.
 */
#define _GNU_SOURCE
#include "../src/jobs.h"

#include <check.h>
#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NJOBS 1000

struct gate {
	sem_t started; /* posted by work() when it begins */
	sem_t release; /* work() waits on it before returning */
};

struct tjob {
	struct job job;
	struct gate *gate;
	atomic_int work_runs;
	atomic_int ran_lane; /* jobs_thread_lane() inside work() */
	atomic_int job_lane; /* jobs_job_lane() inside work() */
	int done_calls;
	int status;
	bool work_off_loop;
	bool done_on_loop;
	bool resubmit_in_done; /* try jobs_submit() from done() */
	int resubmit_errno;
	struct job_pool *pool;
};

static struct event_base *base;
static pthread_t loop_thread;
static int done_total;

static void setup(void)
{
	base = event_base_new();
	ck_assert_ptr_nonnull(base);
	loop_thread = pthread_self();
	done_total = 0;
}

static void teardown(void)
{
	event_base_free(base);
	base = NULL;
}

static void sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static void gate_init(struct gate *g)
{
	ck_assert_int_eq(sem_init(&g->started, 0, 0), 0);
	ck_assert_int_eq(sem_init(&g->release, 0, 0), 0);
}

static void gate_destroy(struct gate *g)
{
	sem_destroy(&g->started);
	sem_destroy(&g->release);
}

static void tjob_work(struct job *job)
{
	struct tjob *t = (struct tjob *)job;

	atomic_fetch_add(&t->work_runs, 1);
	atomic_store(&t->ran_lane, jobs_thread_lane());
	atomic_store(&t->job_lane, jobs_job_lane());
	t->work_off_loop = !pthread_equal(pthread_self(), loop_thread);
	if (t->gate) {
		sem_post(&t->gate->started);
		while (sem_wait(&t->gate->release) != 0)
			;
	}
}

static void tjob_done(struct job *job, int status)
{
	struct tjob *t = (struct tjob *)job;

	t->done_calls++;
	t->status = status;
	t->done_on_loop = pthread_equal(pthread_self(), loop_thread);
	if (t->resubmit_in_done) {
		t->resubmit_errno = 0;
		if (jobs_submit(t->pool, &t->job) != 0)
			t->resubmit_errno = errno;
	}
	done_total++;
}

static void tjob_init(struct tjob *t, struct gate *g)
{
	memset(t, 0, sizeof *t);
	t->job.work = tjob_work;
	t->job.done = tjob_done;
	t->gate = g;
}

static void on_safety_timer(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	*(bool *)arg = true;
}

/* Run the loop until *count reaches want; false if 10 s pass first. */
static bool loop_until(const int *count, int want)
{
	bool timed_out = false;
	struct timeval tv = {10, 0};
	struct event *safety = evtimer_new(base, on_safety_timer, &timed_out);

	ck_assert_ptr_nonnull(safety);
	ck_assert_int_eq(evtimer_add(safety, &tv), 0);
	while (*count < want && !timed_out)
		ck_assert_int_ge(event_base_loop(base, EVLOOP_ONCE), 0);
	event_free(safety);
	return !timed_out;
}

/* Wait without turning the loop until no job is queued or running. */
static bool wait_idle(struct job_pool *pool)
{
	struct jobs_stats st;

	for (int i = 0; i < 10000; i++) {
		jobs_stats(pool, &st);
		if (st.queued == 0 && st.running == 0)
			return true;
		sleep_ms(1);
	}
	return false;
}

START_TEST(test_jobs_run_1000_jobs_off_loop_and_complete_each_once_on_loop)
{
	struct tjob *jobs = calloc(NJOBS, sizeof *jobs);
	struct job_pool *pool = jobs_create(base, 4, NJOBS, NULL, NULL, NULL);
	struct jobs_stats st;

	ck_assert_ptr_nonnull(jobs);
	ck_assert_ptr_nonnull(pool);
	for (int i = 0; i < NJOBS; i++) {
		tjob_init(&jobs[i], NULL);
		ck_assert_int_eq(jobs_submit(pool, &jobs[i].job), 0);
	}
	ck_assert(loop_until(&done_total, NJOBS));
	for (int i = 0; i < NJOBS; i++) {
		ck_assert_int_eq(jobs[i].done_calls, 1);
		ck_assert_int_eq(atomic_load(&jobs[i].work_runs), 1);
		ck_assert_int_eq(jobs[i].status, JOB_OK);
		ck_assert(jobs[i].work_off_loop);
		ck_assert(jobs[i].done_on_loop);
	}
	jobs_stats(pool, &st);
	ck_assert_uint_eq(st.submitted, NJOBS);
	ck_assert_uint_eq(st.completed, NJOBS);
	ck_assert_uint_eq(st.queued, 0);
	ck_assert_uint_eq(st.expired + st.cancelled + st.rejected, 0);
	jobs_free(pool);
	ck_assert_int_eq(done_total, NJOBS);
	free(jobs);
}
END_TEST

START_TEST(test_jobs_deliver_completions_that_pile_up_in_one_wakeup)
{
	struct tjob *jobs = calloc(NJOBS, sizeof *jobs);
	struct job_pool *pool = jobs_create(base, 4, NJOBS, NULL, NULL, NULL);
	struct jobs_stats st;

	ck_assert_ptr_nonnull(jobs);
	ck_assert_ptr_nonnull(pool);
	for (int i = 0; i < NJOBS; i++) {
		tjob_init(&jobs[i], NULL);
		ck_assert_int_eq(jobs_submit(pool, &jobs[i].job), 0);
	}
	/* The loop is "blocked" (not turning) while every job finishes. */
	ck_assert(wait_idle(pool));
	ck_assert_int_eq(done_total, 0);
	ck_assert(loop_until(&done_total, NJOBS));
	jobs_stats(pool, &st);
	ck_assert_uint_eq(st.wakeups, 1);
	ck_assert_uint_eq(st.completed, NJOBS);
	jobs_free(pool);
	free(jobs);
}
END_TEST

START_TEST(test_jobs_submit_fails_with_eagain_when_queue_is_full)
{
	struct gate g;
	struct tjob blocker, q[3];
	struct job_pool *pool = jobs_create(base, 1, 2, NULL, NULL, NULL);
	struct jobs_stats st;

	ck_assert_ptr_nonnull(pool);
	gate_init(&g);
	tjob_init(&blocker, &g);
	ck_assert_int_eq(jobs_submit(pool, &blocker.job), 0);
	ck_assert_int_eq(sem_wait(&g.started), 0);
	for (int i = 0; i < 3; i++)
		tjob_init(&q[i], NULL);
	ck_assert_int_eq(jobs_submit(pool, &q[0].job), 0);
	ck_assert_int_eq(jobs_submit(pool, &q[1].job), 0);
	errno = 0;
	ck_assert_int_eq(jobs_submit(pool, &q[2].job), -1);
	ck_assert_int_eq(errno, EAGAIN);
	jobs_stats(pool, &st);
	ck_assert_uint_eq(st.queued, 2);
	ck_assert_uint_eq(st.running, 1);
	ck_assert_uint_eq(st.rejected, 1);

	ck_assert_int_eq(sem_post(&g.release), 0);
	ck_assert(loop_until(&done_total, 3));
	ck_assert_int_eq(q[0].done_calls + q[1].done_calls, 2);
	ck_assert_int_eq(q[2].done_calls, 0);
	ck_assert_int_eq(atomic_load(&q[2].work_runs), 0);
	/* Once the queue drains, submitting works again. */
	ck_assert_int_eq(jobs_submit(pool, &q[2].job), 0);
	ck_assert(loop_until(&done_total, 4));
	ck_assert_int_eq(q[2].status, JOB_OK);
	jobs_free(pool);
	gate_destroy(&g);
}
END_TEST

START_TEST(test_jobs_with_a_passed_deadline_expire_without_running_work)
{
	struct tjob late, timely;
	struct job_pool *pool = jobs_create(base, 2, 8, NULL, NULL, NULL);
	struct jobs_stats st;

	ck_assert_ptr_nonnull(pool);
	tjob_init(&late, NULL);
	tjob_init(&timely, NULL);
	late.job.deadline_ms = 1; /* long gone on the monotonic clock */
	timely.job.deadline_ms = jobs_now_ms() + 60000;
	ck_assert_int_eq(jobs_submit(pool, &late.job), 0);
	ck_assert_int_eq(jobs_submit(pool, &timely.job), 0);
	ck_assert(loop_until(&done_total, 2));
	ck_assert_int_eq(late.done_calls, 1);
	ck_assert_int_eq(late.status, JOB_EXPIRED);
	ck_assert_int_eq(atomic_load(&late.work_runs), 0);
	ck_assert(late.done_on_loop);
	ck_assert_int_eq(timely.status, JOB_OK);
	ck_assert_int_eq(atomic_load(&timely.work_runs), 1);
	jobs_stats(pool, &st);
	ck_assert_uint_eq(st.expired, 1);
	ck_assert_uint_eq(st.completed, 1);
	jobs_free(pool);
}
END_TEST

START_TEST(test_jobs_abandoned_before_start_are_cancelled_without_running)
{
	struct gate g;
	struct tjob blocker, victim;
	struct job_pool *pool = jobs_create(base, 1, 8, NULL, NULL, NULL);
	struct jobs_stats st;

	ck_assert_ptr_nonnull(pool);
	gate_init(&g);
	tjob_init(&blocker, &g);
	tjob_init(&victim, NULL);
	ck_assert_int_eq(jobs_submit(pool, &blocker.job), 0);
	ck_assert_int_eq(sem_wait(&g.started), 0);
	ck_assert_int_eq(jobs_submit(pool, &victim.job), 0);
	jobs_abandon(&victim.job);
	ck_assert_int_eq(victim.done_calls, 0); /* never from inside jobs_abandon */
	jobs_stats(pool, &st);
	ck_assert_uint_eq(st.queued, 0); /* its queue slot is free at once */

	ck_assert_int_eq(sem_post(&g.release), 0);
	ck_assert(loop_until(&done_total, 2));
	ck_assert_int_eq(victim.done_calls, 1);
	ck_assert_int_eq(victim.status, JOB_CANCELLED);
	ck_assert(victim.job.abandoned);
	ck_assert_int_eq(atomic_load(&victim.work_runs), 0);
	ck_assert_int_eq(blocker.status, JOB_OK);
	ck_assert(!blocker.job.abandoned);
	jobs_stats(pool, &st);
	ck_assert_uint_eq(st.cancelled, 1);
	jobs_free(pool);
	gate_destroy(&g);
}
END_TEST

/* A request-like owner that frees itself in done() once abandoned. */
struct owned_op {
	struct job job;
	struct gate *gate;
	char *buffer; /* written by work() after the loop gave up on it */
};

static int owned_done_calls;
static int owned_status;
static bool owned_saw_abandoned;

static void owned_work(struct job *job)
{
	struct owned_op *op = (struct owned_op *)job;

	if (op->gate) {
		sem_post(&op->gate->started);
		while (sem_wait(&op->gate->release) != 0)
			;
	}
	memcpy(op->buffer, "result", 7);
}

static void owned_done(struct job *job, int status)
{
	struct owned_op *op = (struct owned_op *)job;

	owned_done_calls++;
	owned_status = status;
	owned_saw_abandoned = job->abandoned;
	if (job->abandoned) {
		free(op->buffer);
		free(op);
	}
	done_total++;
}

static struct owned_op *owned_new(struct gate *g)
{
	struct owned_op *op = calloc(1, sizeof *op);

	ck_assert_ptr_nonnull(op);
	op->buffer = malloc(16);
	ck_assert_ptr_nonnull(op->buffer);
	op->job.work = owned_work;
	op->job.done = owned_done;
	op->gate = g;
	owned_done_calls = 0;
	owned_status = -1;
	owned_saw_abandoned = false;
	return op;
}

START_TEST(test_jobs_abandoned_while_running_still_get_done_once)
{
	struct gate g;
	struct job_pool *pool = jobs_create(base, 2, 8, NULL, NULL, NULL);
	struct owned_op *op;

	ck_assert_ptr_nonnull(pool);
	gate_init(&g);
	op = owned_new(&g);
	ck_assert_int_eq(jobs_submit(pool, &op->job), 0);
	ck_assert_int_eq(sem_wait(&g.started), 0);
	jobs_abandon(&op->job);
	op = NULL; /* the loop forgets it; done() owns the memory now */
	ck_assert_int_eq(sem_post(&g.release), 0);
	ck_assert(loop_until(&done_total, 1));
	ck_assert_int_eq(owned_done_calls, 1);
	ck_assert_int_eq(owned_status, JOB_OK);
	ck_assert(owned_saw_abandoned);
	jobs_free(pool);
	ck_assert_int_eq(owned_done_calls, 1);
	gate_destroy(&g);
}
END_TEST

START_TEST(test_jobs_abandoned_after_finishing_keep_their_status)
{
	struct job_pool *pool = jobs_create(base, 1, 8, NULL, NULL, NULL);
	struct owned_op *op;

	ck_assert_ptr_nonnull(pool);
	op = owned_new(NULL);
	ck_assert_int_eq(jobs_submit(pool, &op->job), 0);
	ck_assert(wait_idle(pool)); /* finished, done() not yet run */
	jobs_abandon(&op->job);
	op = NULL;
	ck_assert(loop_until(&done_total, 1));
	ck_assert_int_eq(owned_done_calls, 1);
	ck_assert_int_eq(owned_status, JOB_OK);
	ck_assert(owned_saw_abandoned);
	jobs_free(pool);
	ck_assert_int_eq(owned_done_calls, 1);
}
END_TEST

#define NPOOL 3
static atomic_int init_calls[NPOOL], fini_calls[NPOOL], fini_saw_data[NPOOL];
static int slots[NPOOL];
static atomic_int work_saw_data, work_bad_index;
static int init_fail_idx = -1;
static void *expected_ud = (void *)&slots;

static int pool_thread_init(void *ud, unsigned idx)
{
	if (ud != expected_ud || idx >= NPOOL)
		return -1;
	atomic_fetch_add(&init_calls[idx], 1);
	if ((int)idx == init_fail_idx) {
		errno = EMFILE;
		return -1;
	}
	return jobs_set_thread_data(&slots[idx]);
}

static void pool_thread_fini(void *ud, unsigned idx)
{
	if (ud != expected_ud || idx >= NPOOL)
		return;
	atomic_fetch_add(&fini_calls[idx], 1);
	if (jobs_thread_data() == &slots[idx])
		atomic_fetch_add(&fini_saw_data[idx], 1);
}

static void data_work(struct job *job)
{
	unsigned idx = jobs_thread_index();

	(void)job;
	if (idx >= NPOOL)
		atomic_fetch_add(&work_bad_index, 1);
	else if (jobs_thread_data() == &slots[idx])
		atomic_fetch_add(&work_saw_data, 1);
}

static void reset_pool_counters(int fail_idx)
{
	for (int i = 0; i < NPOOL; i++) {
		atomic_store(&init_calls[i], 0);
		atomic_store(&fini_calls[i], 0);
		atomic_store(&fini_saw_data[i], 0);
	}
	atomic_store(&work_saw_data, 0);
	atomic_store(&work_bad_index, 0);
	init_fail_idx = fail_idx;
}

START_TEST(test_jobs_thread_init_and_fini_run_once_per_thread_with_its_data)
{
	struct tjob jobs[30];
	struct job_pool *pool;

	reset_pool_counters(-1);
	pool = jobs_create(base, NPOOL, 64, pool_thread_init, pool_thread_fini, expected_ud);
	ck_assert_ptr_nonnull(pool);
	for (int i = 0; i < NPOOL; i++)
		ck_assert_int_eq(atomic_load(&init_calls[i]), 1); /* all ran before create returned */
	for (int i = 0; i < 30; i++) {
		tjob_init(&jobs[i], NULL);
		jobs[i].job.work = data_work;
		ck_assert_int_eq(jobs_submit(pool, &jobs[i].job), 0);
	}
	ck_assert(loop_until(&done_total, 30));
	ck_assert_int_eq(atomic_load(&work_saw_data), 30);
	ck_assert_int_eq(atomic_load(&work_bad_index), 0);
	/* The loop thread is not a pool thread. */
	ck_assert_uint_eq(jobs_thread_index(), JOBS_NOT_A_POOL_THREAD);
	ck_assert_ptr_null(jobs_thread_data());
	errno = 0;
	ck_assert_int_eq(jobs_set_thread_data(&slots[0]), -1);
	ck_assert_int_eq(errno, EPERM);
	jobs_free(pool);
	for (int i = 0; i < NPOOL; i++) {
		ck_assert_int_eq(atomic_load(&init_calls[i]), 1);
		ck_assert_int_eq(atomic_load(&fini_calls[i]), 1);
		ck_assert_int_eq(atomic_load(&fini_saw_data[i]), 1);
	}
}
END_TEST

START_TEST(test_jobs_create_fails_cleanly_when_a_thread_init_fails)
{
	struct job_pool *pool;

	reset_pool_counters(1);
	errno = 0;
	pool = jobs_create(base, NPOOL, 64, pool_thread_init, pool_thread_fini, expected_ud);
	ck_assert_ptr_null(pool);
	ck_assert_int_eq(errno, EMFILE);
	for (int i = 0; i < NPOOL; i++) {
		ck_assert_int_eq(atomic_load(&init_calls[i]), 1);
		ck_assert_int_eq(atomic_load(&fini_calls[i]), i == 1 ? 0 : 1);
	}
	errno = 0;
	ck_assert_ptr_null(jobs_create(base, 0, 8, NULL, NULL, NULL));
	ck_assert_int_eq(errno, EINVAL);
	errno = 0;
	ck_assert_ptr_null(jobs_create(base, 2, 0, NULL, NULL, NULL));
	ck_assert_int_eq(errno, EINVAL);
}
END_TEST

START_TEST(test_jobs_submit_rejects_a_job_without_callbacks)
{
	struct tjob t;
	struct job_pool *pool = jobs_create(base, 1, 8, NULL, NULL, NULL);

	ck_assert_ptr_nonnull(pool);
	tjob_init(&t, NULL);
	t.job.done = NULL;
	errno = 0;
	ck_assert_int_eq(jobs_submit(pool, &t.job), -1);
	ck_assert_int_eq(errno, EINVAL);
	jobs_free(pool);
	ck_assert_int_eq(atomic_load(&t.work_runs), 0);
}
END_TEST

struct releaser {
	struct job_pool *pool;
	struct gate *gate;
	int nrelease;
};

/* Opens the gates only once jobs_free() has taken the queue away, so that no
 * queued job can sneak onto a thread first. */
static void *release_when_stopping(void *arg)
{
	struct releaser *r = arg;
	struct jobs_stats st;

	for (int i = 0; i < 10000; i++) {
		jobs_stats(r->pool, &st);
		if (st.queued == 0)
			break;
		sleep_ms(1);
	}
	for (int i = 0; i < r->nrelease; i++)
		sem_post(&r->gate->release);
	return NULL;
}

START_TEST(test_jobs_free_cancels_queued_and_finishes_running_jobs_once)
{
	struct gate g;
	struct tjob running[2], queued[5];
	struct job_pool *pool = jobs_create(base, 2, 16, NULL, NULL, NULL);
	struct releaser r = {pool, &g, 2};
	pthread_t helper;

	ck_assert_ptr_nonnull(pool);
	gate_init(&g);
	for (int i = 0; i < 2; i++) {
		tjob_init(&running[i], &g);
		ck_assert_int_eq(jobs_submit(pool, &running[i].job), 0);
	}
	for (int i = 0; i < 2; i++)
		ck_assert_int_eq(sem_wait(&g.started), 0);
	for (int i = 0; i < 5; i++) {
		tjob_init(&queued[i], NULL);
		queued[i].job.slow = i % 2;
		queued[i].resubmit_in_done = true;
		queued[i].pool = pool;
		ck_assert_int_eq(jobs_submit(pool, &queued[i].job), 0);
	}
	ck_assert_int_eq(pthread_create(&helper, NULL, release_when_stopping, &r), 0);
	jobs_free(pool); /* returns only after every done() ran */
	ck_assert_int_eq(pthread_join(helper, NULL), 0);

	ck_assert_int_eq(done_total, 7);
	for (int i = 0; i < 2; i++) {
		ck_assert_int_eq(running[i].done_calls, 1);
		ck_assert_int_eq(running[i].status, JOB_OK);
		ck_assert(running[i].done_on_loop);
	}
	for (int i = 0; i < 5; i++) {
		ck_assert_int_eq(queued[i].done_calls, 1);
		ck_assert_int_eq(queued[i].status, JOB_CANCELLED);
		ck_assert_int_eq(atomic_load(&queued[i].work_runs), 0);
		ck_assert(queued[i].done_on_loop);
		ck_assert_int_eq(queued[i].resubmit_errno, ESHUTDOWN);
	}
	gate_destroy(&g);
}
END_TEST

START_TEST(test_jobs_slow_jobs_leave_a_thread_for_quick_ones)
{
	struct gate g;
	struct tjob slow1, slow2, quick;
	struct job_pool *pool = jobs_create(base, 2, 8, NULL, NULL, NULL);
	struct jobs_stats st;

	ck_assert_ptr_nonnull(pool);
	gate_init(&g);
	tjob_init(&slow1, &g);
	tjob_init(&slow2, &g);
	tjob_init(&quick, NULL);
	slow1.job.slow = slow2.job.slow = true;
	ck_assert_int_eq(jobs_submit(pool, &slow1.job), 0);
	ck_assert_int_eq(sem_wait(&g.started), 0);
	ck_assert_int_eq(jobs_submit(pool, &slow2.job), 0);
	ck_assert_int_eq(jobs_submit(pool, &quick.job), 0);
	ck_assert(loop_until(&done_total, 1));
	ck_assert_int_eq(quick.done_calls, 1);
	ck_assert_int_eq(quick.status, JOB_OK);
	/* One thread idles rather than take the second slow job (the quick job's
	 * thread may still be on its way back from completing it). */
	for (int i = 0; i < 10000; i++) {
		jobs_stats(pool, &st);
		if (st.running == 1)
			break;
		sleep_ms(1);
	}
	ck_assert_uint_eq(st.running, 1);
	ck_assert_uint_eq(st.running_slow, 1);
	ck_assert_uint_eq(st.queued, 1);
	ck_assert_int_eq(atomic_load(&slow2.work_runs), 0);

	ck_assert_int_eq(sem_post(&g.release), 0);
	ck_assert_int_eq(sem_wait(&g.started), 0); /* slow2 starts after slow1 */
	ck_assert_int_eq(sem_post(&g.release), 0);
	ck_assert(loop_until(&done_total, 3));
	ck_assert_int_eq(slow1.status, JOB_OK);
	ck_assert_int_eq(slow2.status, JOB_OK);
	jobs_free(pool);
	gate_destroy(&g);
}
END_TEST

START_TEST(test_jobs_read_lane_jobs_never_wait_behind_blocked_writes)
{
	struct gate g;
	struct tjob w1, w2, reads[6], slow;
	struct job_pool *pool = jobs_create_lanes(base, 2, 1, 16, NULL, NULL, NULL);

	ck_assert_ptr_nonnull(pool);
	ck_assert_int_eq(jobs_thread_lane(), -1);
	gate_init(&g);
	/* The only writer blocks; a second write queues behind it. */
	tjob_init(&w1, &g);
	tjob_init(&w2, NULL);
	ck_assert_int_eq(jobs_submit(pool, &w1.job), 0);
	ck_assert_int_eq(sem_wait(&g.started), 0);
	ck_assert_int_eq(jobs_submit(pool, &w2.job), 0);
	/* Reads (and a slow job) submitted after them all complete meanwhile. */
	for (int i = 0; i < 6; i++) {
		tjob_init(&reads[i], NULL);
		reads[i].job.lane = JOB_LANE_READ;
		ck_assert_int_eq(jobs_submit(pool, &reads[i].job), 0);
	}
	tjob_init(&slow, NULL);
	slow.job.slow = true; /* write lane by default, yet run by a reader */
	ck_assert_int_eq(jobs_submit(pool, &slow.job), 0);
	ck_assert(loop_until(&done_total, 7));
	for (int i = 0; i < 6; i++) {
		ck_assert_int_eq(reads[i].done_calls, 1);
		ck_assert_int_eq(atomic_load(&reads[i].ran_lane), JOB_LANE_READ);
	}
	ck_assert_int_eq(slow.done_calls, 1);
	ck_assert_int_eq(atomic_load(&slow.ran_lane), JOB_LANE_READ);
	ck_assert_int_eq(atomic_load(&slow.job_lane), JOB_LANE_WRITE); /* the job's own lane */
	ck_assert_int_eq(atomic_load(&reads[0].job_lane), JOB_LANE_READ);
	ck_assert_int_eq(jobs_job_lane(), -1);
	ck_assert_int_eq(w1.done_calls + w2.done_calls, 0);
	ck_assert_int_eq(atomic_load(&w2.work_runs), 0);

	ck_assert_int_eq(sem_post(&g.release), 0);
	ck_assert(loop_until(&done_total, 9));
	ck_assert_int_eq(w1.status, JOB_OK);
	ck_assert_int_eq(w2.status, JOB_OK);
	ck_assert_int_eq(atomic_load(&w1.ran_lane), JOB_LANE_WRITE);
	ck_assert_int_eq(atomic_load(&w2.ran_lane), JOB_LANE_WRITE);
	jobs_free(pool);
	gate_destroy(&g);
}
END_TEST

START_TEST(test_jobs_without_lanes_run_every_job_on_any_thread)
{
	struct tjob r, w;
	struct job_pool *pool = jobs_create(base, 1, 4, NULL, NULL, NULL);

	ck_assert_ptr_nonnull(pool);
	tjob_init(&r, NULL);
	tjob_init(&w, NULL);
	r.job.lane = JOB_LANE_READ;
	ck_assert_int_eq(jobs_submit(pool, &r.job), 0);
	ck_assert_int_eq(jobs_submit(pool, &w.job), 0);
	ck_assert(loop_until(&done_total, 2));
	/* The single thread may write, so it reports the write lane. */
	ck_assert_int_eq(atomic_load(&r.ran_lane), JOB_LANE_WRITE);
	ck_assert_int_eq(atomic_load(&w.ran_lane), JOB_LANE_WRITE);
	ck_assert_ptr_null(jobs_create_lanes(base, 0, 1, 4, NULL, NULL, NULL));
	ck_assert_int_eq(errno, EINVAL);
	jobs_free(pool);
}
END_TEST

static void sleepy_work(struct job *job)
{
	(void)job;
	sleep_ms(200);
}

static void on_ten_ms_timer(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	*(uint64_t *)arg = jobs_now_ms();
	done_total++;
}

START_TEST(test_jobs_slow_work_does_not_delay_loop_timers)
{
	struct tjob sleepy;
	struct job_pool *pool = jobs_create(base, 1, 8, NULL, NULL, NULL);
	struct timeval ten_ms = {0, 10000};
	uint64_t armed, fired = 0;
	struct event *timer;

	ck_assert_ptr_nonnull(pool);
	tjob_init(&sleepy, NULL);
	sleepy.job.work = sleepy_work;
	ck_assert_int_eq(jobs_submit(pool, &sleepy.job), 0);
	timer = evtimer_new(base, on_ten_ms_timer, &fired);
	ck_assert_ptr_nonnull(timer);
	armed = jobs_now_ms();
	ck_assert_int_eq(evtimer_add(timer, &ten_ms), 0);
	ck_assert(loop_until(&done_total, 1));
	ck_assert_uint_gt(fired, 0);
	ck_assert_uint_lt(fired - armed, 10 + 150);
	ck_assert(loop_until(&done_total, 2));
	ck_assert_int_eq(sleepy.status, JOB_OK);
	event_free(timer);
	jobs_free(pool);
}
END_TEST

static Suite *jobs_suite(void)
{
	Suite *s = suite_create("jobs");
	struct {
		const char *name;
		const TTest *test;
	} cases[] = {
	    {"run_1000_jobs", test_jobs_run_1000_jobs_off_loop_and_complete_each_once_on_loop},
	    {"batched_completions", test_jobs_deliver_completions_that_pile_up_in_one_wakeup},
	    {"queue_full", test_jobs_submit_fails_with_eagain_when_queue_is_full},
	    {"deadline", test_jobs_with_a_passed_deadline_expire_without_running_work},
	    {"abandon_before_start", test_jobs_abandoned_before_start_are_cancelled_without_running},
	    {"abandon_while_running", test_jobs_abandoned_while_running_still_get_done_once},
	    {"abandon_after_finish", test_jobs_abandoned_after_finishing_keep_their_status},
	    {"thread_init_fini", test_jobs_thread_init_and_fini_run_once_per_thread_with_its_data},
	    {"thread_init_failure", test_jobs_create_fails_cleanly_when_a_thread_init_fails},
	    {"invalid_job", test_jobs_submit_rejects_a_job_without_callbacks},
	    {"free_in_flight", test_jobs_free_cancels_queued_and_finishes_running_jobs_once},
	    {"slow_limit", test_jobs_slow_jobs_leave_a_thread_for_quick_ones},
	    {"lanes", test_jobs_read_lane_jobs_never_wait_behind_blocked_writes},
	    {"no_lanes", test_jobs_without_lanes_run_every_job_on_any_thread},
	    {"loop_latency", test_jobs_slow_work_does_not_delay_loop_timers},
	};

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		TCase *tc = tcase_create(cases[i].name);

		tcase_add_checked_fixture(tc, setup, teardown);
		tcase_set_timeout(tc, 60);
		tcase_add_test(tc, cases[i].test);
		suite_add_tcase(s, tc);
	}
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(jobs_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
