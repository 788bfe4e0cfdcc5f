/* pymaster.protocols._codec: the compiled half of the per-request codec.
 *
 * Five functions, each a drop-in for a pure-Python one that stays the reference
 * (pymaster/protocols/speedups.py chooses; PYMASTER_PURE_PYTHON=1 forces Python):
 *
 *   decode_environ(block)      -> (dict, nvars)     protocols/uwsgi.py _decode_environ_py
 *   head_ok(status, headers)   -> bool              apps/wsgi.py validate_head (True: valid;
 *                                                   False: let Python decide and raise)
 *   raw_head(proto, status, headers) -> bytes|None  protocols/uwsgi.py RawFraming.head
 *   http_head(version, status, headers, length, no_body, keep_alive)
 *                              -> (bytes, keep_alive, chunked) | None
 *                                                   protocols/http.py HttpFraming.head
 *   headers_environ(env, headers) -> bool           protocols/http.py _headers_to_environ_py
 *
 * decode_environ raises the UwsgiError given to setup() with the Python codec's messages.
 * The framing functions return None for anything but plain str in a list of 2-tuples of
 * 1-byte (latin-1) strings: the caller then runs the Python code, so unusual input gets
 * exactly the Python behaviour (its exceptions included). tests/unit/test_speedups.py
 * checks both halves against each other on arbitrary input.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *UwsgiError = NULL;

/* ---------------------------------------------------------------- interned keys */

static const char *KNOWN_KEYS[] = {
    "QUERY_STRING", "REQUEST_METHOD", "CONTENT_TYPE", "CONTENT_LENGTH", "REQUEST_URI",
    "PATH_INFO", "DOCUMENT_ROOT", "SERVER_PROTOCOL", "REQUEST_SCHEME", "HTTPS",
    "REMOTE_ADDR", "REMOTE_PORT", "SERVER_PORT", "SERVER_NAME", "SCRIPT_NAME",
    "UWSGI_SCHEME", "HTTP_HOST", "HTTP_USER_AGENT", "HTTP_ACCEPT", "HTTP_ACCEPT_ENCODING",
    "HTTP_ACCEPT_LANGUAGE", "HTTP_CONNECTION", "HTTP_COOKIE", "HTTP_REFERER",
    "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_REAL_IP", "HTTP_CACHE_CONTROL",
    "HTTP_UPGRADE_INSECURE_REQUESTS", "HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH",
    "HTTP_AUTHORIZATION", "HTTP_ORIGIN", "HTTP_IF_MODIFIED_SINCE", "HTTP_IF_NONE_MATCH",
    "REMOTE_USER", "UWSGI_FASTROUTER_KEY", "HTTP_PRAGMA", "HTTP_DNT",
};
#define NKEYS (sizeof(KNOWN_KEYS) / sizeof(KNOWN_KEYS[0]))
static PyObject *known_str[NKEYS];
static Py_ssize_t known_len[NKEYS];

/* A new reference to the str for key bytes: an interned one for the common CGI names
 * (hash already computed), else a fresh latin-1 decode. */
static PyObject *
key_str(const char *p, Py_ssize_t n)
{
    for (size_t i = 0; i < NKEYS; i++) {
        if (known_len[i] == n && memcmp(KNOWN_KEYS[i], p, (size_t)n) == 0) {
            Py_INCREF(known_str[i]);
            return known_str[i];
        }
    }
    return PyUnicode_DecodeLatin1(p, n, NULL);
}

/* ---------------------------------------------------------------- uwsgi vars */

static PyObject *
strsize_error(Py_ssize_t n)
{
    PyErr_Format(UwsgiError, "invalid uwsgi request (current strsize: %zd). skip.", n);
    return NULL;
}

