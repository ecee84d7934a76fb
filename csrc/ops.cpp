// The op registry of the extension: the samplewt_ops library, with every
// schema of op_schemas.h. Kernels register per device in cpu/ops_cpu.cpp and
// cuda/ops_cuda.cu, through the shared op wrappers of op_wrappers.h; autograd
// for both in autograd.cpp; fake (meta) kernels from Python (samplewt_ops/_ops.py).
#include <Python.h>
#include <torch/library.h>

#include "op_schemas.h"

extern "C" {
// Importing samplewt_ops._C loads this library, which registers the ops.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(samplewt_ops, m) {
  samplewt::define_ops(m);
  // Which CPU instruction set the kernels dispatch to ("AVX512", ...).
  m.def("cpu_isa() -> str");
  // The output bytes from which the CPU kernels stream their stores (kernel_args.h).
  m.def("cpu_stream_bytes() -> int");
  // Frees the CPU output buffers kept for reuse (large_buffer.h); returns their bytes.
  m.def("empty_cpu_buffer_cache() -> int");
  // A zeroed CPU tensor for an adaptive table's per-sample state, on huge
  // pages when large (large_buffer.h).
  m.def("table_zeros(int[] size, ScalarType dtype) -> Tensor");
}
