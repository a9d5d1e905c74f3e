/*
 * pushjobs-agent: reads Chef's Ruby-syntax config files (client.rb).
 *
 * Only the literal subset that config files use is understood: statements
 * `name value`, `name(value)` and `name = value`, where a value is a string,
 * symbol, number, true/false/nil, constant, regexp, array or hash (possibly
 * spanning lines, with `k => v` or `k: v` pairs).  A statement the parser
 * does not understand (method calls, interpolation, ...) is skipped with a
 * warning.
 */

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pja.h"


enum {
    T_EOF = 0,
    T_NL,
    T_IDENT,
    T_LABEL,
    T_SYMBOL,
    T_STRING,
    T_REGEX,
    T_NUMBER,
    T_PUNCT,
    T_BAD
};

enum {
    V_STR = 0,
    V_SYM,
    V_REGEX,
    V_NUM,
    V_TRUE,
    V_FALSE,
    V_NIL,
    V_CONST,
    V_HASH,
    V_ARRAY
};

typedef struct {
    int                    type;
    pja_buf_t              text;
    int                    icase;
    char                   punct[3];
    int                    line;
    const char            *start;
} cf_tok_t;

typedef struct {
    const char            *p;
    const char            *end;
    const char            *file;
    int                    line;
    int                    depth;
    int                    after_value;
    cf_tok_t               tok;
} cf_lex_t;

typedef struct cf_val_s  cf_val_t;

struct cf_val_s {
    int                    type;
    char                  *s;
    int                    icase;
    size_t                 n;
    cf_val_t             **keys;         /* hash only */
    cf_val_t             **vals;         /* hash and array */
};


static void cf_next(cf_lex_t *lx);
static cf_val_t *cf_value(cf_lex_t *lx);
static void cf_val_free(cf_val_t *v);
static int cf_apply(pja_conf_t *cf, cf_lex_t *lx, const char *name,
    cf_val_t *v);


static int
cf_is_punct(cf_lex_t *lx, const char *p)
{
    return lx->tok.type == T_PUNCT && strcmp(lx->tok.punct, p) == 0;
}


static void
cf_string(cf_lex_t *lx, char q)
{
    char        c;
    int         bad, n, oct;
    cf_tok_t   *t = &lx->tok;

    bad = 0;

    while (lx->p < lx->end && *lx->p != q) {
        c = *lx->p++;

        if (c == '\n') {
            lx->line++;
        }

        if (c == '#' && q == '"' && lx->p < lx->end && *lx->p == '{') {
            bad = 1;    /* interpolation */
        }

        if (c == '\\' && lx->p < lx->end) {
            c = *lx->p++;

            if (q == '\'') {
                if (c != '\\' && c != '\'') {
                    pja_buf_add(&t->text, "\\", 1);
                }

            } else {
                switch (c) {
                case 'n': c = '\n'; break;
                case 't': c = '\t'; break;
                case 'r': c = '\r'; break;
                case 'e': c = 033; break;
                case 's': c = ' '; break;
                case 'a': c = 07; break;
                case '0': case '1': case '2': case '3':
                case '4': case '5': case '6': case '7':
                    oct = c - '0';
                    for (n = 1; n < 3 && lx->p < lx->end
                         && *lx->p >= '0' && *lx->p <= '7'; n++)
                    {
                        oct = oct * 8 + (*lx->p++ - '0');
                    }
                    c = (char) oct;
                    break;
                default:
                    break;
                }
            }
        }

        pja_buf_add(&t->text, &c, 1);
    }

    if (lx->p < lx->end) {
        lx->p++;
    } else {
        bad = 1;
    }

    pja_buf_cstr(&t->text);
    t->type = bad ? T_BAD : T_STRING;
}


static void
cf_regex(cf_lex_t *lx)
{
    char        c;
    cf_tok_t   *t = &lx->tok;

    t->type = T_REGEX;

    while (lx->p < lx->end && *lx->p != '/') {
        c = *lx->p++;

        if (c == '\n') {
            t->type = T_BAD;
            lx->line++;
            return;
        }

        if (c == '\\' && lx->p < lx->end) {
            if (*lx->p == '/') {
                c = *lx->p++;

            } else {
                pja_buf_add(&t->text, &c, 1);
                c = *lx->p++;
            }
        }

        pja_buf_add(&t->text, &c, 1);
    }

    pja_buf_cstr(&t->text);

    if (lx->p >= lx->end) {
        t->type = T_BAD;
        return;
    }

    lx->p++;

    while (lx->p < lx->end && strchr("imxo", *lx->p)) {
        if (*lx->p == 'i') {
            t->icase = 1;
        } else if (*lx->p == 'x' || *lx->p == 'm') {
            t->type = T_BAD;
        }
        lx->p++;
    }
}