static PyObject *
decode_environ(PyObject *self, PyObject *arg)
{
    Py_buffer view;
    if (UwsgiError == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_codec.setup() was not called");
        return NULL;
    }
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *buf = (const unsigned char *)view.buf;
    Py_ssize_t end = view.len, pos = 0, n = 0;
    PyObject *env = PyDict_New();
    if (env == NULL)
        goto fail;
    while (pos < end) {
        if (pos + 2 > end) {
            strsize_error(end - pos);
            goto fail;
        }
        Py_ssize_t klen = buf[pos] | (buf[pos + 1] << 8);
        pos += 2;
        if (klen == 0) {
            PyErr_SetString(UwsgiError, "uwsgi key cannot be null. skip this var.");
            goto fail;
        }
        if (pos + klen + 2 > end) {
            strsize_error(klen);
            goto fail;
        }
        const char *kp = (const char *)buf + pos;
        pos += klen;
        Py_ssize_t vlen = buf[pos] | (buf[pos + 1] << 8);
        pos += 2;
        if (pos + vlen > end) {
            strsize_error(vlen);
            goto fail;
        }
        PyObject *key = key_str(kp, klen);
        if (key == NULL)
            goto fail;
        PyObject *value = PyUnicode_DecodeLatin1((const char *)buf + pos, vlen, NULL);
        if (value == NULL) {
            Py_DECREF(key);
            goto fail;
        }
        pos += vlen;
        int rc = PyDict_SetItem(env, key, value);
        Py_DECREF(key);
        Py_DECREF(value);
        if (rc < 0)
            goto fail;
        n++;
    }
    PyBuffer_Release(&view);
    PyObject *result = Py_BuildValue("(Nn)", env, n);
    return result;
fail:
    Py_XDECREF(env);
    PyBuffer_Release(&view);
    return NULL;
}

/* ---------------------------------------------------------------- head checks */

/* RFC 9110 tchar: ! # $ % & ' * + - . ^ _ ` | ~ DIGIT ALPHA */
static unsigned char TCHAR[256];

static void
init_tchar(void)
{
    const char *extra = "!#$%&'*+-.^_`|~";
    for (int c = '0'; c <= '9'; c++)
        TCHAR[c] = 1;
    for (int c = 'a'; c <= 'z'; c++)
        TCHAR[c] = 1;
    for (int c = 'A'; c <= 'Z'; c++)
        TCHAR[c] = 1;
    for (const char *p = extra; *p; p++)
        TCHAR[(unsigned char)*p] = 1;
}

/* The str as latin-1 bytes when it is a 1-byte-kind exact str, else NULL (no error set). */
static const unsigned char *
latin1(PyObject *s, Py_ssize_t *len)
{
    if (!PyUnicode_CheckExact(s))
        return NULL;
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(s) < 0) {
        PyErr_Clear();
        return NULL;
    }
#endif
    if (PyUnicode_KIND(s) != PyUnicode_1BYTE_KIND)
        return NULL;
    *len = PyUnicode_GET_LENGTH(s);
    return (const unsigned char *)PyUnicode_DATA(s);
}

static int
status_ok(PyObject *status)
{
    Py_ssize_t n;
    const unsigned char *s = latin1(status, &n);
    if (s == NULL || n < 4 || s[0] < '1' || s[0] > '9' || s[1] < '0' || s[1] > '9' ||
        s[2] < '0' || s[2] > '9' || s[3] != ' ')
        return 0;
    for (Py_ssize_t i = 4; i < n; i++)
        if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0')
            return 0;
    return 1;
}

static int
name_ok(PyObject *name)
{
    Py_ssize_t n;
    const unsigned char *s = latin1(name, &n);
    if (s == NULL || n == 0)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (!TCHAR[s[i]])
            return 0;
    return 1;
}

static int
value_ok(PyObject *value)
{
    Py_ssize_t n;
    const unsigned char *s = latin1(value, &n);
    if (s == NULL)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0')
            return 0;
    return 1;
}

/* True only when validate_head() would accept (status, headers) as they are. False means
 * "not sure": the caller runs the Python checks (they may still accept, e.g. a value with
 * characters beyond latin-1, or they raise the error naming the bad part). */
static PyObject *
head_ok(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "head_ok(status, headers)");
        return NULL;
    }
    PyObject *headers = args[1];
    if (!status_ok(args[0]) || !PyList_CheckExact(headers))
        Py_RETURN_FALSE;
    Py_ssize_t n = PyList_GET_SIZE(headers);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(headers, i);
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2 ||
            !name_ok(PyTuple_GET_ITEM(item, 0)) || !value_ok(PyTuple_GET_ITEM(item, 1)))
            Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}

/* ---------------------------------------------------------------- framing */

typedef struct {
    char *p;
    Py_ssize_t len, cap;
} Buf;

