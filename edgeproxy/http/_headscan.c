/* _headscan: the fast lane's head scanner, compiled. edgeproxy/http/headscan.py is its twin and the reference:
 * both keep the same rules, and the tests and the fuzz target hold them equal on any bytes.
 *
 * scan(data) -> (method, target, version, host, keep_alive, origin, referer, user_agent, nfields) or None.
 * None: not for the lane (the full parser path reads the bytes); the scanner refuses nothing itself. Accepted is a
 * subset of what h11 0.16, llhttp and the proxy's parser seam all accept:
 *  1. data is exactly one head: it ends with its first CRLF CRLF, nothing after it.
 *  2. "GET" or "HEAD", SP, "/" then bytes 0x21-0x7E but '#', SP, "HTTP/1.1" or "HTTP/1.0", CRLF.
 *  3. Field lines: a token name (RFC 9110 tchar), ':', a value of SP, HTAB, 0x21-0x7E, CRLF. The value is returned
 *     without leading/trailing SP/HTAB and may be empty. Any other byte, bare CR/LF, obs-fold, SP before ':' -> None.
 *  4. Names case-insensitive: exactly one Host, non-empty, of A-Za-z0-9.-:[] ; at most one Connection, exactly
 *     keep-alive or close (any case); no FORBIDDEN name; at most one Origin; the first Referer and User-Agent.
 *  5. keep_alive: HTTP/1.1 unless "close"; HTTP/1.0 only with "keep-alive".
 *  6. nfields: the number of field lines.
 * fields_named(data, names) -> [(lower-cased name, trimmed value)] for the fields whose lower-cased name is in names,
 * split exactly as the twin splits (on CRLF, after the request line, up to the first empty line).
 *
 * One pass over the bytes, no allocation but the result objects; bounds are checked before every read.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define TCHAR "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
#define HOSTCHAR "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-:[]"

enum { C_TOKEN = 1, C_VALUE = 2, C_HOST = 4, C_TARGET = 8 };
static unsigned char cls[256], lower[256];

enum kind { K_OTHER, K_HOST, K_CONNECTION, K_ORIGIN, K_REFERER, K_AGENT, K_FORBIDDEN };
struct name { const char *s; Py_ssize_t n; enum kind kind; };
#define NAME(s, k) {s, sizeof(s) - 1, k}
/* The lane's names first (they are the ones browsers send), then FORBIDDEN in headscan.py's terms. */
static const struct name NAMES[] = {
    NAME("host", K_HOST), NAME("user-agent", K_AGENT), NAME("referer", K_REFERER), NAME("origin", K_ORIGIN),
    NAME("connection", K_CONNECTION),
#define FIRST_FORBIDDEN 5
    NAME("cache-control", K_FORBIDDEN), NAME("pragma", K_FORBIDDEN), NAME("authorization", K_FORBIDDEN),
    NAME("proxy-authorization", K_FORBIDDEN), NAME("if-match", K_FORBIDDEN), NAME("if-none-match", K_FORBIDDEN),
    NAME("if-modified-since", K_FORBIDDEN), NAME("if-unmodified-since", K_FORBIDDEN), NAME("if-range", K_FORBIDDEN),
    NAME("range", K_FORBIDDEN), NAME("expect", K_FORBIDDEN), NAME("upgrade", K_FORBIDDEN),
    NAME("content-length", K_FORBIDDEN), NAME("transfer-encoding", K_FORBIDDEN), NAME("te", K_FORBIDDEN),
    NAME("trailer", K_FORBIDDEN), NAME("via", K_FORBIDDEN), NAME("cdn-loop", K_FORBIDDEN),
    NAME("edgeproxy-cluster", K_FORBIDDEN), NAME("max-forwards", K_FORBIDDEN), NAME("http2-settings", K_FORBIDDEN),
};
#define NNAMES (sizeof(NAMES) / sizeof(NAMES[0]))

static PyObject *GET, *HEAD, *V11, *V10;

/* p[0:n] lower-cased equals s (already lower-case) */
static int ci_equal(const unsigned char *p, const char *s, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        if (lower[p[i]] != (unsigned char)s[i])
            return 0;
    return 1;
}

static enum kind classify(const unsigned char *p, Py_ssize_t n)
{
    for (size_t i = 0; i < NNAMES; i++)
        if (NAMES[i].n == n && (unsigned char)NAMES[i].s[0] == lower[p[0]] && ci_equal(p, NAMES[i].s, n))
            return NAMES[i].kind;
    return K_OTHER;
}

struct span { const unsigned char *p; Py_ssize_t n; };

static PyObject *bytes_or_none(struct span v)
{
    if (v.p == NULL)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)v.p, v.n);
}

