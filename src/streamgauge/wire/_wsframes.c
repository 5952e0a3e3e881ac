/* WebSocket text frames (or HTTP/1.1 chunks) of a fan-out round, one per connection, in one
 * call; and joins of many lists of the same items (a round's metadata messages).
 *
 * The Python twins, and the contract, are ``streamgauge.wire.wsframes.joined_frames`` and
 * ``joined_lists``: this module is those functions without the per-connection Python work (a
 * list comprehension, a join, two formats and two copies a connection, a thousand
 * connections a round). The module is optional: where it is not built, the Python twins run,
 * and the tests check that both give the same bytes. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static Py_ssize_t
header_size(Py_ssize_t n)
{
    return n < 126 ? 2 : (n < 65536 ? 4 : 10);
}

/* RFC 6455 5.2: FIN, opcode 1 (text), unmasked, then the payload length. */
static char *
put_header(char *p, Py_ssize_t n)
{
    *p++ = (char)0x81;
    if (n < 126) {
        *p++ = (char)n;
    }
    else if (n < 65536) {
        *p++ = (char)126;
        *p++ = (char)((n >> 8) & 0xff);
        *p++ = (char)(n & 0xff);
    }
    else {
        uint64_t u = (uint64_t)n;
        *p++ = (char)127;
        for (int shift = 56; shift >= 0; shift -= 8) {
            *p++ = (char)((u >> shift) & 0xff);
        }
    }
    return p;
}

/* RFC 9112 7.1: the chunk size in hexadecimal, CRLF; the data and a CRLF follow. */
static Py_ssize_t
chunk_header_size(Py_ssize_t n)
{
    Py_ssize_t digits = 1;
    while (n >>= 4) {
        digits++;
    }
    return digits + 2;
}

static char *
put_chunk_header(char *p, Py_ssize_t n)
{
    static const char hex[] = "0123456789abcdef";
    Py_ssize_t digits = chunk_header_size(n) - 2;
    for (Py_ssize_t k = digits - 1; k >= 0; k--) {
        p[k] = hex[n & 0xf];
        n >>= 4;
    }
    p += digits;
    *p++ = '\r';
    *p++ = '\n';
    return p;
}

static int
index_at(PyObject *list, Py_ssize_t i, const char *name, Py_ssize_t *out)
{
    PyObject *item = PyList_GET_ITEM(list, i);
    Py_ssize_t v = PyLong_AsSsize_t(item);
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Format(PyExc_TypeError, "%s[%zd] is not an int", name, i);
        return -1;
    }
    *out = v;
    return 0;
}

/* ``picked``: native int64 values (``ndarray.tobytes``), and how many. */
static int
picked_of(PyObject *obj, const char **picked, Py_ssize_t *n)
{
    Py_ssize_t size = PyBytes_GET_SIZE(obj);
    if (size % 8) {
        PyErr_SetString(PyExc_ValueError, "picked is not a whole number of int64 values");
        return -1;
    }
    *picked = PyBytes_AS_STRING(obj);
    *n = size / 8;
    return 0;
}

static int64_t
picked_at(const char *picked, Py_ssize_t k)
{
    int64_t r;
    memcpy(&r, picked + 8 * k, 8);
    return r;
}

