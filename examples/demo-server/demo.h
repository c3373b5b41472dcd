/* demo.h — shared pieces of the demo game server: console output and the world.
 *
 * The demo server is a stand-in for a real dedicated server (think Minecraft,
 * Valheim, Factorio headless): it prints timestamped console lines, keeps a
 * world directory that changes while it runs, and saves it on demand. */
#ifndef DEMO_H
#define DEMO_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>

/* Console output: "[HH:MM:SS INFO]: message", line-buffered on stdout. */
void demo_say(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

struct demo_world {
	char dir[PATH_MAX]; /* relative to the server's cwd, e.g. "world" */
	char name[64];
	uint64_t seed;
	uint64_t ticks;    /* game time; advances while the server runs */
	unsigned saves;    /* how many times the world was written */
	bool autosave_off; /* save-off in effect */
};

/* Create or load the world in dir and take its session.lock. Returns 0 or -errno. */
int demo_world_open(struct demo_world *w, const char *dir);
/* Write level.dat, players.dat and the region files (each via temp + rename). */
int demo_world_save(struct demo_world *w);
/* Drop session.lock (the world stays). */
void demo_world_close(struct demo_world *w);

#endif