static PyObject *result(PyObject *method, struct span target, PyObject *version, struct span host, int keep_alive,
                        struct span origin, struct span referer, struct span agent, Py_ssize_t nfields)
{
    PyObject *t = PyTuple_New(9);
    if (t == NULL)
        return NULL;
    Py_INCREF(method);
    PyTuple_SET_ITEM(t, 0, method);
    PyTuple_SET_ITEM(t, 1, bytes_or_none(target));
    Py_INCREF(version);
    PyTuple_SET_ITEM(t, 2, version);
    PyTuple_SET_ITEM(t, 3, bytes_or_none(host));
    PyTuple_SET_ITEM(t, 4, PyBool_FromLong(keep_alive));
    PyTuple_SET_ITEM(t, 5, bytes_or_none(origin));
    PyTuple_SET_ITEM(t, 6, bytes_or_none(referer));
    PyTuple_SET_ITEM(t, 7, bytes_or_none(agent));
    PyTuple_SET_ITEM(t, 8, PyLong_FromSsize_t(nfields));
    for (int i = 0; i < 9; i++)
        if (PyTuple_GET_ITEM(t, i) == NULL) {
            Py_DECREF(t);
            return NULL;
        }
    return t;
}

static PyObject *scan_bytes(const unsigned char *s, Py_ssize_t len)
{
    const unsigned char *end = s + len;
    PyObject *method;
    struct span target, host = {NULL, 0}, conn = {NULL, 0}, origin = {NULL, 0}, referer = {NULL, 0},
                        agent = {NULL, 0};
    Py_ssize_t nfields = 0;

    if (len >= 4 && memcmp(s, "GET ", 4) == 0) {
        method = GET;
        s += 4;
    } else if (len >= 5 && memcmp(s, "HEAD ", 5) == 0) {
        method = HEAD;
        s += 5;
    } else
        Py_RETURN_NONE;
    target.p = s;
    if (s == end || *s != '/')
        Py_RETURN_NONE;
    while (s < end && (cls[*s] & C_TARGET))
        s++;
    target.n = s - target.p;
    if (end - s < 11 || memcmp(s, " HTTP/1.", 8) != 0 || (s[8] != '0' && s[8] != '1') || s[9] != '\r' ||
        s[10] != '\n')
        Py_RETURN_NONE;
    int minor = s[8] - '0';
    s += 11;

    for (;;) {
        if (end - s < 2)
            Py_RETURN_NONE;
        if (s[0] == '\r') { /* the empty line: it must end the data */
            if (s[1] == '\n' && end - s == 2)
                break;
            Py_RETURN_NONE;
        }
        const unsigned char *name = s;
        while (s < end && (cls[*s] & C_TOKEN))
            s++;
        if (s == name || s == end || *s != ':')
            Py_RETURN_NONE;
        Py_ssize_t nlen = s - name;
        s++;
        while (s < end && (*s == ' ' || *s == '\t'))
            s++;
        struct span value = {s, 0};
        const unsigned char *last = s; /* just past the last byte that is not SP/HTAB */
        while (s < end && (cls[*s] & C_VALUE)) {
            if (*s > ' ')
                last = s + 1;
            s++;
        }
        value.n = last - value.p;
        if (end - s < 2 || s[0] != '\r' || s[1] != '\n')
            Py_RETURN_NONE;
        s += 2;
        nfields++;
        switch (classify(name, nlen)) {
        case K_OTHER:
            break;
        case K_FORBIDDEN:
            Py_RETURN_NONE;
        case K_HOST:
            if (host.p != NULL)
                Py_RETURN_NONE;
            host = value;
            break;
        case K_CONNECTION:
            if (conn.p != NULL || !((value.n == 10 && ci_equal(value.p, "keep-alive", 10)) ||
                                    (value.n == 5 && ci_equal(value.p, "close", 5))))
                Py_RETURN_NONE;
            conn = value;
            break;
        case K_ORIGIN:
            if (origin.p != NULL)
                Py_RETURN_NONE;
            origin = value;
            break;
        case K_REFERER:
            if (referer.p == NULL)
                referer = value;
            break;
        case K_AGENT:
            if (agent.p == NULL)
                agent = value;
            break;
        }
    }
    if (host.p == NULL || host.n == 0)
        Py_RETURN_NONE;
    for (Py_ssize_t i = 0; i < host.n; i++)
        if (!(cls[host.p[i]] & C_HOST))
            Py_RETURN_NONE;
    int keep_alive = minor == 1 ? !(conn.p != NULL && conn.n == 5) : (conn.p != NULL && conn.n == 10);
    return result(method, target, minor == 1 ? V11 : V10, host, keep_alive, origin, referer, agent, nfields);
}