static void
cf_next(cf_lex_t *lx)
{
    char        c;
    const char *s;
    cf_tok_t   *t = &lx->tok;
    int         regex_ok;

    regex_ok = !lx->after_value;
    t->text.len = 0;
    pja_buf_cstr(&t->text);
    t->icase = 0;
    t->punct[0] = '\0';

again:

    while (lx->p < lx->end && (*lx->p == ' ' || *lx->p == '\t'
                               || *lx->p == '\r'))
    {
        lx->p++;
    }

    t->line = lx->line;
    t->start = lx->p;

    if (lx->p >= lx->end) {
        t->type = T_EOF;
        lx->after_value = 0;
        return;
    }

    c = *lx->p;

    if (c == '#') {
        while (lx->p < lx->end && *lx->p != '\n') {
            lx->p++;
        }
        goto again;
    }

    if (c == '\\' && lx->p + 1 < lx->end && lx->p[1] == '\n') {
        lx->p += 2;
        lx->line++;
        goto again;
    }

    if (c == '\n' || c == ';') {
        lx->p++;
        if (c == '\n') {
            lx->line++;
        }

        if (lx->depth > 0) {
            goto again;
        }

        t->type = T_NL;
        lx->after_value = 0;
        return;
    }

    lx->p++;
    lx->after_value = 1;

    if (c == '"' || c == '\'') {
        cf_string(lx, c);
        return;
    }

    if (c == '/' && (regex_ok || (lx->p < lx->end && *lx->p != ' '))) {
        cf_regex(lx);
        return;
    }

    if (c == ':' && lx->p < lx->end
        && (isalpha((unsigned char) *lx->p) || *lx->p == '_'))
    {
        for (s = lx->p; lx->p < lx->end
             && (isalnum((unsigned char) *lx->p) || *lx->p == '_'); lx->p++)
        {
            /* void */
        }
        if (lx->p < lx->end && (*lx->p == '?' || *lx->p == '!')) {
            lx->p++;
        }
        pja_buf_add(&t->text, s, (size_t) (lx->p - s));
        t->type = T_SYMBOL;
        return;
    }

    if (c == ':' && lx->p < lx->end && (*lx->p == '"' || *lx->p == '\'')) {
        c = *lx->p++;
        cf_string(lx, c);
        if (t->type == T_STRING) {
            t->type = T_SYMBOL;
        }
        return;
    }

    if (isalpha((unsigned char) c) || c == '_') {
        for (s = lx->p - 1; lx->p < lx->end
             && (isalnum((unsigned char) *lx->p) || *lx->p == '_'); lx->p++)
        {
            /* void */
        }
        if (lx->p < lx->end && (*lx->p == '?' || *lx->p == '!')) {
            lx->p++;
        }
        pja_buf_add(&t->text, s, (size_t) (lx->p - s));

        if (lx->p + 1 < lx->end && lx->p[0] == ':' && lx->p[1] != ':') {
            lx->p++;
            t->type = T_LABEL;
            lx->after_value = 0;
            return;
        }

        t->type = T_IDENT;
        return;
    }

    if (isdigit((unsigned char) c) || (c == '-' && lx->p < lx->end
                                       && isdigit((unsigned char) *lx->p)))
    {
        for (s = lx->p - 1; lx->p < lx->end
             && (isalnum((unsigned char) *lx->p) || *lx->p == '_'
                 || *lx->p == '.'); lx->p++)
        {
            /* void */
        }
        pja_buf_add(&t->text, s, (size_t) (lx->p - s));
        t->type = T_NUMBER;
        return;
    }

    lx->after_value = 0;
    t->type = T_PUNCT;
    t->punct[0] = c;
    t->punct[1] = '\0';

    switch (c) {
    case '=':
        if (lx->p < lx->end && *lx->p == '>') {
            lx->p++;
            strcpy(t->punct, "=>");
        } else if (lx->p < lx->end && (*lx->p == '=' || *lx->p == '~')) {
            t->type = T_BAD;
        }
        return;
    case '(': case '[': case '{':
        lx->depth++;
        return;
    case ')': case ']': case '}':
        if (lx->depth > 0) {
            lx->depth--;
        }
        lx->after_value = 1;
        return;
    case ',':
        return;
    default:
        t->type = T_BAD;
        return;
    }
}


static cf_val_t *
cf_val_new(int type, const char *s)
{
    cf_val_t  *v;

    v = pja_xalloc(sizeof(cf_val_t));
    if (v == NULL) {
        return NULL;
    }

    v->type = type;
    if (s) {
        v->s = pja_strdup(s);
        if (v->s == NULL) {
            free(v);
            return NULL;
        }
    }

    return v;
}


static void
cf_val_free(cf_val_t *v)
{
    size_t  i;

    if (v == NULL) {
        return;
    }

    for (i = 0; i < v->n; i++) {
        if (v->keys) {
            cf_val_free(v->keys[i]);
        }
        cf_val_free(v->vals[i]);
    }

    free(v->keys);
    free(v->vals);
    free(v->s);
    free(v);
}


static int
cf_val_push(cf_val_t *c, cf_val_t *k, cf_val_t *v)
{
    cf_val_t  **nk, **nv;

    nv = realloc(c->vals, (c->n + 1) * sizeof(cf_val_t *));
    if (nv == NULL) {
        return -1;
    }
    c->vals = nv;

    if (c->type == V_HASH) {
        nk = realloc(c->keys, (c->n + 1) * sizeof(cf_val_t *));
        if (nk == NULL) {
            return -1;
        }
        c->keys = nk;
        c->keys[c->n] = k;
    }

    c->vals[c->n++] = v;
    return 0;
}


