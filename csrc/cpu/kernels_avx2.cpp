// The CPU loss kernels built for the AVX2 instruction set; see isa_unit.h
// and loss_kernels_impl.h.
#define SWT_ISA_AVX2 1
#include "isa_unit.h"
