/*
 * pushjobs-agent: building and reading the channel's JSON messages.
 */

#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_gen.h>

#include "pja.h"


static int
json_key(yajl_gen g, const char *key)
{
    return yajl_gen_string(g, (const unsigned char *) key, strlen(key))
           == yajl_gen_status_ok ? 0 : -1;
}


/* Starts {"type": TYPE, "v": 1, ...; the caller adds fields. */

yajl_gen
pja_json_begin(const char *type)
{
    yajl_gen  g;

    g = yajl_gen_alloc(NULL);
    if (g == NULL) {
        pja_log(PJA_LOG_ERR, "out of memory");
        return NULL;
    }

    if (yajl_gen_map_open(g) != yajl_gen_status_ok
        || pja_json_str(g, "type", type) != 0
        || pja_json_int(g, "v", 1) != 0)
    {
        yajl_gen_free(g);
        return NULL;
    }

    return g;
}


int
pja_json_str(yajl_gen g, const char *key, const char *val)
{
    if (json_key(g, key) != 0) {
        return -1;
    }

    return yajl_gen_string(g, (const unsigned char *) val, strlen(val))
           == yajl_gen_status_ok ? 0 : -1;
}


int
pja_json_int(yajl_gen g, const char *key, long long val)
{
    if (json_key(g, key) != 0) {
        return -1;
    }

    return yajl_gen_integer(g, val) == yajl_gen_status_ok ? 0 : -1;
}


int
pja_json_bool(yajl_gen g, const char *key, int val)
{
    if (json_key(g, key) != 0) {
        return -1;
    }

    return yajl_gen_bool(g, val) == yajl_gen_status_ok ? 0 : -1;
}


/* Closes the object, frees the generator, returns the text (malloc'd). */

char *
pja_json_end(yajl_gen g)
{
    char                 *s;
    size_t                n;
    const unsigned char  *buf;

    s = NULL;

    if (yajl_gen_map_close(g) == yajl_gen_status_ok
        && yajl_gen_get_buf(g, &buf, &n) == yajl_gen_status_ok)
    {
        s = malloc(n + 1);
        if (s) {
            memcpy(s, buf, n);
            s[n] = '\0';
        }
    }

    yajl_gen_free(g);
    return s;
}


yajl_val
pja_json_get(yajl_val obj, const char *key)
{
    size_t  i;

    if (!YAJL_IS_OBJECT(obj)) {
        return NULL;
    }

    for (i = 0; i < obj->u.object.len; i++) {
        if (strcmp(obj->u.object.keys[i], key) == 0) {
            return obj->u.object.values[i];
        }
    }

    return NULL;
}


const char *
pja_json_get_str(yajl_val obj, const char *key)
{
    yajl_val  v;

    v = pja_json_get(obj, key);
    return YAJL_IS_STRING(v) ? v->u.string : NULL;
}


int
pja_json_get_bool(yajl_val obj, const char *key, int dflt)
{
    yajl_val  v;

    v = pja_json_get(obj, key);

    if (YAJL_IS_TRUE(v)) {
        return 1;
    }

    if (YAJL_IS_FALSE(v)) {
        return 0;
    }

    return dflt;
}


long long
pja_json_get_int(yajl_val obj, const char *key, long long dflt)
{
    yajl_val  v;

    v = pja_json_get(obj, key);
    return YAJL_IS_INTEGER(v) ? YAJL_GET_INTEGER(v) : dflt;
}


/*
 * Parses text (NUL-terminated at len) once the bounded pre-check passed
 * (json_bound.h): a hostile message never reaches yajl's tree.  NULL, with
 * the reason logged, for anything else.
 */

yajl_val
pja_json_parse(const char *text, size_t len, const pj_json_limits_t *lim)
{
    int       rc;
    char      err[128];
    size_t    at;
    yajl_val  v;

    rc = pj_json_bound((const unsigned char *) text, len, lim, &at);

    if (rc != PJ_JSON_OK) {
        pja_log(PJA_LOG_WARN, "JSON refused at byte %zu of %zu: %s",
                at, len, pj_json_bound_strerror(rc));
        return NULL;
    }

    v = yajl_tree_parse(text, err, sizeof(err));

    if (v == NULL) {
        pja_log(PJA_LOG_WARN, "invalid JSON: %s", err);
    }

    return v;
}