static PyObject *
joined_frames(PyObject *module, PyObject *args)
{
    PyObject *rows, *picked_obj, *los, *his, *cursors, *before;
    const char *prefix, *infix, *tail;
    Py_ssize_t prefix_n, infix_n, tail_n, trim;
    int chunked = 0;
    if (!PyArg_ParseTuple(args, "O!SO!O!OO!y#y#y#n|p:joined_frames", &PyList_Type, &rows,
                          &picked_obj, &PyList_Type, &los, &PyList_Type, &his, &cursors,
                          &PyList_Type, &before, &prefix, &prefix_n, &infix, &infix_n, &tail,
                          &tail_n, &trim, &chunked)) {
        return NULL;
    }
    if (trim < 0) {
        PyErr_SetString(PyExc_ValueError, "trim must not be negative");
        return NULL;
    }
    if (cursors != Py_None && !PyList_Check(cursors)) {
        PyErr_SetString(PyExc_TypeError, "cursors is neither a list nor None");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(los);
    if (PyList_GET_SIZE(his) != count ||
        (cursors != Py_None && PyList_GET_SIZE(cursors) != count) ||
        PyList_GET_SIZE(before) != count) {
        PyErr_SetString(PyExc_ValueError, "los, his, cursors and before differ in length");
        return NULL;
    }
    const char *picked;
    Py_ssize_t picked_n;
    if (picked_of(picked_obj, &picked, &picked_n) < 0) {
        return NULL;
    }
    Py_ssize_t nrows = PyList_GET_SIZE(rows);

    PyObject *out = PyList_New(count);
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t lo, hi;
        long long cursor;
        if (index_at(los, i, "los", &lo) < 0 || index_at(his, i, "his", &hi) < 0) {
            goto fail;
        }
        cursor = 0;
        if (cursors != Py_None) {
            cursor = PyLong_AsLongLong(PyList_GET_ITEM(cursors, i));
            if (cursor == -1 && PyErr_Occurred()) {
                goto fail;
            }
        }
        if (lo < 0 || hi > picked_n || lo >= hi) {
            PyErr_Format(PyExc_ValueError, "connection %zd: rows [%zd, %zd) out of picked's %zd",
                         i, lo, hi, picked_n);
            goto fail;
        }
        PyObject *lead = PyList_GET_ITEM(before, i);
        Py_ssize_t lead_n = 0;
        if (lead != Py_None) {
            if (!PyBytes_Check(lead)) {
                PyErr_Format(PyExc_TypeError, "before[%zd] is neither bytes nor None", i);
                goto fail;
            }
            lead_n = PyBytes_GET_SIZE(lead);
        }
        char number[32];
        int number_n = 0;
        if (cursors != Py_None) {
            number_n = snprintf(number, sizeof number, "%lld", cursor);
        }
        Py_ssize_t joined = 0;
        for (Py_ssize_t k = lo; k < hi; k++) {
            int64_t r = picked_at(picked, k);
            if (r < 0 || r >= nrows) {
                PyErr_Format(PyExc_IndexError, "picked[%zd] = %lld: no such row", k,
                             (long long)r);
                goto fail;
            }
            PyObject *row = PyList_GET_ITEM(rows, (Py_ssize_t)r);
            if (!PyBytes_Check(row)) {
                PyErr_Format(PyExc_TypeError, "rows[%lld] is not bytes", (long long)r);
                goto fail;
            }
            joined += PyBytes_GET_SIZE(row);
        }
        if (joined < trim) {
            PyErr_Format(PyExc_ValueError, "connection %zd: rows shorter than trim", i);
            goto fail;
        }
        Py_ssize_t payload = prefix_n + number_n + infix_n + joined - trim + tail_n;
        Py_ssize_t size;
        if (chunked) {  /* one chunk: the lead, then the message */
            payload += lead_n;
            if (payload == 0) {  /* a chunk of size 0 would end the response */
                PyErr_Format(PyExc_ValueError, "connection %zd: an empty chunk", i);
                goto fail;
            }
            size = chunk_header_size(payload) + payload + 2;
        }
        else {
            size = header_size(payload) + payload;
            if (lead != Py_None) {
                size += header_size(lead_n) + lead_n;
            }
        }
        PyObject *frame = PyBytes_FromStringAndSize(NULL, size);
        if (frame == NULL) {
            goto fail;
        }
        char *p = PyBytes_AS_STRING(frame);
        if (chunked) {
            p = put_chunk_header(p, payload);
        }
        if (lead != Py_None) {
            if (!chunked) {
                p = put_header(p, lead_n);
            }
            memcpy(p, PyBytes_AS_STRING(lead), lead_n);
            p += lead_n;
        }
        if (!chunked) {
            p = put_header(p, payload);
        }
        memcpy(p, prefix, prefix_n);
        p += prefix_n;
        memcpy(p, number, number_n);
        p += number_n;
        memcpy(p, infix, infix_n);
        p += infix_n;
        Py_ssize_t left = joined - trim; /* the rows' bytes to copy: never past the frame */
        for (Py_ssize_t k = lo; k < hi && left > 0; k++) {
            int64_t r = picked_at(picked, k);
            PyObject *row = PyList_GET_ITEM(rows, (Py_ssize_t)r);
            Py_ssize_t n = PyBytes_GET_SIZE(row);
            if (n > left) {
                n = left;
            }
            memcpy(p, PyBytes_AS_STRING(row), n);
            p += n;
            left -= n;
        }
        memcpy(p, tail, tail_n);
        p += tail_n;
        if (chunked) {
            *p++ = '\r';
            *p++ = '\n';
        }
        PyList_SET_ITEM(out, i, frame);
    }
    return out;

fail:
    Py_DECREF(out);
    return NULL;
}

