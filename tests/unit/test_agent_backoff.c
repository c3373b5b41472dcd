/* test_agent_backoff.c — retry delays: exponential, jittered, capped, Retry-After. */
#include <criterion/criterion.h>

#include "jobvisor/backoff.h"

Test(backoff, doubles_from_base_up_to_max_within_jitter)
{
	struct backoff b;
	backoff_init(&b, 1000, 60000);
	int64_t expect = 1000;
	for (int i = 0; i < 10; i++) {
		int64_t lo = backoff_next(&b, -1, 0);         /* rnd 0 -> lower edge */
		b.failures--;
		int64_t hi = backoff_next(&b, -1, UINT64_MAX); /* upper edge (mod) */
		cr_assert_geq(lo, expect / 2, "step %d: %lld", i, (long long)lo);
		cr_assert_leq(hi, expect, "step %d: %lld", i, (long long)hi);
		expect = expect * 2 > 60000 ? 60000 : expect * 2;
	}
	cr_assert_eq(b.failures, 10);
}

Test(backoff, reset_starts_over)
{
	struct backoff b;
	backoff_init(&b, 500, 10000);
	for (int i = 0; i < 6; i++)
		backoff_next(&b, -1, 12345);
	backoff_reset(&b);
	cr_assert_leq(backoff_next(&b, -1, 999999), 500);
}

Test(backoff, retry_after_is_a_floor)
{
	struct backoff b;
	backoff_init(&b, 1000, 60000);
	int64_t d = backoff_next(&b, 7000, 0);
	cr_assert_geq(d, 7000);
	cr_assert_leq(d, 7700);
}

Test(backoff, hostile_retry_after_is_capped)
{
	struct backoff b;
	backoff_init(&b, 1000, 60000);
	int64_t d = backoff_next(&b, 86400LL * 1000 * 365, UINT64_MAX);
	cr_assert_leq(d, BACKOFF_RETRY_AFTER_CAP_MS + BACKOFF_RETRY_AFTER_CAP_MS / 10);
}

Test(backoff, jitter_spreads_agents)
{
	struct backoff a, b;
	backoff_init(&a, 1000, 60000);
	backoff_init(&b, 1000, 60000);
	for (int i = 0; i < 4; i++) {
		backoff_next(&a, -1, 1);
		backoff_next(&b, -1, 2);
	}
	cr_assert_neq(backoff_next(&a, -1, 17), backoff_next(&b, -1, 4000));
}
