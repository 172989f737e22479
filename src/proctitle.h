/* proctitle.h - set the process title shown by ps ("resild: supervisor",
 * "resild: worker 3 (gen 2)"), nginx style: the argv area is reused after
 * the environment strings are moved to the heap. */
#ifndef RESIL_PROCTITLE_H
#define RESIL_PROCTITLE_H

/* Call once at the start of main() with main's argc/argv; later argv
 * strings may be overwritten, so copy what you need first (config_load
 * copies everything it keeps). 0 or -1. */
int proctitle_init(int argc, char **argv);
void proctitle_set(const char *title);
/* unsetenv(name), also freeing the copy proctitle_init() made of it. */
void proctitle_unsetenv(const char *name);

#endif