/*
 * Parses hash pairs up to `close` ("}" for a literal, ")" or "" for the
 * bare-hash last argument form).  `first` is an already parsed key.
 */

static cf_val_t *
cf_hash(cf_lex_t *lx, const char *close, cf_val_t *first)
{
    cf_val_t  *h, *k, *v;

    h = cf_val_new(V_HASH, NULL);
    if (h == NULL) {
        cf_val_free(first);
        return NULL;
    }

    k = first;

    for ( ;; ) {
        if (k == NULL) {
            if (close[0] && cf_is_punct(lx, close)) {
                break;
            }

            if (lx->tok.type == T_LABEL) {
                k = cf_val_new(V_SYM, lx->tok.text.data);
                cf_next(lx);

            } else {
                k = cf_value(lx);
                if (k == NULL || !cf_is_punct(lx, "=>")) {
                    goto failed;
                }
                cf_next(lx);
            }

            if (k == NULL) {
                goto failed;
            }
        }

        v = cf_value(lx);
        if (v == NULL || cf_val_push(h, k, v) != 0) {
            cf_val_free(v);
            goto failed;
        }
        k = NULL;

        if (cf_is_punct(lx, ",")) {
            cf_next(lx);
            continue;
        }

        if (close[0] == '\0' || cf_is_punct(lx, close)) {
            break;
        }

        goto failed;
    }

    return h;

failed:

    cf_val_free(k);
    cf_val_free(h);
    return NULL;
}


/* Parses one value; on return lx->tok is the token after it. */

static cf_val_t *
cf_value(cf_lex_t *lx)
{
    cf_val_t  *v, *e;
    cf_tok_t  *t = &lx->tok;

    switch (t->type) {

    case T_STRING:
        v = cf_val_new(V_STR, t->text.data);
        break;

    case T_SYMBOL:
        v = cf_val_new(V_SYM, t->text.data);
        break;

    case T_REGEX:
        v = cf_val_new(V_REGEX, t->text.data);
        if (v) {
            v->icase = t->icase;
        }
        break;

    case T_NUMBER:
        v = cf_val_new(V_NUM, t->text.data);
        break;

    case T_IDENT:
        if (strcmp(t->text.data, "true") == 0) {
            v = cf_val_new(V_TRUE, NULL);
        } else if (strcmp(t->text.data, "false") == 0) {
            v = cf_val_new(V_FALSE, NULL);
        } else if (strcmp(t->text.data, "nil") == 0) {
            v = cf_val_new(V_NIL, NULL);
        } else if (isupper((unsigned char) t->text.data[0])) {
            v = cf_val_new(V_CONST, t->text.data);
        } else {
            return NULL;
        }
        break;

    case T_PUNCT:
        if (cf_is_punct(lx, "{")) {
            cf_next(lx);
            v = cf_hash(lx, "}", NULL);
            break;
        }

        if (cf_is_punct(lx, "[")) {
            cf_next(lx);
            v = cf_val_new(V_ARRAY, NULL);
            while (v && !cf_is_punct(lx, "]")) {
                e = cf_value(lx);
                if (e == NULL || cf_val_push(v, NULL, e) != 0) {
                    cf_val_free(e);
                    cf_val_free(v);
                    return NULL;
                }
                if (cf_is_punct(lx, ",")) {
                    cf_next(lx);
                } else if (!cf_is_punct(lx, "]")) {
                    cf_val_free(v);
                    return NULL;
                }
            }
            break;
        }

        return NULL;

    default:
        return NULL;
    }

    if (v) {
        cf_next(lx);
    }

    return v;
}


/* One statement: NAME [=] VALUE, NAME(VALUE), NAME K => V, ... */

static int
cf_statement(pja_conf_t *cf, cf_lex_t *lx)
{
    int        paren, rc;
    char      *name;
    cf_val_t  *v;

    if (lx->tok.type != T_IDENT) {
        return -1;
    }

    name = pja_strdup(lx->tok.text.data);
    if (name == NULL) {
        return -1;
    }

    cf_next(lx);

    paren = 0;

    if (cf_is_punct(lx, "=")) {
        cf_next(lx);

    } else if (cf_is_punct(lx, "(")) {
        paren = 1;
        cf_next(lx);
    }

    if (lx->tok.type == T_LABEL) {
        v = cf_hash(lx, paren ? ")" : "", NULL);

    } else {
        v = cf_value(lx);
        if (v && cf_is_punct(lx, "=>")) {
            cf_next(lx);
            v = cf_hash(lx, paren ? ")" : "", v);
        }
    }

    if (v == NULL) {
        free(name);
        return -1;
    }

    if (paren) {
        if (!cf_is_punct(lx, ")")) {
            goto failed;
        }
        cf_next(lx);
    }

    if (lx->tok.type != T_NL && lx->tok.type != T_EOF) {
        goto failed;
    }

    rc = cf_apply(cf, lx, name, v);
    cf_val_free(v);
    free(name);
    return rc;

failed:

    cf_val_free(v);
    free(name);
    return -1;
}


