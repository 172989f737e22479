/* handlers.h - route groups of the reference API. Each registers its
 * routes on the app and returns 0 or -1. */
#ifndef RESIL_HANDLERS_H
#define RESIL_HANDLERS_H

#include "app.h"

int health_routes(struct app *app);
/* Test-only routes; mounted only with RESIL_TEST_HOOKS=1 outside production. */
struct resil_config;
int testhooks_routes(struct app *app, const struct resil_config *cfg);

#endif
