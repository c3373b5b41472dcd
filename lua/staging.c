/* staging.c — removing a run's staging directory when the run completes.
 *
 * The confined file core does the work (fsx_staging_clean: beneath the
 * instance root, symlinks removed, never followed). */
#include "fsx.h"
#include "scriptdef.h"

void jv_staging_cleanup(struct jv_run_ctx *ctx)
{
	if (ctx->instance_fd < 0)
		return;
	struct fsx fx;
	fsx_init(&fx, ctx->instance_fd);
	fsx_staging_clean(&fx, ctx->run_id);
}
