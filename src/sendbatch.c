/* sendbatch.c - many non-blocking socket writes in one system call (see
 * sendbatch.h), on liburing.
 *
 * The ring is set up with IORING_SETUP_SUBMIT_ALL, so one request that
 * fails while being submitted (a closed descriptor) does not stop the
 * others; without that flag (kernels before 5.18) the batch is refused and
 * the caller writes with sendmsg(). Every request is a send or sendmsg with
 * MSG_DONTWAIT: it completes during the submitting call, and the run only
 * waits for completions of requests that are already in flight, so it can
 * never wait for a request that was not submitted.
 */
#include "autoconfig.h"

#include "sendbatch.h"

#include <errno.h>
#include <liburing.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define SEND_FLAGS (MSG_NOSIGNAL | MSG_DONTWAIT)

struct sendbatch {
	struct io_uring ring;
	unsigned cap, n;
	struct iovec *iov;    /* cap * SENDBATCH_IOV */
	struct msghdr *mh;    /* cap */
	int *fd;              /* cap */
	unsigned char *niov;  /* cap */
	void **ud;            /* cap */
	ssize_t *res;         /* cap */
	unsigned char *known; /* cap: res[i] is in */
};

/* The batch's memory, not its ring. */
static void release(struct sendbatch *b)
{
	free(b->iov);
	free(b->mh);
	free(b->fd);
	free(b->niov);
	free(b->ud);
	free(b->res);
	free(b->known);
	free(b);
}

struct sendbatch *sendbatch_new(unsigned entries)
{
	unsigned cap = 1;
	while (cap < entries && cap < 4096)
		cap <<= 1;
	struct sendbatch *b = calloc(1, sizeof(*b));
	if (!b)
		return NULL;
	b->cap = cap;
	b->iov = calloc((size_t)cap * SENDBATCH_IOV, sizeof(*b->iov));
	b->mh = calloc(cap, sizeof(*b->mh));
	b->fd = calloc(cap, sizeof(*b->fd));
	b->niov = calloc(cap, 1);
	b->ud = calloc(cap, sizeof(*b->ud));
	b->res = calloc(cap, sizeof(*b->res));
	b->known = calloc(cap, 1);
	int rc = -ENOMEM;
	if (b->iov && b->mh && b->fd && b->niov && b->ud && b->res && b->known) {
		/* COOP_TASKRUN (5.19) spares an interrupt per completion; older
		 * kernels refuse the flag, so try without it before giving up. */
		rc = io_uring_queue_init(cap, &b->ring, IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN);
		if (rc == -EINVAL)
			rc = io_uring_queue_init(cap, &b->ring, IORING_SETUP_SUBMIT_ALL);
	}
	if (rc < 0) {
		release(b);
		errno = -rc;
		return NULL;
	}
	return b;
}

void sendbatch_free(struct sendbatch *b)
{
	if (!b)
		return;
	io_uring_queue_exit(&b->ring);
	release(b);
}

struct iovec *sendbatch_iov(struct sendbatch *b)
{
	return b->n < b->cap ? b->iov + (size_t)b->n * SENDBATCH_IOV : NULL;
}

void sendbatch_add(struct sendbatch *b, int fd, unsigned niov, void *ud)
{
	unsigned i = b->n++;
	b->fd[i] = fd;
	b->niov[i] = (unsigned char)(niov < 1 ? 1 : niov > SENDBATCH_IOV ? SENDBATCH_IOV : niov);
	b->ud[i] = ud;
}

unsigned sendbatch_count(const struct sendbatch *b)
{
	return b->n;
}

/* Move every completion that is in into res[]; how many. */
static unsigned reap(struct sendbatch *b)
{
	struct io_uring_cqe *cqe;
	unsigned head, seen = 0;
	io_uring_for_each_cqe(&b->ring, head, cqe)
	{
		uint64_t i = cqe->user_data;
		if (i < b->n && !b->known[i]) {
			b->res[i] = cqe->res;
			b->known[i] = 1;
		}
		seen++;
	}
	io_uring_cq_advance(&b->ring, seen);
	return seen;
}

int sendbatch_run(struct sendbatch *b, void (*done)(void *ud, ssize_t result, void *arg), void *arg)
{
	unsigned n = b->n;
	int failed = 0, err = EIO;
	for (unsigned i = 0; i < n; i++) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(&b->ring);
		struct iovec *iov = b->iov + (size_t)i * SENDBATCH_IOV;
		b->known[i] = 0;
		if (!sqe) /* cannot happen (the ring holds cap entries, n <= cap): -ECANCELED */
			continue;
		if (b->niov[i] == 1) {
			io_uring_prep_send(sqe, b->fd[i], iov[0].iov_base, iov[0].iov_len, SEND_FLAGS);
		} else {
			b->mh[i] = (struct msghdr){.msg_iov = iov, .msg_iovlen = b->niov[i]};
			io_uring_prep_sendmsg(sqe, b->fd[i], &b->mh[i], SEND_FLAGS);
		}
		io_uring_sqe_set_data64(sqe, i);
	}
	/* Requests the kernel has taken; only those can complete. */
	unsigned inflight = 0, got = 0, stalls = 0;
	while (got < n) {
		if (io_uring_sq_ready(&b->ring)) {
			int rc = io_uring_submit(&b->ring);
			if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
				failed = 1;
				err = -rc;
				break;
			}
			if (rc > 0) {
				inflight += (unsigned)rc;
				stalls = 0;
			} else if (++stalls > 8) {
				failed = 1; /* the kernel keeps refusing: give up on the ring */
				err = rc < 0 ? -rc : EAGAIN;
				break;
			}
		}
		got += reap(b);
		if (got < inflight) {
			struct io_uring_cqe *cqe;
			int rc = io_uring_wait_cqe(&b->ring, &cqe);
			if (rc < 0 && rc != -EINTR && rc != -EAGAIN) {
				failed = 1;
				err = -rc;
				break;
			}
		} else if (!io_uring_sq_ready(&b->ring)) {
			break; /* everything taken has completed */
		}
	}
	if (failed) {
		/* The ring is unusable: wait out what is in flight (it refers to
		 * the caller's buffers) before they may be reused or freed. */
		struct io_uring_cqe *cqe;
		while (got < inflight && io_uring_wait_cqe(&b->ring, &cqe) == 0)
			got += reap(b);
	}
	b->n = 0;
	for (unsigned i = 0; i < n; i++)
		done(b->ud[i], b->known[i] ? b->res[i] : -ECANCELED, arg);
	if (failed) {
		errno = err;
		return -1;
	}
	return 0;
}