static PyObject *scan(PyObject *module, PyObject *data)
{
    if (PyBytes_CheckExact(data))
        return scan_bytes((const unsigned char *)PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data));
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *r = scan_bytes(view.buf, view.len);
    PyBuffer_Release(&view);
    return r;
}

/* The next CRLF at or after s, or end. */
static const unsigned char *crlf(const unsigned char *s, const unsigned char *end)
{
    for (; end - s >= 2; s++)
        if (s[0] == '\r' && s[1] == '\n')
            return s;
    return end;
}

static int add_named(PyObject *found, PyObject *const *names, Py_ssize_t nnames, const unsigned char *line,
                     const unsigned char *eol)
{
    const unsigned char *colon = memchr(line, ':', eol - line);
    if (colon == NULL)
        return 0;
    for (Py_ssize_t i = 0; i < nnames; i++) {
        if (!PyBytes_Check(names[i]) || PyBytes_GET_SIZE(names[i]) != colon - line ||
            !ci_equal(line, PyBytes_AS_STRING(names[i]), colon - line))
            continue;
        const unsigned char *v = colon + 1, *w = eol;
        while (v < w && (*v == ' ' || *v == '\t'))
            v++;
        while (w > v && (w[-1] == ' ' || w[-1] == '\t'))
            w--;
        PyObject *pair = Py_BuildValue("(Oy#)", names[i], (const char *)v, (Py_ssize_t)(w - v));
        if (pair == NULL)
            return -1;
        int rc = PyList_Append(found, pair);
        Py_DECREF(pair);
        return rc;
    }
    return 0;
}

static PyObject *fields_named(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "fields_named(data, names) takes 2 arguments");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *names = PySequence_Fast(args[1], "names must be iterable");
    PyObject *found = names == NULL ? NULL : PyList_New(0);
    if (found != NULL) {
        const unsigned char *s = view.buf, *end = s + view.len;
        s = crlf(s, end); /* past the request line */
        while (end - s >= 2) {
            s += 2;
            const unsigned char *eol = crlf(s, end);
            if (eol == s)
                break;
            if (add_named(found, PySequence_Fast_ITEMS(names), PySequence_Fast_GET_SIZE(names), s, eol) < 0) {
                Py_CLEAR(found);
                break;
            }
            s = eol;
        }
    }
    Py_XDECREF(names);
    PyBuffer_Release(&view);
    return found;
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)scan, METH_O, "scan(data) -> the head's fields for the fast lane, or None"},
    {"fields_named", (PyCFunction)(void (*)(void))fields_named, METH_FASTCALL,
     "fields_named(data, names) -> [(name, value)] of an accepted head"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "edgeproxy.http._headscan",
                                        "The fast lane's head scanner (see edgeproxy/http/headscan.py).", -1, methods};

PyMODINIT_FUNC PyInit__headscan(void)
{
    for (int c = 0; c < 256; c++)
        lower[c] = (unsigned char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
    for (const char *p = TCHAR; *p; p++)
        cls[(unsigned char)*p] |= C_TOKEN;
    for (const char *p = HOSTCHAR; *p; p++)
        cls[(unsigned char)*p] |= C_HOST;
    for (int c = 0x21; c <= 0x7e; c++)
        cls[c] |= C_VALUE | (c != '#' ? C_TARGET : 0);
    cls[' '] |= C_VALUE;
    cls['\t'] |= C_VALUE;

    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    PyObject *forbidden = PyTuple_New(NNAMES - FIRST_FORBIDDEN);
    if (forbidden == NULL)
        goto fail;
    for (size_t i = FIRST_FORBIDDEN; i < NNAMES; i++)
        PyTuple_SET_ITEM(forbidden, i - FIRST_FORBIDDEN, PyBytes_FromStringAndSize(NAMES[i].s, NAMES[i].n));
    /* The constants are held by the module too, so they live as long as anything may return them. */
    GET = PyBytes_FromString("GET");
    HEAD = PyBytes_FromString("HEAD");
    V11 = PyBytes_FromString("1.1");
    V10 = PyBytes_FromString("1.0");
    if (PyModule_AddObject(m, "FORBIDDEN", forbidden) < 0 ||
        PyModule_AddObject(m, "TCHAR", PyBytes_FromString(TCHAR)) < 0 ||
        PyModule_AddObject(m, "HOSTCHAR", PyBytes_FromString(HOSTCHAR)) < 0 || GET == NULL || HEAD == NULL ||
        V11 == NULL || V10 == NULL || PyModule_AddObjectRef(m, "GET", GET) < 0 ||
        PyModule_AddObjectRef(m, "HEAD", HEAD) < 0 || PyModule_AddObjectRef(m, "V11", V11) < 0 ||
        PyModule_AddObjectRef(m, "V10", V10) < 0)
        goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