int
pja_conf_load(pja_conf_t *cf, const char *file)
{
    int         rc;
    FILE       *f;
    pja_buf_t   data = { NULL, 0, 0 };
    char        chunk[4096];
    size_t      n;

    f = fopen(file, "r");
    if (f == NULL) {
        pja_log(PJA_LOG_ERR, "cannot open config %s: %s", file,
                strerror(errno));
        return -1;
    }

    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (pja_buf_add(&data, chunk, n) != 0) {
            fclose(f);
            pja_buf_free(&data);
            return -1;
        }
    }

    if (ferror(f)) {
        pja_log(PJA_LOG_ERR, "cannot read config %s: %s", file,
                strerror(errno));
        fclose(f);
        pja_buf_free(&data);
        return -1;
    }

    fclose(f);

    rc = pja_conf_parse(cf, file, data.data, data.len);

    pja_buf_free(&data);
    return rc;
}


/*
 * The statements of a config file read into memory; "file" names it in
 * messages.  The text needs no terminating NUL.
 */

int
pja_conf_parse(pja_conf_t *cf, const char *file, const char *data,
    size_t len)
{
    int          line;
    cf_lex_t     lx;
    pja_buf_t    text = { NULL, 0, 0 };
    const char  *start;

    /* a copy, NUL-terminated: the lexer may look one byte ahead */

    if (pja_buf_add(&text, data, len) != 0 || pja_buf_cstr(&text) != 0) {
        pja_buf_free(&text);
        return -1;
    }

    memset(&lx, 0, sizeof(lx));
    lx.p = text.data;
    lx.end = text.data + text.len;
    lx.file = file;
    lx.line = 1;

    cf_next(&lx);

    while (lx.tok.type != T_EOF) {
        if (lx.tok.type == T_NL) {
            cf_next(&lx);
            continue;
        }

        line = lx.tok.line;
        start = lx.tok.start;

        if (cf_statement(cf, &lx) != 0) {
            /* The push-jobs cookbook's log format line is harmless. */
            pja_log(strncmp(start, "Mixlib::Log::", 13) == 0
                    ? PJA_LOG_DEBUG : PJA_LOG_WARN,
                    "%s:%d: statement not understood, ignored", file, line);

            while (lx.tok.type != T_NL && lx.tok.type != T_EOF) {
                cf_next(&lx);
            }

            lx.depth = 0;
        }
    }

    pja_buf_free(&lx.tok.text);
    pja_buf_free(&text);
    return 0;
}


static int
cf_set_str(cf_lex_t *lx, const char *name, char **dst, cf_val_t *v)
{
    char  *s;

    if (v->type == V_NIL) {
        free(*dst);
        *dst = NULL;
        return 0;
    }

    if (v->type != V_STR && v->type != V_SYM) {
        pja_log(PJA_LOG_WARN, "%s:%d: %s must be a string", lx->file,
                lx->tok.line, name);
        return 0;
    }

    s = pja_strdup(v->s);
    if (s == NULL) {
        return -1;
    }

    free(*dst);
    *dst = s;
    return 0;
}


static const char *
cf_hash_get(cf_val_t *h, const char *key, cf_val_t **val)
{
    size_t  i;

    for (i = 0; i < h->n; i++) {
        if ((h->keys[i]->type == V_STR || h->keys[i]->type == V_SYM)
            && strcmp(h->keys[i]->s, key) == 0)
        {
            *val = h->vals[i];
            return key;
        }
    }

    *val = NULL;
    return NULL;
}


static int
cf_whitelist(pja_conf_t *cf, cf_lex_t *lx, cf_val_t *v)
{
    int        ok, rc, lock_default;
    char      *lock, *cmd;
    size_t     i;
    cf_val_t  *k, *e, *cl, *lk;

    if (v->type != V_HASH) {
        pja_log(PJA_LOG_WARN, "%s:%d: whitelist must be a hash, ignored",
                lx->file, lx->tok.line);
        return 0;
    }

    pja_wl_free(cf);
    cf->wl_set = 1;

    for (i = 0; i < v->n; i++) {
        k = v->keys[i];
        e = v->vals[i];
        cmd = NULL;
        lock = NULL;
        lock_default = 0;

        if (e->type == V_STR) {
            cmd = e->s;

        } else if (e->type == V_HASH) {
            cf_hash_get(e, "command_line", &cl);
            if (cl && cl->type == V_STR) {
                cmd = cl->s;
            }

            cf_hash_get(e, "lock", &lk);
            if (lk && lk->type == V_STR) {
                lock = lk->s;

            } else if (lk && lk->type == V_TRUE) {
                lock_default = 1;
            }
        }

        if (cmd == NULL) {
            pja_log(PJA_LOG_WARN, "%s: whitelist entry %zu has no command "
                    "line, ignored", lx->file, i + 1);
            continue;
        }

        ok = (k->type == V_STR || k->type == V_SYM || k->type == V_REGEX);
        if (!ok) {
            pja_log(PJA_LOG_WARN, "%s: whitelist key %zu is not a string or "
                    "regexp, ignored", lx->file, i + 1);
            continue;
        }

        rc = pja_wl_add(cf, k->s, k->type == V_REGEX, k->icase, cmd, lock,
                        lock_default);

        if (rc == PJA_WL_REFUSED) {
            /* pja_conf_finish() refuses the whole configuration */
            cf->wl_refused = 1;

        } else if (rc != 0) {
            pja_log(PJA_LOG_WARN, "%s: whitelist key \"%s\" ignored",
                    lx->file, k->s);
        }
    }

    return 0;
}


