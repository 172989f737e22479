/* routes.h - the reference API mounted on an app, and the per-process
 * worker state its handlers may read. */
#ifndef RESIL_ROUTES_H
#define RESIL_ROUTES_H

#include "app.h"
#include "config.h"

#include <time.h>

struct event_base;
struct http_server;
struct scoreboard;
struct sb_entry;

struct worker {
	const struct resil_config *cfg;
	struct event_base *base;
	struct http_server *http;
	struct app *app;
	struct scoreboard *sb;
	struct sb_entry *sbe; /* own scoreboard entry, NULL without supervisor */
	struct ratelimit *rl;
	struct event *log_flush_ev;
	struct event *heartbeat_ev;
	int bus_fd; /* broadcast bus end until chat_start() takes it; -1: none */
	int id;
	unsigned generation;
	int ready;
	int draining;
	int exit_code;
	time_t started;
};

/* The worker running in this process (one per process). */
struct worker *worker_current(void);
void worker_drain(struct worker *w);

/* Register middleware and routes on app. 0 or -1. */
int routes_register(struct app *app, struct worker *w);
/* Start/stop per-worker services the routes need (after the loop exists). */
int routes_start(struct worker *w);
void routes_stop(struct worker *w);

#endif
