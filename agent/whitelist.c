/*
 * pushjobs-agent: the command whitelist and command line splitting.
 *
 * A requested command is looked up as an exact key first, then against the
 * regexp keys in the order of the config file.  For a regexp key the
 * command line is the requested command with every match replaced by the
 * value, where \0..\9 stand for the groups of the match (Ruby's gsub).
 * Ruby regexps are translated to POSIX extended ones: \d \s \w and their
 * negations become bracket expressions, \A and \z become anchors.
 *
 * glibc's regcomp() copies a repeated expression once per repetition (x+
 * is x x*, x{n,m} is m copies), so stacked or nested repetitions make it
 * allocate memory exponentially: /a+++++++++++++++++++++/ exhausts a
 * machine.  Every regexp is bounded before regcomp() sees it, by
 * pja_wl_check(): its length, its group nesting, its counted repetitions,
 * no quantifier on a quantifier, and the size of the expression once the
 * repetitions are expanded.
 */

#include <stdlib.h>
#include <string.h>

#include "pja.h"


#define PJA_WL_RE_LEN     1024   /* bytes of the regexp given to regcomp() */
#define PJA_WL_RE_DEPTH   16     /* groups within groups */
#define PJA_WL_RE_DUP     255    /* bounds of x{n,m}: POSIX's RE_DUP_MAX */
#define PJA_WL_RE_SIZE    1000   /* atoms once repetitions are expanded */


/* One level of group nesting, sizes in atoms of the expanded expression. */

typedef struct {
    size_t  alt;          /* the branches before the current one */
    size_t  branch;       /* the current branch */
    size_t  last;         /* its last piece, 0 if there is none yet */
    int     quantified;   /* the last piece has a quantifier */
} wl_level_t;


static const char *
wl_piece(wl_level_t *l, size_t size)
{
    l->branch += size;
    l->last = size;
    l->quantified = 0;

    return (l->alt + l->branch > PJA_WL_RE_SIZE)
           ? "more than 1000 elements once its repetitions are "
             "expanded" : NULL;
}


/*
 * Reads a counted repetition {n}, {n,}, {,m} or {n,m} at p ('{'): returns
 * the number of copies regcomp() makes of the repeated expression, sets
 * *end to the '}'; 0 if p does not start a repetition, (size_t) -1 if a
 * bound is over PJA_WL_RE_DUP.
 */

static size_t
wl_bound(const char *p, const char **end)
{
    int     comma, digits;
    size_t  n, m;

    n = 0;
    m = 0;
    comma = 0;
    digits = 0;

    for (p++; *p != '}'; p++) {
        if (*p == ',' && !comma) {
            comma = 1;
            continue;
        }

        if (*p < '0' || *p > '9') {
            return 0;
        }

        digits = 1;

        if (comma) {
            m = m * 10 + (size_t) (*p - '0');
        } else {
            n = n * 10 + (size_t) (*p - '0');
        }

        if (n > PJA_WL_RE_DUP || m > PJA_WL_RE_DUP) {
            return (size_t) -1;
        }
    }

    if (!digits) {
        return 0;
    }

    *end = p;

    /* {n}: n copies; {n,}: n copies and a star; {n,m}: m copies */

    if (!comma) {
        return n ? n : 1;
    }

    if (m == 0 && p[-1] == ',') {
        return n + 1;
    }

    return m > n ? m : (n ? n : 1);
}


/*
 * Whether glibc's regcomp() may be given an extended regexp: NULL if so,
 * else why not.  A pure function of the string, for the fuzzers.
 */