/* Replaces *list with the strings of an array value. */

static int
cf_set_list(cf_lex_t *lx, const char *name, char ***list, size_t *n,
    cf_val_t *v)
{
    size_t     i, k;
    char     **l;
    cf_val_t  *e;

    if (v->type == V_NIL) {
        v = NULL;

    } else if (v->type != V_ARRAY) {
        pja_log(PJA_LOG_WARN, "%s:%d: %s must be an array", lx->file,
                lx->tok.line, name);
        return 0;
    }

    l = calloc((v ? v->n : 0) + 1, sizeof(char *));
    if (l == NULL) {
        return -1;
    }

    k = 0;

    for (i = 0; v && i < v->n; i++) {
        e = v->vals[i];
        if (e->type != V_STR && e->type != V_SYM) {
            pja_log(PJA_LOG_WARN, "%s:%d: %s: an element that is not a "
                    "string ignored", lx->file, lx->tok.line, name);
            continue;
        }
        l[k] = pja_strdup(e->s);
        if (l[k] == NULL) {
            break;
        }
        k++;
    }

    for (i = 0; i < *n; i++) {
        free((*list)[i]);
    }
    free(*list);

    *list = l;
    *n = k;
    return 0;
}


static int
cf_set_num(cf_lex_t *lx, const char *name, long long *dst, cf_val_t *v)
{
    char       *end;
    long long   n;

    if (v->type == V_NUM || v->type == V_STR) {
        n = strtoll(v->s, &end, 10);
        if (*end == '\0' && end != v->s && n >= 0) {
            *dst = n;
            return 0;
        }
    }

    pja_log(PJA_LOG_WARN, "%s:%d: %s must be a number >= 0, ignored",
            lx->file, lx->tok.line, name);
    return 0;
}


/* pushjobs_transport: auto, websocket or long_poll (docs/protocol.md §6) */

static int
conf_transport(pja_conf_t *cf, const char *v)
{
    if (strcmp(v, "auto") == 0) {
        cf->transport = PJA_TRANSPORT_AUTO;

    } else if (strcmp(v, "websocket") == 0) {
        cf->transport = PJA_TRANSPORT_WEBSOCKET;

    } else if (strcmp(v, "long_poll") == 0) {
        cf->transport = PJA_TRANSPORT_LONG_POLL;

    } else {
        return -1;
    }

    return 0;
}


static int
cf_apply(pja_conf_t *cf, cf_lex_t *lx, const char *name, cf_val_t *v)
{
    int        rc;
    long long  n;

    if (strcmp(name, "node_name") == 0) {
        return cf_set_str(lx, name, &cf->node_name, v);
    }

    if (strcmp(name, "chef_server_url") == 0) {
        return cf_set_str(lx, name, &cf->chef_server_url, v);
    }

    if (strcmp(name, "client_key") == 0) {
        return cf_set_str(lx, name, &cf->client_key, v);
    }

    if (strcmp(name, "ssl_ca_file") == 0) {
        return cf_set_str(lx, name, &cf->ssl_ca_file, v);
    }

    if (strcmp(name, "trusted_certs_dir") == 0) {
        return cf_set_str(lx, name, &cf->trusted_certs_dir, v);
    }

    if (strcmp(name, "allowed_users") == 0) {
        return cf_set_list(lx, name, &cf->allowed_users,
                           &cf->nallowed_users, v);
    }

    if (strcmp(name, "kill_grace_period") == 0) {
        n = -1;
        rc = cf_set_num(lx, name, &n, v);
        if (n >= 0) {
            cf->kill_grace = n > 3600 ? 3600 : (int) n;
        }
        return rc;
    }

    if (strcmp(name, "max_output_size") == 0) {
        return cf_set_num(lx, name, &cf->output_cap, v);
    }

    if (strcmp(name, "file_dir") == 0) {
        return cf_set_str(lx, name, &cf->file_dir, v);
    }

    if (strcmp(name, "file_cache_path") == 0) {
        return cf_set_str(lx, name, &cf->file_cache_path, v);
    }

    if (strcmp(name, "lockfile") == 0) {
        return cf_set_str(lx, name, &cf->lockfile, v);
    }

    if (strcmp(name, "ssl_verify_mode") == 0) {
        if ((v->type == V_SYM || v->type == V_STR)
            && strcmp(v->s, "verify_none") == 0)
        {
            cf->ssl_verify = 0;

        } else if ((v->type == V_SYM || v->type == V_STR)
                   && strcmp(v->s, "verify_peer") == 0)
        {
            cf->ssl_verify = 1;

        } else {
            pja_log(PJA_LOG_WARN, "%s:%d: ssl_verify_mode must be "
                    ":verify_none or :verify_peer", lx->file, lx->tok.line);
        }
        return 0;
    }

    if (strcmp(name, "whitelist") == 0) {
        return cf_whitelist(cf, lx, v);
    }

    if (strcmp(name, "allowed_overwritable_env_vars") == 0) {
        return cf_set_list(lx, name, &cf->allowed_env, &cf->nallowed_env, v);
    }

    if (strcmp(name, "pushjobs_transport") == 0) {
        if ((v->type != V_SYM && v->type != V_STR)
            || conf_transport(cf, v->s) != 0)
        {
            pja_log(PJA_LOG_WARN, "%s:%d: pushjobs_transport must be :auto, "
                    ":websocket or :long_poll", lx->file, lx->tok.line);
        }
        return 0;
    }

    pja_log(PJA_LOG_DEBUG, "%s: setting \"%s\" not used by the agent",
            lx->file, name);
    return 0;
}


