/* proctitle.c - process titles (see proctitle.h). */
#include "proctitle.h"

#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

extern char **environ;

static char *area;
static size_t area_len;
/* The copied environment, owned for the life of the process. glibc may
 * reset environ at exit (__libc_freeres, run by valgrind), so keep our own
 * reference: the copy is reachable, not leaked. */
static char **env_copy __attribute__((used));

int proctitle_init(int argc, char **argv)
{
	if (argc < 1 || !argv[0])
		return -1;
	char *end = argv[0] + strlen(argv[0]);
	for (int i = 1; i < argc; i++)
		if (argv[i] == end + 1)
			end = argv[i] + strlen(argv[i]);
	/* Environment strings usually follow argv: move them to the heap. */
	size_t n = 0;
	while (environ[n])
		n++;
	char **newenv = calloc(n + 1, sizeof(*newenv));
	if (!newenv)
		return -1;
	for (size_t i = 0; i < n; i++) {
		if (environ[i] == end + 1)
			end = environ[i] + strlen(environ[i]);
		newenv[i] = strdup(environ[i]);
		if (!newenv[i]) {
			for (size_t k = 0; k < i; k++)
				free(newenv[k]);
			free(newenv);
			return -1;
		}
	}
	env_copy = newenv;
	environ = newenv;
	/* argv[1..] keep pointing into the area: copy them too. */
	for (int i = 1; i < argc; i++) {
		char *d = strdup(argv[i]);
		if (d)
			argv[i] = d; /* lives as long as the process */
	}
	area = argv[0];
	area_len = (size_t)(end - argv[0]);
	return 0;
}

void proctitle_set(const char *title)
{
	char comm[16];
	strncpy(comm, title, sizeof(comm) - 1);
	comm[sizeof(comm) - 1] = '\0';
	prctl(PR_SET_NAME, comm, 0, 0, 0);
	if (!area || area_len < 2)
		return;
	size_t n = strlen(title);
	if (n >= area_len)
		n = area_len - 1;
	memcpy(area, title, n);
	memset(area + n, 0, area_len - n);
}

void proctitle_unsetenv(const char *name)
{
	size_t len = strlen(name);
	char *owned = NULL;
	if (env_copy && environ == env_copy)
		for (size_t i = 0; environ[i]; i++)
			if (strncmp(environ[i], name, len) == 0 && environ[i][len] == '=') {
				owned = environ[i]; /* our strdup'd copy: unsetenv forgets it */
				break;
			}
	unsetenv(name);
	free(owned);
}
