// The portable CPU loss kernels (at::vec's scalar-emulated vectors, compiled
// with the default flags); see loss_kernels_impl.h.
#include "kernel_args.h"

#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT
#define SWT_ISA_NAMESPACE isa_default
#include "loss_kernels_impl.h"
