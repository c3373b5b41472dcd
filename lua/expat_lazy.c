/* expat_lazy.c — libexpat, loaded on first use.
 *
 * Only the S3 client (s3.c) parses XML, and only job runs that talk to a
 * remote do that; like libcurl, libarchive and libcrypto, libexpat is opened
 * on the first parser instead of being mapped and relocated at every exec of
 * jobvisor. This file defines the few expat functions s3.c uses and forwards
 * each to the real one; when the library cannot be loaded XML_ParserCreate
 * returns NULL, which s3.c reports. Only the job-run's main thread and the
 * remote.verify pump parse, never at the same time as a first load, but the
 * load is under pthread_once anyway. */
#include <expat.h>

#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>

#define EXPAT_SONAME "libexpat.so.1"

static struct {
	XML_Parser (*create)(const XML_Char *);
	void (*free_)(XML_Parser);
	void (*set_user_data)(XML_Parser, void *);
	void (*set_element_handler)(XML_Parser, XML_StartElementHandler, XML_EndElementHandler);
	void (*set_character_data_handler)(XML_Parser, XML_CharacterDataHandler);
	enum XML_Status (*parse)(XML_Parser, const char *, int, int);
} fn;

static pthread_once_t once = PTHREAD_ONCE_INIT;

static void load(void)
{
	void *lib = dlopen(EXPAT_SONAME, RTLD_NOW | RTLD_LOCAL);
	if (!lib)
		return;
	*(void **)&fn.free_ = dlsym(lib, "XML_ParserFree");
	*(void **)&fn.set_user_data = dlsym(lib, "XML_SetUserData");
	*(void **)&fn.set_element_handler = dlsym(lib, "XML_SetElementHandler");
	*(void **)&fn.set_character_data_handler = dlsym(lib, "XML_SetCharacterDataHandler");
	*(void **)&fn.parse = dlsym(lib, "XML_Parse");
	/* Last, and only when everything else is there: the gate the others rely on. */
	if (fn.free_ && fn.set_user_data && fn.set_element_handler && fn.set_character_data_handler &&
	    fn.parse)
		*(void **)&fn.create = dlsym(lib, "XML_ParserCreate");
}

XML_Parser XML_ParserCreate(const XML_Char *encoding)
{
	pthread_once(&once, load);
	return fn.create ? fn.create(encoding) : NULL;
}

/* The others are only reached with a parser from XML_ParserCreate. */
void XML_ParserFree(XML_Parser p)
{
	if (p && fn.free_)
		fn.free_(p);
}

void XML_SetUserData(XML_Parser p, void *data)
{
	fn.set_user_data(p, data);
}

void XML_SetElementHandler(XML_Parser p, XML_StartElementHandler start, XML_EndElementHandler end)
{
	fn.set_element_handler(p, start, end);
}

void XML_SetCharacterDataHandler(XML_Parser p, XML_CharacterDataHandler h)
{
	fn.set_character_data_handler(p, h);
}

enum XML_Status XML_Parse(XML_Parser p, const char *s, int len, int is_final)
{
	return fn.parse(p, s, len, is_final);
}
