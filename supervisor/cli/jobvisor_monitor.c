/* jobvisor_monitor.c — `jobvisor-monitor`, the instance monitor as its own executable.
 *
 * The same code as `jobvisor monitor` (supervisor/monitor/), in a binary that
 * links only libc and cJSON (jvmon + jvcore). A host runs one monitor per game server for
 * weeks, so each one should cost little memory and start fast; the main
 * jobvisor binary carries libcurl, libarchive, libcrypto and Lua (dozens of
 * shared libraries to map and relocate) that a monitor never uses.
 * instance_client.c launches this binary when it sits next to the running
 * jobvisor, and falls back to `jobvisor monitor` otherwise.
 */
#include "jobvisor/commands.h"

int main(int argc, char **argv)
{
	return cmd_monitor(argc, argv); /* argv[0] stands where the subcommand would */
}