static int
buf_put(Buf *b, const void *data, Py_ssize_t n)
{
    if (b->len + n > b->cap) {
        Py_ssize_t cap = b->cap * 2;
        if (cap < b->len + n)
            cap = b->len + n;
        char *p = PyMem_Realloc(b->p, (size_t)cap);
        if (p == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, (size_t)n);
    b->len += n;
    return 0;
}

#define PUT_LIT(b, lit) buf_put((b), (lit), (Py_ssize_t)(sizeof(lit) - 1))

static int
buf_init(Buf *b)
{
    b->cap = 512;
    b->len = 0;
    b->p = PyMem_Malloc((size_t)b->cap);
    if (b->p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static PyObject *
buf_bytes(Buf *b)
{
    PyObject *out = PyBytes_FromStringAndSize(b->p, b->len);
    PyMem_Free(b->p);
    b->p = NULL;
    return out;
}

/* A list of 2-tuples of 1-byte str, else 0 (the caller falls back to Python). */
static int
plain_headers(PyObject *headers)
{
    if (!PyList_CheckExact(headers))
        return 0;
    Py_ssize_t n = PyList_GET_SIZE(headers), len;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(headers, i);
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2 ||
            latin1(PyTuple_GET_ITEM(item, 0), &len) == NULL ||
            latin1(PyTuple_GET_ITEM(item, 1), &len) == NULL)
            return 0;
    }
    return 1;
}

static int
put_str(Buf *b, PyObject *s)
{
    Py_ssize_t n;
    const unsigned char *p = latin1(s, &n);
    return buf_put(b, p, n);
}

static int
put_header(Buf *b, PyObject *item)
{
    if (put_str(b, PyTuple_GET_ITEM(item, 0)) < 0 || PUT_LIT(b, ": ") < 0 ||
        put_str(b, PyTuple_GET_ITEM(item, 1)) < 0 || PUT_LIT(b, "\r\n") < 0)
        return -1;
    return 0;
}

/* raw_head(protocol, status, headers): `protocol status\r\n` + `name: value\r\n`... + CRLF */
static PyObject *
raw_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "raw_head(protocol, status, headers)");
        return NULL;
    }
    Py_ssize_t n;
    if (latin1(args[0], &n) == NULL || latin1(args[1], &n) == NULL || !plain_headers(args[2]))
        Py_RETURN_NONE;
    Buf b;
    if (buf_init(&b) < 0)
        return NULL;
    PyObject *headers = args[2];
    if (put_str(&b, args[0]) < 0 || PUT_LIT(&b, " ") < 0 || put_str(&b, args[1]) < 0 ||
        PUT_LIT(&b, "\r\n") < 0)
        goto fail;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(headers); i++)
        if (put_header(&b, PyList_GET_ITEM(headers, i)) < 0)
            goto fail;
    if (PUT_LIT(&b, "\r\n") < 0)
        goto fail;
    return buf_bytes(&b);
fail:
    PyMem_Free(b.p);
    return NULL;
}

/* ASCII case-insensitive equality of a 1-byte str with a lowercase literal: the same as
 * `s.lower() == lit` for latin-1 strings (no latin-1 letter lowers to ASCII). */
static int
lower_is(PyObject *s, const char *lit)
{
    Py_ssize_t n;
    const unsigned char *p = latin1(s, &n);
    if (p == NULL || (size_t)n != strlen(lit))
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c + 32);
        if (c != (unsigned char)lit[i])
            return 0;
    }
    return 1;
}

/* http_head(version, status, headers, length, no_body, keep_alive):
 * HttpFraming.head after its usable() check -> (bytes, keep_alive, chunked), or None. */
