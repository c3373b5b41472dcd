/* math_lazy.c — libm, loaded on first use.
 *
 * Every exec of jobvisor mapped and relocated libm.so.6, which costs about
 * 0.09 ms of a 1.5 ms no-op job run on a VM (docs/performance.md), and most
 * runs never call a math function (a run that does pays the dlopen once).
 * The executables are linked without -lm and with -Wl,--wrap=NAME for the
 * functions below (CMakeLists.txt, JV_MATH_WRAPPED): every call of NAME in our
 * code and in the static Lua library becomes a call of __wrap_NAME here, which
 * loads libm on first use (thread-safe: the agent has threads) and forwards
 * to the real function, errno and all. A libm function not in the list fails
 * the link (undefined reference): add it to both lists. frexp and ldexp come
 * from libc itself. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#define MATH_SONAME "libm.so.6"

/* NAME(double) -> double */
#define JV_MATH_UNARY(X) \
	X(acos) X(asin) X(cos) X(cosh) X(exp) X(floor) X(log) X(log10) X(log2) X(round) \
	X(sin) X(sinh) X(sqrt) X(tan) X(tanh)
/* NAME(double, double) -> double */
#define JV_MATH_BINARY(X) X(atan2) X(fmod) X(pow)

#define SLOT1(n) double (*f_##n)(double);
#define SLOT2(n) double (*f_##n)(double, double);
static struct {
	JV_MATH_UNARY(SLOT1)
	JV_MATH_BINARY(SLOT2)
	long long (*f_llround)(double);
} m;

static pthread_once_t once = PTHREAD_ONCE_INIT;

/* libm is part of libc6: without it nothing can go on correctly. */
static void fatal(const char *what)
{
	fprintf(stderr, "jobvisor: cannot load %s: %s\n", MATH_SONAME, what);
	abort();
}

static void load(void)
{
	void *lib = dlopen(MATH_SONAME, RTLD_NOW | RTLD_LOCAL);
	if (!lib)
		fatal(dlerror());
#define LOAD(n) \
	if (!(*(void **)&m.f_##n = dlsym(lib, #n))) \
		fatal("no " #n);
	JV_MATH_UNARY(LOAD)
	JV_MATH_BINARY(LOAD)
	LOAD(llround)
}

#define WRAP1(n) \
	double __wrap_##n(double x); \
	double __wrap_##n(double x) \
	{ \
		pthread_once(&once, load); \
		return m.f_##n(x); \
	}
#define WRAP2(n) \
	double __wrap_##n(double x, double y); \
	double __wrap_##n(double x, double y) \
	{ \
		pthread_once(&once, load); \
		return m.f_##n(x, y); \
	}
JV_MATH_UNARY(WRAP1)
JV_MATH_BINARY(WRAP2)

long long __wrap_llround(double x);
long long __wrap_llround(double x)
{
	pthread_once(&once, load);
	return m.f_llround(x);
}