static PyObject *
joined_lists(PyObject *module, PyObject *args)
{
    PyObject *items, *picked_obj, *los, *his;
    const char *prefix, *sep, *tail;
    Py_ssize_t prefix_n, sep_n, tail_n;
    if (!PyArg_ParseTuple(args, "O!SO!O!y#y#y#:joined_lists", &PyList_Type, &items,
                          &picked_obj, &PyList_Type, &los, &PyList_Type, &his, &prefix,
                          &prefix_n, &sep, &sep_n, &tail, &tail_n)) {
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(los);
    if (PyList_GET_SIZE(his) != count) {
        PyErr_SetString(PyExc_ValueError, "los and his differ in length");
        return NULL;
    }
    const char *picked;
    Py_ssize_t picked_n;
    if (picked_of(picked_obj, &picked, &picked_n) < 0) {
        return NULL;
    }
    Py_ssize_t nitems = PyList_GET_SIZE(items);

    PyObject *out = PyList_New(count);
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t lo, hi;
        if (index_at(los, i, "los", &lo) < 0 || index_at(his, i, "his", &hi) < 0) {
            goto fail;
        }
        if (lo < 0 || hi > picked_n || lo > hi) {
            PyErr_Format(PyExc_ValueError, "list %zd: items [%zd, %zd) out of picked's %zd",
                         i, lo, hi, picked_n);
            goto fail;
        }
        Py_ssize_t size = prefix_n + tail_n + (hi > lo ? (hi - lo - 1) * sep_n : 0);
        for (Py_ssize_t k = lo; k < hi; k++) {
            int64_t r = picked_at(picked, k);
            if (r < 0 || r >= nitems) {
                PyErr_Format(PyExc_IndexError, "picked[%zd] = %lld: no such item", k,
                             (long long)r);
                goto fail;
            }
            PyObject *item = PyList_GET_ITEM(items, (Py_ssize_t)r);
            if (!PyBytes_Check(item)) {
                PyErr_Format(PyExc_TypeError, "items[%lld] is not bytes", (long long)r);
                goto fail;
            }
            size += PyBytes_GET_SIZE(item);
        }
        PyObject *joined = PyBytes_FromStringAndSize(NULL, size);
        if (joined == NULL) {
            goto fail;
        }
        char *p = PyBytes_AS_STRING(joined);
        memcpy(p, prefix, prefix_n);
        p += prefix_n;
        for (Py_ssize_t k = lo; k < hi; k++) {
            int64_t r = picked_at(picked, k);
            PyObject *item = PyList_GET_ITEM(items, (Py_ssize_t)r);
            if (k > lo) {
                memcpy(p, sep, sep_n);
                p += sep_n;
            }
            Py_ssize_t n = PyBytes_GET_SIZE(item);
            memcpy(p, PyBytes_AS_STRING(item), n);
            p += n;
        }
        memcpy(p, tail, tail_n);
        PyList_SET_ITEM(out, i, joined);
    }
    return out;

fail:
    Py_DECREF(out);
    return NULL;
}

static PyMethodDef methods[] = {
    {"joined_lists", joined_lists, METH_VARARGS,
     "joined_lists(items, picked, los, his, prefix, sep, tail)\n"
     "--\n\n"
     "One bytes object a list: see streamgauge.wire.wsframes.joined_lists."},
    {"joined_frames", joined_frames, METH_VARARGS,
     "joined_frames(rows, picked, los, his, cursors, before, prefix, infix, tail, trim,"
     " chunked=False)\n"
     "--\n\n"
     "One bytes object a connection: see streamgauge.wire.wsframes.joined_frames."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_wsframes", "WebSocket text frames of a fan-out round.", -1, methods,
};

PyMODINIT_FUNC
PyInit__wsframes(void)
{
    return PyModule_Create(&module);
}
