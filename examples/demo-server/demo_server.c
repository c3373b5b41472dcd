/* demo_server.c — a small dedicated game server for tests, benchmarks and the demo.
 *
 * It behaves like the real thing where a supervisor can tell: it binds a TCP
 * and a UDP port (TCP answers one status line per connection, UDP answers
 * "pong"), prints a ready line `Done (1.234s)! For help, type "help"` after a
 * configurable delay, reads console commands on stdin, autosaves its world
 * under the working directory, saves and exits 0 on `stop` or SIGTERM/SIGINT,
 * and can misbehave on request (crash, exit with a code, hang ignoring
 * SIGTERM, fork children, including double-forked ones that leave the process
 * group). Like a JVM it ignores SIGPIPE and keeps running when stdin closes.
 *
 * One poll loop with signalfd; signal handlers do no work. */
#include "demo.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define VERSION "1.4"

struct opts {
	const char *bind;
	int port;
	long ready_delay_ms;
	long autosave_ms;
	long exit_after_ms; /* < 0: never */
	int exit_code;
	long stop_delay_ms;
	const char *world;
	bool fork_child;
	bool fork_daemon;
};

struct server {
	struct opts o;
	struct demo_world world;
	uint64_t ticks_base;
	int tcp, udp, sigfd;
	int port;
	bool stdin_open;
	bool ready;
	bool stopping;
	int64_t t0, ready_at, next_save, exit_at, stop_at;
	char in[4096];
	size_t inlen;
};

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void demo_say(const char *level, const char *fmt, ...)
{
	time_t t = time(NULL);
	struct tm tm;
	localtime_r(&t, &tm);
	printf("[%02d:%02d:%02d %s]: ", tm.tm_hour, tm.tm_min, tm.tm_sec, level);
	va_list ap;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

static int usage(void)
{
	fprintf(stderr,
	        "usage: demo-server [--port N] [--bind ADDR] [--ready-delay-ms N] [--autosave-ms N]\n"
	        "                   [--world DIR] [--exit-after-ms N [--exit-code C]]\n"
	        "                   [--stop-delay-ms N] [--fork-child] [--fork-daemon]\n");
	return 2;
}

static bool parse_long(const char *s, long min, long max, long *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max)
		return false;
	*out = v;
	return true;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
	*o = (struct opts){.bind = "127.0.0.1", .port = 30000, .ready_delay_ms = 500,
	                   .autosave_ms = 10000, .exit_after_ms = -1, .exit_code = 1,
	                   .world = "world"};
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		long n;
		if (strcmp(a, "--fork-child") == 0) {
			o->fork_child = true;
			continue;
		}
		if (strcmp(a, "--fork-daemon") == 0) {
			o->fork_daemon = true;
			continue;
		}
		if (!v)
			return -1;
		i++;
		if (strcmp(a, "--port") == 0 && parse_long(v, 0, 65535, &n))
			o->port = (int)n;
		else if (strcmp(a, "--bind") == 0)
			o->bind = v;
		else if (strcmp(a, "--ready-delay-ms") == 0 && parse_long(v, 0, 86400000, &n))
			o->ready_delay_ms = n;
		else if (strcmp(a, "--autosave-ms") == 0 && parse_long(v, 0, 86400000, &n))
			o->autosave_ms = n;
		else if (strcmp(a, "--exit-after-ms") == 0 && parse_long(v, 0, 86400000, &n))
			o->exit_after_ms = n;
		else if (strcmp(a, "--exit-code") == 0 && parse_long(v, 0, 255, &n))
			o->exit_code = (int)n;
		else if (strcmp(a, "--stop-delay-ms") == 0 && parse_long(v, 0, 86400000, &n))
			o->stop_delay_ms = n;
		else if (strcmp(a, "--world") == 0 && *v)
			o->world = v;
		else
			return -1;
	}
	return 0;
}

/* TCP and UDP on the same port number, as game servers do. With port 0 the
 * kernel picks the TCP port; if that number is taken for UDP, try again. */
