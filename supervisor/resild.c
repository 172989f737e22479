/* resild.c - main(): configuration, the listening socket, then either the
 * supervisor (forking workers) or, with --workers 1 --foreground and no
 * supervisor, a single in-process worker. */
#include "autoconfig.h"

#include "config.h"
#include "listen.h"
#include "log.h"
#include "worker.h"

#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	static struct resil_config cfg;
	char err[CONFIG_ERR_MAX];
	enum config_action action = CONFIG_RUN;

	if (sodium_init() < 0) {
		fprintf(stderr, "resild: libsodium initialisation failed\n");
		return 1;
	}
	if (config_load(&cfg, argc, argv, &action, err, sizeof(err)) < 0) {
		fprintf(stderr, "resild: %s\n", err);
		return 1;
	}
	if (action == CONFIG_HELP) {
		config_print_help("resild");
		return 0;
	}
	if (action == CONFIG_VERSION) {
		printf("resild %s\n", PACKAGE_VERSION);
		return 0;
	}
	if (cfg.check_config) {
		printf("resild: configuration %s%s ok\n", cfg.config_file[0] ? cfg.config_file : "(defaults)",
		       "");
		return 0;
	}
	if (log_init(cfg.log_level, cfg.log_format == CONFIG_LOG_JSON, cfg.log_file[0] ? cfg.log_file : NULL, -1) < 0) {
		fprintf(stderr, "resild: log_file: cannot open %s\n", cfg.log_file);
		return 1;
	}
	if (cfg.jwt_secret_generated)
		log_warn(NULL, "RESIL_JWT_SECRET is not set: using a random secret for this run (tokens will not survive "
		               "a restart)",
		         LF_STR("env", "development"));
	int fd = listen_open(cfg.listen, 1024, err, sizeof(err));
	if (fd < 0) {
		log_error(NULL, err, LF_STR("listen", cfg.listen));
		return 1;
	}
	char where[600];
	if (listen_describe(fd, where, sizeof(where)) == 0)
		log_info(NULL, "listening", LF_STR("address", where));
	struct worker_opts wo = {.cfg = &cfg, .listen_fd = fd, .id = 0, .generation = 1, .sb = NULL, .ready_fd = -1};
	int rc = worker_run(&wo);
	close(fd);
	log_shutdown();
	return rc == WORKER_EXIT_FATAL ? 1 : rc;
}
