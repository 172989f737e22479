/* resild.c - main(): configuration, the listening socket (bound once,
 * before any fork), optional daemonisation, then the supervisor. */
#include "autoconfig.h"

#include "child.h"
#include "config.h"
#include "listen.h"
#include "log.h"
#include "proctitle.h"
#include "supervisor.h"

#include <fcntl.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Classic double fork; the parent exits 0 once the child is detached. */
static int daemonize(void)
{
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid > 0)
		_exit(0);
	if (setsid() < 0)
		return -1;
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid > 0)
		_exit(0);
	int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (fd >= 0) {
		dup2(fd, 0);
		dup2(fd, 1);
		dup2(fd, 2);
		if (fd > 2)
			close(fd);
	}
	return 0;
}

int main(int argc, char **argv)
{
	static struct resil_config cfg;
	char err[CONFIG_ERR_MAX];
	enum config_action action = CONFIG_RUN;

	/* libmongoc's counters would live in /dev/shm/mongoc-PID: a process
	 * killed with SIGKILL leaves its file, a later process given the same
	 * pid then warns on stderr in libmongoc's own format (not a JSON line)
	 * and every worker start (an exec) would add a file. resil exports no
	 * libmongoc counters: keep them in memory, here and in every process
	 * this one execs. */
	setenv("MONGOC_DISABLE_SHM", "1", 0);
	proctitle_init(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	if (sodium_init() < 0) {
		fprintf(stderr, "resild: libsodium initialisation failed\n");
		return 1;
	}
	if (getenv(CHILD_ENV))
		return child_exec_main(); /* a worker the supervisor exec'd (child.h) */
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
		config_print_effective(&cfg, stdout);
		fprintf(stderr, "resild: configuration %s is ok\n", cfg.config_file[0] ? cfg.config_file : "(no file)");
		return 0;
	}
	if (log_init(cfg.log_level, cfg.log_format == CONFIG_LOG_JSON, cfg.log_file[0] ? cfg.log_file : NULL, -1) < 0) {
		fprintf(stderr, "resild: log_file: cannot open %s\n", cfg.log_file);
		return 1;
	}
	if (cfg.jwt_secret_generated)
		log_warn(NULL,
		         "RESIL_JWT_SECRET is not set: using a random secret for this run (tokens will not survive a "
		         "restart)",
		         LF_STR("env", "development"));
	struct sup_handoff handoff;
	if (upgrade_handoff_parse(&handoff) < 0) {
		fprintf(stderr, "resild: %s is not an upgrade hand-off this binary understands\n", UPGRADE_ENV);
		return 1;
	}
	/* The new supervisor of a binary upgrade keeps the old one's socket
	 * (and its foreground/daemon state: it is already detached or not). */
	int fd = handoff.active ? handoff.listen_fd : listen_open(cfg.listen, 4096, err, sizeof(err));
	if (handoff.active)
		log_info(NULL, "binary upgrade: this supervisor takes over from the running one",
		         LF_INT("oldPid", handoff.old_pid));
	if (fd < 0) {
		log_error(NULL, err, LF_STR("listen", cfg.listen));
		fprintf(stderr, "resild: %s\n", err);
		return 1;
	}
	/* A daemon's stderr becomes /dev/null: say where the lines go while
	 * the operator can still read it. */
	if (handoff.active)
		cfg.foreground = 1;
	if (!cfg.foreground && cfg.log_file[0])
		log_info(NULL, "daemonizing: log lines go to log_file", LF_STR("logFile", cfg.log_file));
	else if (!cfg.foreground)
		log_warn(NULL,
		         "daemonizing without log_file: log lines after this one are discarded (set log_file, or run "
		         "with --foreground under a service manager)",
		         LF_STR("logTo", "/dev/null"));
	if (!cfg.foreground && daemonize() < 0) {
		fprintf(stderr, "resild: cannot daemonize\n");
		return 1;
	}
	int rc = supervisor_run(&cfg, argc, argv, fd, &handoff);
	close(fd);
	if (strncmp(cfg.listen, "unix:", 5) == 0 && !supervisor_handed_over())
		unlink(cfg.listen + 5);
	log_shutdown();
	return rc;
}
