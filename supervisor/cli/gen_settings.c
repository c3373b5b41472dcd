/* gen_settings.c — build-time tool: print the agent's settings table.
 *
 * One line per setting, tab-separated: file key, environment name, default
 * ("-" for none), description. docs/man/generate.cmake turns it into
 * jobvisor.conf(5), so the man page comes from the same table config.c loads
 * and validates with (config_setting_info). Not installed. */
#include <stdio.h>

#include "jobvisor/config.h"

int main(void)
{
	for (size_t i = 0; i < config_setting_count(); i++) {
		const char *key, *env, *def, *help;
		config_setting_info(i, &key, &env, &def, &help);
		printf("%s\t%s\t%s\t%s\n", key, env, def ? def : "-", help);
	}
	return 0;
}