const char *
pja_wl_check(const char *re)
{
    int          depth;
    size_t       copies, size;
    const char  *p, *end, *err;
    wl_level_t   levels[PJA_WL_RE_DEPTH + 1], *l;

    if (strlen(re) > PJA_WL_RE_LEN) {
        return "longer than 1024 bytes";
    }

    depth = 0;
    l = &levels[0];
    memset(l, 0, sizeof(wl_level_t));

    for (p = re; *p; p++) {

        switch (*p) {

        case '(':
            if (depth == PJA_WL_RE_DEPTH) {
                return "groups nested deeper than 16";
            }

            l = &levels[++depth];
            memset(l, 0, sizeof(wl_level_t));
            continue;

        case ')':
            if (depth == 0) {
                break;      /* regcomp() refuses it */
            }

            size = l->alt + l->branch + 1;
            l = &levels[--depth];

            if ((err = wl_piece(l, size)) != NULL) {
                return err;
            }

            continue;

        case '|':
            l->alt += l->branch + 1;
            l->branch = 0;
            l->last = 0;
            l->quantified = 0;
            continue;

        case '*':
        case '+':
        case '?':
        case '{':
            if (*p == '{') {
                copies = wl_bound(p, &end);

                if (copies == (size_t) -1) {
                    return "a repetition count over 255";
                }

                if (copies == 0) {
                    break;  /* a literal brace */
                }

            } else {
                copies = (*p == '+') ? 2 : 1;
                end = p;
            }

            if (l->last == 0) {
                break;      /* nothing to repeat: regcomp() decides */
            }

            if (l->quantified) {
                return "a quantifier on a quantifier (Ruby's lazy and "
                       "possessive forms, such as +? and ++, are not "
                       "supported)";
            }

            l->branch -= l->last;
            size = l->last * copies + 1;

            if ((err = wl_piece(l, size)) != NULL) {
                return err;
            }

            l->quantified = 1;
            p = end;
            continue;

        case '[':
            /* a bracket expression is one atom: find its end */

            end = p + 1;

            if (*end == '^') {
                end++;
            }

            if (*end == ']') {
                end++;
            }

            while (*end != ']') {
                if (*end == '\0') {
                    return "an unterminated bracket expression";
                }

                if (*end == '['
                    && (end[1] == ':' || end[1] == '.' || end[1] == '='))
                {
                    end = strchr(end + 2, end[1]);

                    if (end == NULL || end[1] != ']') {
                        return "an unterminated bracket expression";
                    }

                    end += 2;
                    continue;
                }

                end++;
            }

            p = end;
            break;

        case '\\':
            if (p[1] != '\0') {
                p++;
            }

            break;
        }

        /* an atom */

        if ((err = wl_piece(l, 1)) != NULL) {
            return err;
        }
    }

    /* empty branches (a||) add to the size too */

    return wl_piece(l, 0);
}


static int
wl_translate(const char *src, pja_buf_t *dst)
{
    int          in_bracket;
    const char  *p;

    in_bracket = 0;

    for (p = src; *p; p++) {

        if (*p == '[' && !in_bracket) {
            in_bracket = 1;
            pja_buf_add(dst, p, 1);

            /* A leading ']' or '^]' is literal inside a bracket. */
            if (p[1] == '^') {
                pja_buf_add(dst, ++p, 1);
            }
            if (p[1] == ']') {
                pja_buf_add(dst, ++p, 1);
            }
            continue;
        }

        if (*p == ']' && in_bracket) {
            in_bracket = 0;
            pja_buf_add(dst, p, 1);
            continue;
        }

        if (*p == '(' && p[1] == '?') {
            return -1;      /* Ruby group options are not POSIX */
        }

        if (*p != '\\') {
            pja_buf_add(dst, p, 1);
            continue;
        }

        p++;

        if (*p == '\0') {
            return -1;
        }

        if (in_bracket) {
            switch (*p) {
            case 'd': pja_buf_addstr(dst, "0-9"); break;
            case 's': pja_buf_addstr(dst, "[:space:]"); break;
            case 'w': pja_buf_addstr(dst, "[:alnum:]_"); break;
            case 'n': pja_buf_addstr(dst, "\n"); break;
            case 't': pja_buf_addstr(dst, "\t"); break;
            case 'D': case 'S': case 'W': return -1;
            default: pja_buf_add(dst, p, 1); break;
            }
            continue;
        }

        switch (*p) {
        case 'd': pja_buf_addstr(dst, "[0-9]"); break;
        case 'D': pja_buf_addstr(dst, "[^0-9]"); break;
        case 's': pja_buf_addstr(dst, "[[:space:]]"); break;
        case 'S': pja_buf_addstr(dst, "[^[:space:]]"); break;
        case 'w': pja_buf_addstr(dst, "[[:alnum:]_]"); break;
        case 'W': pja_buf_addstr(dst, "[^[:alnum:]_]"); break;
        case 'A': pja_buf_addstr(dst, "^"); break;
        case 'z': case 'Z': pja_buf_addstr(dst, "$"); break;
        case 'n': pja_buf_addstr(dst, "\n"); break;
        case 't': pja_buf_addstr(dst, "\t"); break;
        case 'h': pja_buf_addstr(dst, "[0-9a-fA-F]"); break;
        default:
            if (*p >= '1' && *p <= '9') {
                return -1;      /* back references */
            }
            if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')) {
                return -1;      /* \b, \p{...} and friends */
            }
            pja_buf_add(dst, "\\", 1);
            pja_buf_add(dst, p, 1);
            break;
        }
    }

    return in_bracket ? -1 : pja_buf_cstr(dst);
}