/* Validates the configuration and derives the channel address. */

int
pja_conf_finish(pja_conf_t *cf)
{
    char       *url, *p, *hostport, *path, *colon, *org;
    size_t      n;
    pja_buf_t   b = { NULL, 0, 0 };

    if (cf->node_name == NULL) {
        pja_log(PJA_LOG_ERR, "node_name is not set");
        return -1;
    }

    if (cf->chef_server_url == NULL) {
        pja_log(PJA_LOG_ERR, "chef_server_url is not set");
        return -1;
    }

    if (cf->wl_refused) {
        pja_log(PJA_LOG_ERR, "the whitelist has a regexp the agent refuses");
        return -1;
    }

    if (cf->client_key == NULL) {
        cf->client_key = pja_strdup(PJA_DEFAULT_CLIENT_KEY);
    }

    if (cf->file_dir == NULL) {
        cf->file_dir = pja_strdup(PJA_DEFAULT_FILE_DIR);
    }

    if (cf->kill_grace < 0) {
        cf->kill_grace = PJA_KILL_GRACE_S;
    }

    if (cf->output_cap < 0) {
        cf->output_cap = PJA_OUTPUT_CAP;
    }

    if (!cf->wl_set && cf->nwl == 0) {
        if (pja_wl_add(cf, "chef-client", 0, 0, "chef-client", NULL, 0)
            != 0)
        {
            return -1;
        }
    }

    url = pja_strdup(cf->chef_server_url);
    if (url == NULL || cf->client_key == NULL || cf->file_dir == NULL) {
        free(url);
        return -1;
    }

    if (strncmp(url, "https://", 8) == 0) {
        cf->tls = 1;
        hostport = url + 8;

    } else if (strncmp(url, "http://", 7) == 0) {
        cf->tls = 0;
        hostport = url + 7;

    } else {
        pja_log(PJA_LOG_ERR, "chef_server_url must start with https://");
        goto failed;
    }

    path = strchr(hostport, '/');
    if (path == NULL) {
        pja_log(PJA_LOG_ERR, "chef_server_url must end with "
                "/organizations/ORG");
        goto failed;
    }

    n = strlen(path);
    while (n > 1 && path[n - 1] == '/') {
        path[--n] = '\0';
    }

    p = strstr(path, "/organizations/");
    if (p == NULL) {
        pja_log(PJA_LOG_ERR, "chef_server_url must end with "
                "/organizations/ORG");
        goto failed;
    }

    org = p + sizeof("/organizations/") - 1;
    if (*org == '\0' || strchr(org, '/') || strchr(org, '?')) {
        pja_log(PJA_LOG_ERR, "chef_server_url must end with "
                "/organizations/ORG");
        goto failed;
    }

    cf->org = pja_strdup(org);
    pja_buf_printf(&b, "%s/pushy/agent", path);
    cf->ws_path = b.data;
    memset(&b, 0, sizeof(pja_buf_t));

    *path = '\0';

    if (*hostport == '[') {
        p = strchr(hostport, ']');
        if (p == NULL) {
            goto bad_host;
        }
        *p++ = '\0';
        cf->host = pja_strdup(hostport + 1);
        colon = (*p == ':') ? p : NULL;
        if (*p && colon == NULL) {
            goto bad_host;
        }

    } else {
        colon = strchr(hostport, ':');
        if (colon) {
            *colon = '\0';
        }
        cf->host = pja_strdup(hostport);
        if (colon) {
            *colon = ':';
        }
    }

    if (colon && colon[1]) {
        cf->port = pja_strdup(colon + 1);
    } else {
        cf->port = pja_strdup(cf->tls ? "443" : "80");
    }

    if (cf->host == NULL || cf->host[0] == '\0') {
        goto bad_host;
    }

    /* Host header: as in the URL (with brackets and port). */
    b.len = 0;
    if (strchr(cf->host, ':')) {
        pja_buf_printf(&b, "[%s]", cf->host);
    } else {
        pja_buf_addstr(&b, cf->host);
    }
    if (colon && colon[1]) {
        pja_buf_printf(&b, ":%s", colon + 1);
    }
    cf->host_header = b.data;

    free(url);

    if (cf->org == NULL || cf->ws_path == NULL || cf->port == NULL
        || cf->host_header == NULL)
    {
        return -1;
    }

    return 0;

bad_host:

    pja_log(PJA_LOG_ERR, "chef_server_url has a bad host");

failed:

    pja_buf_free(&b);
    free(url);
    return -1;
}


