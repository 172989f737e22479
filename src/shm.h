/* shm.h - shared mappings that survive exec: a memfd mapped MAP_SHARED.
 *
 * The supervisor creates each table (scoreboard, rate limiter) once; a
 * worker that is exec'd from the binary on disk cannot inherit an
 * anonymous mapping, so it gets the memfd's descriptor and maps the same
 * pages again (shm_attach). The size is the memfd's size, so a reader can
 * tell a table built by another layout apart before touching it.
 */
#ifndef RESIL_SHM_H
#define RESIL_SHM_H

#include <stddef.h>

/* A zeroed shared mapping of bytes. *fd_out (may be NULL) receives the
 * memfd (close-on-exec; the caller clears the flag where a child must keep
 * it); with NULL it is closed at once. NULL with errno set on failure. */
void *shm_create(const char *name, size_t bytes, int *fd_out);

/* Map the whole memfd fd (left open). *bytes_out receives its size. NULL
 * with errno set on failure. */
void *shm_attach(int fd, size_t *bytes_out);

#endif