int
pja_wl_add(pja_conf_t *cf, const char *key, int is_regex, int icase,
    const char *command_line, const char *lock, int lock_default)
{
    int              rc;
    char             err[128];
    const char      *why;
    pja_buf_t        ere = { NULL, 0, 0 };
    pja_wl_entry_t  *wl, *e;

    wl = realloc(cf->wl, (cf->nwl + 1) * sizeof(pja_wl_entry_t));
    if (wl == NULL) {
        return -1;
    }
    cf->wl = wl;

    e = &cf->wl[cf->nwl];
    memset(e, 0, sizeof(pja_wl_entry_t));

    if (is_regex) {
        if (wl_translate(key, &ere) != 0) {
            pja_log(PJA_LOG_WARN, "whitelist regexp /%s/ uses syntax the "
                    "agent does not support", key);
            pja_buf_free(&ere);
            return -1;
        }

        why = pja_wl_check(ere.data);

        if (why != NULL) {
            pja_log(PJA_LOG_ERR, "whitelist regexp /%.100s%s/ refused: %s",
                    key, strlen(key) > 100 ? "..." : "", why);
            pja_buf_free(&ere);
            return PJA_WL_REFUSED;
        }

        rc = regcomp(&e->re, ere.data,
                     REG_EXTENDED | (icase ? REG_ICASE : 0));
        if (rc != 0) {
            regerror(rc, &e->re, err, sizeof(err));
            pja_log(PJA_LOG_WARN, "whitelist regexp /%s/: %s", key, err);
            pja_buf_free(&ere);
            return -1;
        }

        pja_log(PJA_LOG_DEBUG, "whitelist regexp /%s/ as /%s/", key,
                ere.data);
        pja_buf_free(&ere);
        e->is_regex = 1;
    }

    e->key = pja_strdup(key);
    e->command_line = pja_strdup(command_line);
    e->lock = lock ? pja_strdup(lock) : NULL;
    e->lock_default = lock_default;

    if (e->key == NULL || e->command_line == NULL || (lock && !e->lock)) {
        if (e->is_regex) {
            regfree(&e->re);
        }
        free(e->key);
        free(e->command_line);
        free(e->lock);
        return -1;
    }

    cf->nwl++;
    return 0;
}


void
pja_wl_free(pja_conf_t *cf)
{
    size_t  i;

    for (i = 0; i < cf->nwl; i++) {
        if (cf->wl[i].is_regex) {
            regfree(&cf->wl[i].re);
        }
        free(cf->wl[i].key);
        free(cf->wl[i].command_line);
        free(cf->wl[i].lock);
    }

    free(cf->wl);
    cf->wl = NULL;
    cf->nwl = 0;
}


static void
wl_expand(pja_buf_t *b, const char *repl, const char *subject,
    regmatch_t *m)
{
    int          g;
    const char  *r;

    for (r = repl; *r; r++) {
        if (r[0] == '\\' && r[1] >= '0' && r[1] <= '9') {
            g = r[1] - '0';
            if (m[g].rm_so != -1) {
                pja_buf_add(b, subject + m[g].rm_so,
                            (size_t) (m[g].rm_eo - m[g].rm_so));
            }
            r++;
            continue;
        }

        if (r[0] == '\\' && r[1] == '\\') {
            pja_buf_add(b, "\\", 1);
            r++;
            continue;
        }

        pja_buf_add(b, r, 1);
    }
}