void
pja_conf_free(pja_conf_t *cf)
{
    size_t  i;

    free(cf->node_name);
    free(cf->chef_server_url);
    free(cf->client_key);
    free(cf->ssl_ca_file);
    free(cf->trusted_certs_dir);
    free(cf->file_dir);
    free(cf->file_cache_path);
    free(cf->lockfile);

    for (i = 0; i < cf->nallowed_env; i++) {
        free(cf->allowed_env[i]);
    }
    free(cf->allowed_env);

    for (i = 0; i < cf->nallowed_users; i++) {
        free(cf->allowed_users[i]);
    }
    free(cf->allowed_users);

    pja_wl_free(cf);

    free(cf->host);
    free(cf->port);
    free(cf->org);
    free(cf->ws_path);
    free(cf->host_header);

    memset(cf, 0, sizeof(pja_conf_t));
}


void
pja_conf_init(pja_conf_t *cf)
{
    memset(cf, 0, sizeof(pja_conf_t));
    cf->ssl_verify = 1;
    cf->kill_grace = -1;
    cf->output_cap = -1;
}


static int
conf_list_add(char ***list, size_t *n, const char *value)
{
    char        **l;
    const char   *p, *e;

    /* "a,b,c" adds three. */
    for (p = value; *p; p = *e ? e + 1 : e) {
        e = p + strcspn(p, ",");
        if (e == p) {
            continue;
        }

        l = realloc(*list, (*n + 2) * sizeof(char *));
        if (l == NULL) {
            return -1;
        }
        *list = l;

        l[*n] = strndup(p, (size_t) (e - p));
        if (l[*n] == NULL) {
            return -1;
        }
        l[++*n] = NULL;
    }

    return 0;
}


static int
conf_str(char **dst, const char *value)
{
    char  *s;

    s = pja_strdup(value);
    if (s == NULL) {
        return -1;
    }

    free(*dst);
    *dst = s;
    return 0;
}


/*
 * A setting from the command line (after the files): NAME is the config
 * file's name of the setting.  Lists and the whitelist are added to.
 */

int
pja_conf_set(pja_conf_t *cf, const char *name, const char *value)
{
    char       *end, *key;
    const char *eq;
    long long   n;
    int         rc;

    if (strcmp(name, "node_name") == 0) {
        return conf_str(&cf->node_name, value);
    }
    if (strcmp(name, "chef_server_url") == 0) {
        return conf_str(&cf->chef_server_url, value);
    }
    if (strcmp(name, "client_key") == 0) {
        return conf_str(&cf->client_key, value);
    }
    if (strcmp(name, "ssl_ca_file") == 0) {
        return conf_str(&cf->ssl_ca_file, value);
    }
    if (strcmp(name, "trusted_certs_dir") == 0) {
        return conf_str(&cf->trusted_certs_dir, value);
    }
    if (strcmp(name, "file_dir") == 0) {
        return conf_str(&cf->file_dir, value);
    }
    if (strcmp(name, "file_cache_path") == 0) {
        return conf_str(&cf->file_cache_path, value);
    }
    if (strcmp(name, "lockfile") == 0) {
        return conf_str(&cf->lockfile, value);
    }

    if (strcmp(name, "ssl_verify_mode") == 0) {
        if (value[0] == ':') {
            value++;
        }
        if (strcmp(value, "verify_peer") == 0) {
            cf->ssl_verify = 1;
            return 0;
        }
        if (strcmp(value, "verify_none") == 0) {
            cf->ssl_verify = 0;
            return 0;
        }
        pja_log(PJA_LOG_ERR, "ssl_verify_mode must be verify_peer or "
                "verify_none");
        return -1;
    }

    if (strcmp(name, "allowed_users") == 0) {
        return conf_list_add(&cf->allowed_users, &cf->nallowed_users, value);
    }

    if (strcmp(name, "pushjobs_transport") == 0) {
        if (conf_transport(cf, value[0] == ':' ? value + 1 : value) != 0) {
            pja_log(PJA_LOG_ERR, "pushjobs_transport must be auto, websocket "
                    "or long_poll");
            return -1;
        }
        return 0;
    }

    if (strcmp(name, "allowed_overwritable_env_vars") == 0) {
        return conf_list_add(&cf->allowed_env, &cf->nallowed_env, value);
    }

    if (strcmp(name, "kill_grace_period") == 0
        || strcmp(name, "max_output_size") == 0)
    {
        n = strtoll(value, &end, 10);
        if (*end != '\0' || end == value || n < 0) {
            pja_log(PJA_LOG_ERR, "%s must be a number >= 0", name);
            return -1;
        }
        if (name[0] == 'k') {
            cf->kill_grace = n > 3600 ? 3600 : (int) n;
        } else {
            cf->output_cap = n;
        }
        return 0;
    }

    if (strcmp(name, "whitelist") == 0
        || strcmp(name, "whitelist_regex") == 0)
    {
        eq = strchr(value, '=');
        if (eq == NULL || eq == value || eq[1] == '\0') {
            pja_log(PJA_LOG_ERR, "--%s wants KEY=COMMAND LINE",
                    name[9] ? "whitelist-regex" : "whitelist");
            return -1;
        }

        key = strndup(value, (size_t) (eq - value));
        if (key == NULL) {
            return -1;
        }

        rc = pja_wl_add(cf, key, name[9] != '\0', 0, eq + 1, NULL, 0);
        free(key);
        return rc;
    }

    pja_log(PJA_LOG_ERR, "unknown setting %s", name);
    return -1;
}


