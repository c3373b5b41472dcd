/* store_pg_stub.c — store_pg_open when jobvisor-cp is built without
 * PostgreSQL support (libpq not found by CMake). */
#include "store_backend.h"

#include <errno.h>
#include <stdio.h>

int store_pg_open(const char *conninfo, const struct store_options *o, struct store **out, char *err, size_t errlen)
{
	(void)conninfo;
	(void)o;
	(void)out;
	snprintf(err, errlen, "this jobvisor-cp was built without PostgreSQL support (libpq); use a SQLite file path");
	return -ENOTSUP;
}