static PyObject *
http_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "http_head(version, status, headers, length, no_body, keep_alive)");
        return NULL;
    }
    PyObject *version = args[0], *status = args[1], *headers = args[2], *length = args[3];
    int no_body = PyObject_IsTrue(args[4]);
    int keep_alive = PyObject_IsTrue(args[5]);
    if (no_body < 0 || keep_alive < 0)
        return NULL;
    Py_ssize_t vlen, slen;
    const unsigned char *v = latin1(version, &vlen);
    const unsigned char *s = latin1(status, &slen);
    if (v == NULL || s == NULL || !plain_headers(headers) ||
        (length != Py_None && !PyLong_CheckExact(length)))
        Py_RETURN_NONE;
    int v11 = vlen == 3 && memcmp(v, "1.1", 3) == 0;
    int chunked = 0, has_length = 0;
    Buf b;
    if (buf_init(&b) < 0)
        return NULL;
    if (PUT_LIT(&b, "HTTP/") < 0 || buf_put(&b, v, vlen) < 0 || PUT_LIT(&b, " ") < 0 ||
        buf_put(&b, s, slen) < 0 || PUT_LIT(&b, "\r\n") < 0)
        goto fail;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(headers); i++) {
        PyObject *item = PyList_GET_ITEM(headers, i);
        PyObject *name = PyTuple_GET_ITEM(item, 0);
        if (lower_is(name, "content-length")) {
            has_length = 1;
        }
        else if (lower_is(name, "connection")) {
            if (lower_is(PyTuple_GET_ITEM(item, 1), "close"))
                keep_alive = 0;
            continue;
        }
        else if (lower_is(name, "transfer-encoding")) {
            continue;
        }
        if (put_header(&b, item) < 0)
            goto fail;
    }
    int add_length = 0;
    if (!has_length && !no_body) {
        if (length != Py_None)
            add_length = 1;
        else if (v11 && keep_alive) {
            chunked = 1;
            if (PUT_LIT(&b, "Transfer-Encoding: chunked\r\n") < 0)
                goto fail;
        }
        else
            keep_alive = 0;
    }
    else if (!has_length && no_body && length != Py_None) {
        /* int(status[:3]) not in (204, 304); anything but 3 ASCII digits: Python decides */
        if (slen < 3 || s[0] < '0' || s[0] > '9' || s[1] < '0' || s[1] > '9' || s[2] < '0' ||
            s[2] > '9') {
            PyMem_Free(b.p);
            Py_RETURN_NONE;
        }
        int code = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
        add_length = code != 204 && code != 304;
    }
    if (add_length) {
        PyObject *text = PyObject_Str(length);
        if (text == NULL)
            goto fail;
        Py_ssize_t tn;
        const char *tp = PyUnicode_AsUTF8AndSize(text, &tn);
        int rc = tp == NULL ? -1
                            : (PUT_LIT(&b, "Content-Length: ") < 0 || buf_put(&b, tp, tn) < 0 ||
                               PUT_LIT(&b, "\r\n") < 0)
                                  ? -1
                                  : 0;
        Py_DECREF(text);
        if (rc < 0)
            goto fail;
    }
    if (v11) {
        if (!keep_alive && PUT_LIT(&b, "Connection: close\r\n") < 0)
            goto fail;
    }
    else if (keep_alive && PUT_LIT(&b, "Connection: keep-alive\r\n") < 0)
        goto fail;
    if (PUT_LIT(&b, "\r\n") < 0)
        goto fail;
    PyObject *head = buf_bytes(&b);
    if (head == NULL)
        return NULL;
    return Py_BuildValue("(NOO)", head, keep_alive ? Py_True : Py_False,
                         chunked ? Py_True : Py_False);
fail:
    PyMem_Free(b.p);
    return NULL;
}

/* ---------------------------------------------------------------- HTTP head -> environ */

/* headers_environ(env, headers): the request's header fields into the environ as
 * protocols/http.py _headers_to_environ_py puts them (HTTP_*, CONTENT_TYPE, CONTENT_LENGTH,
 * names with "_" dropped, repeats joined with "," or "; " for Cookie). True when done;
 * False, with env untouched, unless every field is a (bytes, bytes) tuple with an ASCII
 * name (str.upper() of other latin-1 characters changes length or leaves latin-1): then
 * the Python code runs. */