/* The lock file of a whitelist entry (malloc'd), or NULL. */

char *
pja_conf_lock_path(const pja_conf_t *cf, const pja_wl_entry_t *e)
{
    pja_buf_t  b = { NULL, 0, 0 };

    if (e->lock) {
        return pja_strdup(e->lock);
    }

    if (!e->lock_default) {
        return NULL;
    }

    if (cf->lockfile) {
        return pja_strdup(cf->lockfile);
    }

    if (pja_buf_printf(&b, "%s/chef-client-running.pid",
                       cf->file_cache_path ? cf->file_cache_path
                                           : PJA_DEFAULT_CACHE_PATH) != 0)
    {
        pja_buf_free(&b);
        return NULL;
    }

    return b.data;
}


int
pja_conf_user_allowed(const pja_conf_t *cf, const char *user)
{
    size_t  i;

    for (i = 0; i < cf->nallowed_users; i++) {
        if (strcmp(cf->allowed_users[i], user) == 0
            || strcmp(cf->allowed_users[i], "*") == 0)
        {
            return 1;
        }
    }

    return 0;
}


/* A string in double quotes, with Ruby's escapes. */

static void
conf_print_str(FILE *f, const char *s)
{
    fputc('"', f);

    for ( ; s && *s; s++) {
        if (*s == '"' || *s == '\\' || *s == '#') {
            fputc('\\', f);
            fputc(*s, f);
        } else if ((unsigned char) *s < 0x20) {
            fprintf(f, "\\%03o", (unsigned char) *s);
        } else {
            fputc(*s, f);
        }
    }

    fputc('"', f);
}


static void
conf_print_list(FILE *f, const char *name, char **l, size_t n)
{
    size_t  i;

    fprintf(f, "%s [", name);
    for (i = 0; i < n; i++) {
        fputs(i ? ", " : "", f);
        conf_print_str(f, l[i]);
    }
    fputs("]\n", f);
}


/*
 * --check-config: the effective configuration, in the config files' own
 * syntax (so it can be read back), plus the derived channel address.
 */

void
pja_conf_print(const pja_conf_t *cf, FILE *f)
{
    size_t                i;
    char                 *lock;
    const pja_wl_entry_t *e;

    fputs("node_name ", f);
    conf_print_str(f, cf->node_name);
    fputs("\nchef_server_url ", f);
    conf_print_str(f, cf->chef_server_url);
    fputs("\nclient_key ", f);
    conf_print_str(f, cf->client_key);
    fputs("\nssl_verify_mode ", f);
    fputs(cf->ssl_verify ? ":verify_peer" : ":verify_none", f);
    fputs("\nssl_ca_file ", f);
    if (cf->ssl_ca_file) {
        conf_print_str(f, cf->ssl_ca_file);
    } else {
        fputs("nil", f);
    }
    fputs("\ntrusted_certs_dir ", f);
    conf_print_str(f, cf->trusted_certs_dir ? cf->trusted_certs_dir
                                            : PJA_DEFAULT_TRUSTED);
    fputs("\nfile_dir ", f);
    conf_print_str(f, cf->file_dir);
    fputs("\nfile_cache_path ", f);
    conf_print_str(f, cf->file_cache_path ? cf->file_cache_path
                                          : PJA_DEFAULT_CACHE_PATH);
    fputs("\nlockfile ", f);
    if (cf->lockfile) {
        conf_print_str(f, cf->lockfile);
    } else {
        fputs("nil", f);
    }
    fprintf(f, "\nkill_grace_period %d\nmax_output_size %lld\n",
            cf->kill_grace, cf->output_cap);
    fprintf(f, "pushjobs_transport %s\n",
            cf->transport == PJA_TRANSPORT_LONG_POLL ? ":long_poll"
            : cf->transport == PJA_TRANSPORT_WEBSOCKET ? ":websocket"
            : ":auto");
    conf_print_list(f, "allowed_users", cf->allowed_users,
                    cf->nallowed_users);
    conf_print_list(f, "allowed_overwritable_env_vars", cf->allowed_env,
                    cf->nallowed_env);

    fputs("whitelist({\n", f);

    for (i = 0; i < cf->nwl; i++) {
        e = &cf->wl[i];

        fputs("  ", f);
        if (e->is_regex) {
            fprintf(f, "/%s/", e->key);
        } else {
            conf_print_str(f, e->key);
        }
        fputs(" => ", f);

        lock = pja_conf_lock_path(cf, e);
        if (lock) {
            fputs("{ :command_line => ", f);
            conf_print_str(f, e->command_line);
            fputs(", :lock => ", f);
            conf_print_str(f, lock);
            fputs(" }", f);
            free(lock);
        } else {
            conf_print_str(f, e->command_line);
        }
        fputs(",\n", f);
    }

    fputs("})\n", f);
    fprintf(f, "# channel: %s://%s%s\n", cf->tls ? "wss" : "ws",
            cf->host_header, cf->ws_path);
    fprintf(f, "# long-poll: %s://%s%s/poll\n", cf->tls ? "https" : "http",
            cf->host_header, cf->ws_path);
}