static int bind_ports(struct server *s)
{
	struct sockaddr_in sa = {.sin_family = AF_INET};
	if (inet_pton(AF_INET, s->o.bind, &sa.sin_addr) != 1) {
		demo_say("ERROR", "invalid bind address '%s'", s->o.bind);
		return -1;
	}
	for (int attempt = 0; attempt < 20; attempt++) {
		s->tcp = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		s->udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (s->tcp < 0 || s->udp < 0)
			return -1;
		int one = 1;
		setsockopt(s->tcp, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		sa.sin_port = htons((uint16_t)s->o.port);
		if (bind(s->tcp, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(s->tcp, 16) < 0) {
			demo_say("ERROR", "**** FAILED TO BIND TO PORT %d (tcp): %s", s->o.port,
			         strerror(errno));
			return -1;
		}
		socklen_t len = sizeof(sa);
		getsockname(s->tcp, (struct sockaddr *)&sa, &len);
		if (bind(s->udp, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
			s->port = ntohs(sa.sin_port);
			return 0;
		}
		int err = errno;
		close(s->tcp);
		close(s->udp);
		if (s->o.port != 0 || err != EADDRINUSE) {
			demo_say("ERROR", "**** FAILED TO BIND TO PORT %d (udp): %s", s->o.port,
			         strerror(err));
			return -1;
		}
		sa.sin_port = 0;
	}
	demo_say("ERROR", "**** FAILED TO BIND TO PORT: no free tcp+udp pair");
	return -1;
}

/* A child that only sleeps. daemon: double fork + setsid, so it leaves our
 * process group and is reparented when its parent exits (the case a
 * supervisor misses if it only signals the group). stubborn: ignores SIGTERM. */
static void spawn_child(struct server *s, bool daemon, bool stubborn)
{
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0) {
		demo_say("ERROR", "fork failed: %s", strerror(errno));
		return;
	}
	if (pid > 0) {
		if (daemon)
			waitpid(pid, NULL, 0); /* the intermediate exits at once */
		else
			demo_say("INFO", "Forked child pid %ld", (long)pid);
		return;
	}
	close(s->tcp);
	close(s->udp);
	close(s->sigfd);
	if (daemon) {
		setsid();
		if (fork() != 0)
			_exit(0);
		demo_say("INFO", "Forked daemon pid %ld", (long)getpid());
	}
	prctl(PR_SET_NAME, "demo-child");
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	signal(SIGTERM, stubborn ? SIG_IGN : SIG_DFL);
	for (;;)
		pause();
}

static void save(struct server *s, const char *why)
{
	s->world.ticks = s->ticks_base + (uint64_t)(now_ms() - s->t0) / 50;
	int rc = demo_world_save(&s->world);
	if (rc)
		demo_say("ERROR", "Could not save the world (%s): %s", why, strerror(-rc));
	else
		demo_say("INFO", "Saved the game (%s, tick %llu)", why,
		         (unsigned long long)s->world.ticks);
}

static void begin_stop(struct server *s, const char *why)
{
	if (s->stopping)
		return;
	s->stopping = true;
	demo_say("INFO", "Stopping the server (%s)", why);
	demo_say("INFO", "Saving worlds");
	s->stop_at = now_ms() + s->o.stop_delay_ms;
}

/* Never returns: SIGTERM/SIGINT are ignored, the console is no longer read;
 * only SIGKILL ends it. */
static void hang(struct server *s)
{
	demo_say("WARN", "Server thread is hanging (ignoring SIGTERM)");
	signal(SIGTERM, SIG_IGN);
	signal(SIGINT, SIG_IGN);
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	for (;;)
		pause();
}

static void command(struct server *s, char *line)
{
	while (*line == ' ' || *line == '/')
		line++;
	size_t n = strlen(line);
	while (n > 0 && (line[n - 1] == ' ' || line[n - 1] == '\r'))
		line[--n] = '\0';
	if (n == 0)
		return;
	char *arg = strchr(line, ' ');
	if (arg)
		*arg++ = '\0';
	else
		arg = line + n;
	long v;
	if (strcmp(line, "help") == 0) {
		demo_say("INFO", "commands: help list stop save-all save-off save-on say <text> "
		                 "crash [segv] exit <code> hang fork [daemon] [stubborn] spam <n> "
		                 "alloc <MiB>");
	} else if (strcmp(line, "stop") == 0) {
		begin_stop(s, "console");
	} else if (strcmp(line, "save-all") == 0) {
		save(s, "save-all");
	} else if (strcmp(line, "save-off") == 0) {
		s->world.autosave_off = true;
		demo_say("INFO", "Automatic saving is now disabled");
	} else if (strcmp(line, "save-on") == 0) {
		s->world.autosave_off = false;
		demo_say("INFO", "Automatic saving is now enabled");
	} else if (strcmp(line, "say") == 0) {
		demo_say("INFO", "[Server] %s", arg);
	} else if (strcmp(line, "list") == 0) {
		demo_say("INFO", "There are 0 of a max of 20 players online");
	} else if (strcmp(line, "crash") == 0) {
		demo_say("ERROR", "Encountered an unexpected exception (crash requested)");
		if (strcmp(arg, "segv") == 0) {
			signal(SIGSEGV, SIG_DFL);
			raise(SIGSEGV);
		}
		exit(1);
	} else if (strcmp(line, "exit") == 0 && parse_long(arg, 0, 255, &v)) {
		demo_say("INFO", "Exiting with status %ld without saving", v);
		exit((int)v);
	} else if (strcmp(line, "hang") == 0) {
		hang(s);
	} else if (strcmp(line, "fork") == 0) {
		spawn_child(s, strstr(arg, "daemon") != NULL, strstr(arg, "stubborn") != NULL);
	} else if (strcmp(line, "alloc") == 0 && parse_long(arg, 1, 1 << 20, &v)) {
		/* Touch every page so the memory is really resident (OOM tests). */
		demo_say("INFO", "Allocating %ld MiB", v);
		for (long i = 0; i < v; i++) {
			char *p = malloc(1 << 20);
			if (!p)
				break;
			memset(p, 1, 1 << 20);
		}
		demo_say("INFO", "Allocated %ld MiB", v);
	} else if (strcmp(line, "spam") == 0 && parse_long(arg, 0, 10000000, &v)) {
		for (long i = 0; i < v; i++)
			printf("spam line %ld of %ld: the quick brown fox jumps over the lazy dog\n", i + 1,
			       v);
		fflush(stdout);
		demo_say("INFO", "Spammed %ld lines", v);
	} else {
		demo_say("INFO", "Unknown command '%s'. Type \"help\" for help.", line);
	}
}

static void read_console(struct server *s)
{
	ssize_t r = read(STDIN_FILENO, s->in + s->inlen, sizeof(s->in) - 1 - s->inlen);
	if (r < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (r <= 0) {
		/* Real servers keep running without a console. */
		s->stdin_open = false;
		return;
	}
	s->inlen += (size_t)r;
	char *start = s->in;
	char *nl;
	while (!s->stopping && (nl = memchr(start, '\n', s->inlen - (size_t)(start - s->in)))) {
		*nl = '\0';
		command(s, start);
		start = nl + 1;
	}
	s->inlen -= (size_t)(start - s->in);
	memmove(s->in, start, s->inlen);
	if (s->inlen == sizeof(s->in) - 1)
		s->inlen = 0; /* an over-long line is dropped */
}

static void serve_tcp(struct server *s)
{
	int c = accept4(s->tcp, NULL, NULL, SOCK_CLOEXEC);
	if (c < 0)
		return;
	char msg[128];
	int n = snprintf(msg, sizeof(msg), "demo-server %s ready=%d ticks=%llu players=0\n", VERSION,
	                 s->ready, (unsigned long long)(s->ticks_base + (uint64_t)(now_ms() - s->t0) / 50));
	(void)!write(c, msg, (size_t)n);
	close(c);
}

static void serve_udp(struct server *s)
{
	char buf[512];
	struct sockaddr_in from;
	socklen_t len = sizeof(from);
	ssize_t r = recvfrom(s->udp, buf, sizeof(buf), 0, (struct sockaddr *)&from, &len);
	if (r < 0)
		return;
	static const char pong[] = "pong\n";
	sendto(s->udp, pong, sizeof(pong) - 1, 0, (struct sockaddr *)&from, len);
}

static void on_signal(struct server *s)
{
	struct signalfd_siginfo si;
	while (read(s->sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		if (si.ssi_signo == SIGCHLD) {
			while (waitpid(-1, NULL, WNOHANG) > 0) {
			}
		} else {
			begin_stop(s, si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
		}
	}
}

static int64_t min64(int64_t a, int64_t b)
{
	return a < 0 ? b : (b < 0 ? a : (a < b ? a : b));
}

int main(int argc, char **argv)
{
	struct server s = {.tcp = -1, .udp = -1, .stdin_open = true, .next_save = -1,
	                   .exit_at = -1, .stop_at = -1};
	if (parse_args(argc, argv, &s.o) < 0)
		return usage();
	signal(SIGPIPE, SIG_IGN);
	s.t0 = now_ms();
	demo_say("INFO", "Starting demo-server version %s (pid %ld)", VERSION, (long)getpid());

	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGCHLD);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	s.sigfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	if (s.sigfd < 0)
		return 1;
	if (bind_ports(&s) < 0)
		return 1;
	demo_say("INFO", "Starting game server on %s:%d (tcp+udp)", s.o.bind, s.port);
	int rc = demo_world_open(&s.world, s.o.world);
	if (rc) {
		demo_say("ERROR", "cannot open world '%s': %s", s.o.world, strerror(-rc));
		return 1;
	}
	s.ticks_base = s.world.ticks;
	demo_say("INFO", "Preparing level \"%s\" (tick %llu)", s.o.world,
	         (unsigned long long)s.ticks_base);
	if (s.o.fork_child)
		spawn_child(&s, false, false);
	if (s.o.fork_daemon)
		spawn_child(&s, true, false);
	s.ready_at = s.t0 + s.o.ready_delay_ms;
	if (s.o.exit_after_ms >= 0)
		s.exit_at = s.t0 + s.o.exit_after_ms;

	for (;;) {
		int64_t now = now_ms();
		if (!s.ready && now >= s.ready_at) {
			s.ready = true;
			demo_say("INFO", "Done (%.3fs)! For help, type \"help\"", (double)(now - s.t0) / 1000.0);
			if (s.o.autosave_ms > 0)
				s.next_save = now + s.o.autosave_ms;
		}
		if (s.exit_at >= 0 && now >= s.exit_at) {
			demo_say("ERROR", "Exiting with status %d (--exit-after-ms)", s.o.exit_code);
			return s.o.exit_code;
		}
		if (s.next_save >= 0 && now >= s.next_save) {
			if (!s.world.autosave_off)
				save(&s, "autosave");
			s.next_save = now + s.o.autosave_ms;
		}
		if (s.stopping && now >= s.stop_at) {
			save(&s, "stop");
			demo_world_close(&s.world);
			demo_say("INFO", "Server stopped");
			return 0;
		}
		int64_t next = min64(s.ready ? -1 : s.ready_at, s.exit_at);
		next = min64(next, s.next_save);
		next = min64(next, s.stopping ? s.stop_at : -1);
		int timeout = next < 0 ? -1 : (int)(next - now > 0 ? next - now : 0);

		struct pollfd p[4] = {
			{.fd = s.sigfd, .events = POLLIN},
			{.fd = s.tcp, .events = POLLIN},
			{.fd = s.udp, .events = POLLIN},
			{.fd = s.stdin_open ? STDIN_FILENO : -1, .events = POLLIN},
		};
		if (poll(p, 4, timeout) < 0 && errno != EINTR)
			return 1;
		if (p[0].revents)
			on_signal(&s);
		if (p[1].revents & POLLIN)
			serve_tcp(&s);
		if (p[2].revents & POLLIN)
			serve_udp(&s);
		if (p[3].revents)
			read_console(&s);
	}
}
