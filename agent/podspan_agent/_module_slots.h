/*
 * Module-state helpers the agent's C extensions share: fill a static PyObject slot once, with an interned string
 * or an attribute of a Python module. Each returns 0, or -1 with an exception set. A filled slot is kept.
 */
#ifndef PODSPAN_MODULE_SLOTS_H
#define PODSPAN_MODULE_SLOTS_H

#include <Python.h>

static inline int intern(PyObject **slot, const char *text) {
    if (*slot == NULL)
        *slot = PyUnicode_InternFromString(text);
    return *slot == NULL ? -1 : 0;
}

static inline int import_attr(PyObject **slot, const char *module_name, const char *name) {
    if (*slot != NULL)
        return 0;
    PyObject *module = PyImport_ImportModule(module_name);
    if (module == NULL)
        return -1;
    *slot = PyObject_GetAttrString(module, name);
    Py_DECREF(module);
    return *slot == NULL ? -1 : 0;
}

#endif /* PODSPAN_MODULE_SLOTS_H */