static char *
wl_gsub(const regex_t *re, const char *s, const char *repl)
{
    int          eflags;
    const char  *p;
    regmatch_t   m[10];
    pja_buf_t    b = { NULL, 0, 0 };

    eflags = 0;

    for (p = s; ; ) {
        if (regexec(re, p, 10, m, eflags) != 0) {
            break;
        }

        pja_buf_add(&b, p, (size_t) m[0].rm_so);
        wl_expand(&b, repl, p, m);

        if (m[0].rm_eo > m[0].rm_so) {
            p += m[0].rm_eo;

        } else {
            if (p[m[0].rm_eo] == '\0') {
                p += m[0].rm_eo;
                break;
            }
            pja_buf_add(&b, p + m[0].rm_eo, 1);
            p += m[0].rm_eo + 1;
        }

        eflags = REG_NOTBOL;
    }

    pja_buf_addstr(&b, p);

    if (pja_buf_cstr(&b) != 0) {
        pja_buf_free(&b);
        return NULL;
    }

    return b.data;
}


char *
pja_wl_resolve(const pja_conf_t *cf, const char *command,
    const pja_wl_entry_t **entry)
{
    size_t                i;
    const pja_wl_entry_t *e;

    /* Exact keys: the last definition wins, as in a Ruby hash literal. */
    for (i = cf->nwl; i-- > 0; ) {
        e = &cf->wl[i];
        if (!e->is_regex && strcmp(e->key, command) == 0) {
            *entry = e;
            return pja_strdup(e->command_line);
        }
    }

    for (i = 0; i < cf->nwl; i++) {
        e = &cf->wl[i];
        if (e->is_regex && regexec(&e->re, command, 0, NULL, 0) == 0) {
            *entry = e;
            return wl_gsub(&e->re, command, e->command_line);
        }
    }

    *entry = NULL;
    return NULL;
}


/*
 * Splits a command line into argv like a shell would for plain words:
 * whitespace separates, '...' quotes literally, "..." quotes with \" \\ \$
 * \` escapes, a backslash outside quotes escapes the next character.
 * Nothing else (no globbing, no variables, no redirections).
 */

char **
pja_argv_split(const char *cmdline)
{
    char         q;
    const char  *p;
    size_t       n;
    char       **argv, **nargv;
    pja_buf_t    w = { NULL, 0, 0 };

    argv = calloc(1, sizeof(char *));
    if (argv == NULL) {
        return NULL;
    }
    n = 0;

    p = cmdline;

    for ( ;; ) {
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') {
            p++;
        }

        if (*p == '\0') {
            break;
        }

        w.len = 0;
        pja_buf_cstr(&w);

        while (*p && *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            if (*p == '\'' || *p == '"') {
                q = *p++;
                while (*p && *p != q) {
                    if (q == '"' && *p == '\\'
                        && (p[1] == '"' || p[1] == '\\' || p[1] == '$'
                            || p[1] == '`'))
                    {
                        p++;
                    }
                    pja_buf_add(&w, p++, 1);
                }
                if (*p != q) {
                    goto failed;
                }
                p++;
                continue;
            }

            if (*p == '\\' && p[1]) {
                p++;
            }

            pja_buf_add(&w, p++, 1);
        }

        if (pja_buf_cstr(&w) != 0) {
            goto failed;
        }

        nargv = realloc(argv, (n + 2) * sizeof(char *));
        if (nargv == NULL) {
            goto failed;
        }
        argv = nargv;
        argv[n] = pja_strdup(w.data);
        argv[++n] = NULL;

        if (argv[n - 1] == NULL) {
            goto failed;
        }
    }

    pja_buf_free(&w);

    if (n == 0) {
        free(argv);
        return NULL;
    }

    return argv;

failed:

    pja_buf_free(&w);
    pja_argv_free(argv);
    return NULL;
}


void
pja_argv_free(char **argv)
{
    size_t  i;

    if (argv == NULL) {
        return;
    }

    for (i = 0; argv[i]; i++) {
        free(argv[i]);
    }

    free(argv);
}
