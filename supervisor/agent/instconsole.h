/* instconsole.h — stream the consoles someone watches; run console commands.
 *
 * See instconsole.c. The control plane's watch list (poll answer
 * "consoleWatch": [{instanceId, since}]) decides which consoles stream; a
 * missing list means none. Commands arrive as "consoleCommands":
 * [{commandId, instanceId, line}], possibly more than once: each id is run
 * once (the ids run are kept in data_dir/runs/.console-commands). A 404 on
 * the console endpoint turns
 * consoles off for this run of the agent (logged once). */
#ifndef JOBVISOR_INSTCONSOLE_H
#define JOBVISOR_INSTCONSOLE_H

#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>

#include "agent.h"

#define INSTCONSOLE_MAX_FDS 200

int instconsole_start(struct agent *ag);
void instconsole_free(struct agent *ag); /* NULL-safe */

/* The watch list (borrowed; NULL = nothing watched). Returns how many
 * consoles started or stopped streaming. */
size_t instconsole_set_watch(struct agent *ag, const cJSON *watch);
/* Console commands from a poll answer (borrowed). Returns how many were run. */
size_t instconsole_commands(struct agent *ag, const cJSON *cmds);

size_t instconsole_pollfds(struct agent *ag, struct pollfd *fds, size_t max);
/* True when fd was one of ours. */
bool instconsole_on_fd(struct agent *ag, int fd, short revents);
int64_t instconsole_next_deadline(const struct agent *ag);
void instconsole_tick(struct agent *ag, int64_t now_ms);

#endif
