/* ident.h — identifier checks shared by every layer.
 *
 * instanceId, backupId, buildId, mod names and marker names all match
 * ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ and are checked before any file is
 * touched. */
#ifndef JOBVISOR_IDENT_H
#define JOBVISOR_IDENT_H

#include <stdbool.h>

#define JV_IDENT_MAX 64

bool jv_ident_valid(const char *s);

/* Job types: ^[A-Z][A-Z0-9_]{0,63}$ (BACKUP_INSTANCE). */
bool jv_job_type_valid(const char *s);

/* Run and job ids coming from a control plane: 1..128 chars of [A-Za-z0-9._:-],
 * not starting with '.' (used in file names under runs/). */
bool jv_run_id_valid(const char *s);

#endif
