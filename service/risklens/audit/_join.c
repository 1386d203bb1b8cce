/* risklens.audit._join: join_rows(pieces, index) -> list[bytes]
 *
 * Row r of the result is b"".join(pieces[i] for i in index[r]): a batch of audit record bodies
 * laid out as rows of positions in one list of texts (see risklens.audit._body). In Python each
 * body is ~170 small pieces gathered into a list and joined (~10 us a body); here one pass sums
 * the lengths and a second copies the bytes into the new object.
 *
 * pieces: a list of bytes; index: a C-contiguous 2-d buffer of int32 (numpy's "i" or "=i4"),
 * every value a position in pieces (checked: a bad position raises IndexError).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *
join_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "join_rows(pieces, index) takes exactly 2 arguments");
        return NULL;
    }
    PyObject *pieces = args[0];
    if (!PyList_CheckExact(pieces)) {
        PyErr_SetString(PyExc_TypeError, "pieces must be a list of bytes");
        return NULL;
    }
    Py_ssize_t n_pieces = PyList_GET_SIZE(pieces);
    for (Py_ssize_t i = 0; i < n_pieces; i++) {
        if (!PyBytes_CheckExact(PyList_GET_ITEM(pieces, i))) {
            PyErr_Format(PyExc_TypeError, "pieces[%zd] is not bytes", i);
            return NULL;
        }
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return NULL;
    PyObject *rows = NULL;
    const char *format = view.format ? view.format : "B";
    if (format[0] == '=' || format[0] == '<' || format[0] == '@')
        format++;
    if (view.ndim != 2 || view.itemsize != 4 || strcmp(format, "i") != 0) {
        PyErr_SetString(PyExc_TypeError, "index must be a C-contiguous 2-d array of int32");
        goto done;
    }
    Py_ssize_t n_rows = view.shape[0], width = view.shape[1];
    const int32_t *positions = (const int32_t *)view.buf;
    for (Py_ssize_t k = 0; k < n_rows * width; k++) {
        if (positions[k] < 0 || positions[k] >= n_pieces) {
            PyErr_Format(PyExc_IndexError, "index value %d is not a position in pieces (%zd of them)",
                         (int)positions[k], n_pieces);
            goto done;
        }
    }
    rows = PyList_New(n_rows);
    if (rows == NULL)
        goto done;
    for (Py_ssize_t r = 0; r < n_rows; r++) {
        const int32_t *row = positions + r * width;
        Py_ssize_t size = 0;
        for (Py_ssize_t j = 0; j < width; j++)
            size += PyBytes_GET_SIZE(PyList_GET_ITEM(pieces, row[j]));
        PyObject *joined = PyBytes_FromStringAndSize(NULL, size);
        if (joined == NULL) {
            Py_CLEAR(rows);
            goto done;
        }
        char *out = PyBytes_AS_STRING(joined);
        for (Py_ssize_t j = 0; j < width; j++) {
            PyObject *piece = PyList_GET_ITEM(pieces, row[j]);
            Py_ssize_t length = PyBytes_GET_SIZE(piece);
            memcpy(out, PyBytes_AS_STRING(piece), (size_t)length);
            out += length;
        }
        PyList_SET_ITEM(rows, r, joined);
    }
done:
    PyBuffer_Release(&view);
    return rows;
}

static PyMethodDef methods[] = {
    {"join_rows", (PyCFunction)(void (*)(void))join_rows, METH_FASTCALL,
     "join_rows(pieces, index) -> list[bytes]: row r is b''.join(pieces[i] for i in index[r])."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "risklens.audit._join",
    "Audit record bodies joined from their pieces in native code (see risklens.audit._body).", -1, methods,
};

PyMODINIT_FUNC
PyInit__join(void)
{
    return PyModule_Create(&module);
}
