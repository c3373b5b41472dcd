/* s3_stream.h — a multipart upload fed by a stream of bytes whose total is
 * not known in advance (an archive while it is being compressed).
 *
 * The writer (one thread: the caller of s3_stream_write and _finish) cuts the
 * bytes into parts of part_size (doubled every 2000 parts, see
 * s3_stream_part_size); `parallel` worker threads send them, each
 * with its Content-MD5 and ETag check (s3_mpu_part_mem). At most parallel + 1
 * parts are in memory at once (parallel in flight, one being filled); nothing
 * is written to disk. A write that finds every buffer busy waits for a part
 * to be acknowledged. Acknowledgements are handed to on_ack on the writer's
 * thread, in the order the store answered, so the caller can record them
 * durably (a marker) before more of the stream is produced.
 *
 * Resume: `prior` lists the parts an earlier attempt of the same upload id
 * had acknowledged. The stream is expected to be the same bytes again (an
 * archive made again from the same tree); a part whose size and MD5 equal the
 * prior one is not sent (on_ack gets it with sent = false), one that differs
 * fails the stream with -ESTALE: the data changed since, the upload id cannot
 * be completed with it, and the caller starts a new one. */
#ifndef JOBVISOR_S3_STREAM_H
#define JOBVISOR_S3_STREAM_H

#include <pthread.h>

#include "s3.h"

struct s3_stream_part {
	int n;
	uint64_t len;
	char etag[80];
	char md5[33]; /* hex; "" = unknown (then a 32-hex etag is taken as the MD5) */
	bool sent;    /* false: acknowledged by an earlier attempt, matched, not sent again */
};

struct s3_stream_opts {
	const struct s3_remote *r;
	const char *key, *upload_id;
	size_t part_size;  /* 5 MiB .. 5 GiB, as S3 requires of all parts but the last */
	int parallel;      /* 1..32 */
	const struct s3_stream_part *prior;
	size_t nprior;
	/* On the writer's thread, for each acknowledged part; a non-zero return
	 * stops the stream with that value. */
	int (*on_ack)(void *arg, const struct s3_stream_part *p);
	void *ack_arg;
	const struct jv_io_hooks *hooks; /* cancel, asked while the writer waits */
};

struct s3_stream;

/* 0, -EINVAL (bad options, err set), -ENOMEM. */
int s3_stream_open(const struct s3_stream_opts *o, struct s3_stream **out, struct s3_err *e);
/* Append bytes. 0, or the stream's failure (-ESTALE, a part's upload
 * failure, on_ack's value, -ECANCELED); s3_stream_error says why. */
int s3_stream_write(struct s3_stream *s, const void *buf, size_t n);
/* Send the last part and wait for every acknowledgement; *nparts gets the
 * number of parts of the stream. */
int s3_stream_finish(struct s3_stream *s, int *nparts);
const struct s3_err *s3_stream_error(const struct s3_stream *s);
/* Stop the workers (parts in flight are cut) and free everything. */
void s3_stream_close(struct s3_stream *s);

/* The size of part n of a stream whose first parts are base bytes: doubled
 * every 2000 parts (up to 5 GiB): 10,000 parts hold 62,000 * base bytes
 * (~970 GiB from 16 MiB). */
size_t s3_stream_part_size(size_t base, int n);

/* Wait on cv (mu held) for at most ms milliseconds: the upload pools' way to
 * look at a cancel request between acknowledgements. */
void s3_cond_wait_ms(pthread_cond_t *cv, pthread_mutex_t *mu, long ms);

#endif
