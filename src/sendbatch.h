/* sendbatch.h - many non-blocking socket writes in one system call.
 *
 * A WebSocket broadcast writes the same small frame to hundreds of
 * sockets in one loop iteration. With one sendmsg() each, the system
 * call's entry and exit is a large share of the cost per delivery (about
 * 1 µs per call on a virtual machine, where the TCP work itself is 4-5 µs).
 * A batch collects those writes as io_uring send requests and issues all
 * of them with one io_uring_enter(); every request carries MSG_DONTWAIT,
 * so the kernel completes each one inline (bytes written, or -EAGAIN when
 * the socket buffer is full) and the call never waits on a socket.
 *
 * sendbatch_new() fails where io_uring cannot be used (an old kernel,
 * io_uring disabled by sysctl or a seccomp filter, too little locked
 * memory); callers then keep writing with sendmsg(). A batch belongs to
 * one thread; it is created after fork and never crosses one.
 */
#ifndef RESIL_SENDBATCH_H
#define RESIL_SENDBATCH_H

#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

#define SENDBATCH_IOV 8 /* buffers one request may gather */

struct sendbatch;

/* A batch of up to `entries` requests (rounded up to a power of two,
 * at most 4096). NULL with errno set when io_uring is not available. */
struct sendbatch *sendbatch_new(unsigned entries);
void sendbatch_free(struct sendbatch *b);

/* The buffers of the next request: up to SENDBATCH_IOV iovecs to fill in,
 * then sendbatch_add() with how many were used. NULL when the batch is
 * full (call sendbatch_run() first). */
struct iovec *sendbatch_iov(struct sendbatch *b);
/* Queue a write of the iovecs just filled to fd; ud comes back in done. */
void sendbatch_add(struct sendbatch *b, int fd, unsigned niov, void *ud);
unsigned sendbatch_count(const struct sendbatch *b);

/* Issue every queued request and call done(ud, result, arg) once for each,
 * in the order they were added: result is the bytes written, -errno, or
 * -ECANCELED for a request that was never issued (write it another way).
 * The batch is empty afterwards. Returns 0, or -1 with errno when the ring
 * itself failed: done() has still run for every request, and the batch
 * should be freed. */
int sendbatch_run(struct sendbatch *b, void (*done)(void *ud, ssize_t result, void *arg), void *arg);

#endif