static PyObject *
headers_environ(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "headers_environ(env, headers)");
        return NULL;
    }
    PyObject *env = args[0], *headers = args[1];
    if (!PyDict_CheckExact(env) || !PyList_CheckExact(headers))
        Py_RETURN_FALSE;
    Py_ssize_t n = PyList_GET_SIZE(headers);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(headers, i);
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2 ||
            !PyBytes_CheckExact(PyTuple_GET_ITEM(item, 0)) ||
            !PyBytes_CheckExact(PyTuple_GET_ITEM(item, 1)))
            Py_RETURN_FALSE;
        PyObject *name = PyTuple_GET_ITEM(item, 0);
        const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(name);
        for (Py_ssize_t k = 0; k < PyBytes_GET_SIZE(name); k++)
            if (p[k] >= 0x80)
                Py_RETURN_FALSE;
    }
    char small[256];
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(headers); i++) {
        PyObject *item = PyList_GET_ITEM(headers, i);
        PyObject *name = PyTuple_GET_ITEM(item, 0), *value = PyTuple_GET_ITEM(item, 1);
        const char *np = PyBytes_AS_STRING(name);
        Py_ssize_t nl = PyBytes_GET_SIZE(name);
        if (memchr(np, '_', (size_t)nl) != NULL)
            continue; /* X_Forwarded_For would shadow X-Forwarded-For: dropped */
        char *key = nl + 5 <= (Py_ssize_t)sizeof(small) ? small : PyMem_Malloc((size_t)nl + 5);
        if (key == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        memcpy(key, "HTTP_", 5);
        for (Py_ssize_t k = 0; k < nl; k++) {
            char c = np[k];
            if (c >= 'a' && c <= 'z')
                c = (char)(c - 32);
            else if (c == '-')
                c = '_';
            key[5 + k] = c;
        }
        int plain = (nl == 12 && memcmp(key + 5, "CONTENT_TYPE", 12) == 0) ||
                    (nl == 14 && memcmp(key + 5, "CONTENT_LENGTH", 14) == 0);
        PyObject *k = plain ? PyUnicode_DecodeASCII(key + 5, nl, NULL)
                            : PyUnicode_DecodeASCII(key, nl + 5, NULL);
        if (key != small)
            PyMem_Free(key);
        if (k == NULL)
            return NULL;
        PyObject *v = PyUnicode_DecodeLatin1(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value),
                                             NULL);
        if (v == NULL) {
            Py_DECREF(k);
            return NULL;
        }
        int rc;
        PyObject *old = plain ? NULL : PyDict_GetItemWithError(env, k);
        if (old == NULL && PyErr_Occurred())
            rc = -1;
        else if (old == NULL)
            rc = PyDict_SetItem(env, k, v);
        else {
            int cookie = PyUnicode_CompareWithASCIIString(k, "HTTP_COOKIE") == 0;
            PyObject *sep = PyUnicode_FromString(cookie ? "; " : ",");
            PyObject *tail = sep == NULL ? NULL : PyUnicode_Concat(sep, v);
            Py_XDECREF(sep);
            Py_INCREF(old);
            PyObject *joined = tail == NULL ? NULL : PyNumber_InPlaceAdd(old, tail);
            Py_DECREF(old);
            Py_XDECREF(tail);
            rc = joined == NULL ? -1 : PyDict_SetItem(env, k, joined);
            Py_XDECREF(joined);
        }
        Py_DECREF(k);
        Py_DECREF(v);
        if (rc < 0)
            return NULL;
    }
    Py_RETURN_TRUE;
}

/* ---------------------------------------------------------------- module */

static PyObject *
setup(PyObject *self, PyObject *error)
{
    if (!PyType_Check(error) || !PyType_IsSubtype((PyTypeObject *)error,
                                                  (PyTypeObject *)PyExc_Exception)) {
        PyErr_SetString(PyExc_TypeError, "setup(error): an exception class");
        return NULL;
    }
    Py_INCREF(error);
    Py_XSETREF(UwsgiError, error);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"setup", (PyCFunction)setup, METH_O, "setup(UwsgiError): the error decode_environ raises"},
    {"decode_environ", (PyCFunction)decode_environ, METH_O,
     "decode_environ(block) -> (dict of latin-1 str, number of vars)"},
    {"head_ok", (PyCFunction)(void (*)(void))head_ok, METH_FASTCALL,
     "head_ok(status, headers) -> True when the WSGI status and headers are valid as given"},
    {"raw_head", (PyCFunction)(void (*)(void))raw_head, METH_FASTCALL,
     "raw_head(protocol, status, headers) -> bytes, or None: use the Python framing"},
    {"http_head", (PyCFunction)(void (*)(void))http_head, METH_FASTCALL,
     "http_head(version, status, headers, length, no_body, keep_alive) -> "
     "(bytes, keep_alive, chunked), or None: use the Python framing"},
    {"headers_environ", (PyCFunction)(void (*)(void))headers_environ, METH_FASTCALL,
     "headers_environ(env, headers) -> True when the header fields were put in env, False: "
     "use the Python code"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_codec",
    "The compiled per-request codec (see pymaster/protocols/speedups.py).", -1, methods,
};

PyMODINIT_FUNC
PyInit__codec(void)
{
    init_tchar();
    for (size_t i = 0; i < NKEYS; i++) {
        known_len[i] = (Py_ssize_t)strlen(KNOWN_KEYS[i]);
        known_str[i] = PyUnicode_InternFromString(KNOWN_KEYS[i]);
        if (known_str[i] == NULL)
            return NULL;
        if (PyObject_Hash(known_str[i]) == -1)
            return NULL;
    }
    return PyModule_Create(&module);
}
