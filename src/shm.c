/* shm.c - memfd-backed shared mappings (see shm.h). */
#include "autoconfig.h"

#include "shm.h"

#include <errno.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

void *shm_create(const char *name, size_t bytes, int *fd_out)
{
	int fd = memfd_create(name, MFD_CLOEXEC);
	if (fd < 0)
		return NULL;
	void *p = MAP_FAILED;
	if (ftruncate(fd, (off_t)bytes) == 0)
		p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	int e = errno;
	if (p == MAP_FAILED || !fd_out) {
		close(fd);
		fd = -1;
	}
	if (p == MAP_FAILED) {
		errno = e;
		return NULL;
	}
	if (fd_out)
		*fd_out = fd;
	return p;
}

void *shm_attach(int fd, size_t *bytes_out)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return NULL;
	if (st.st_size <= 0) {
		errno = EINVAL;
		return NULL;
	}
	void *p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		return NULL;
	*bytes_out = (size_t)st.st_size;
	return p;
}
