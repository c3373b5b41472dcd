/* execpipe.c — a child's failure before exec, through a CLOEXEC pipe (execpipe.h). */
#include "jobvisor/execpipe.h"

#include <errno.h>
#include <sys/wait.h>
#include <unistd.h>

struct exec_fail {
	int stage;
	int err;
};

void jv_exec_fail(int fd, int stage, int err)
{
	struct exec_fail f = {stage, err};
	(void)!write(fd, &f, sizeof(f));
	_exit(127);
}

int jv_exec_wait(int fd, pid_t pid, int *stage, int *err)
{
	struct exec_fail f;
	ssize_t n;
	do {
		n = read(fd, &f, sizeof(f));
	} while (n < 0 && errno == EINTR);
	if (n != (ssize_t)sizeof(f))
		return 0; /* EOF: exec closed the pipe */
	while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
		;
	*stage = f.stage;
	*err = f.err;
	return 1;
}
