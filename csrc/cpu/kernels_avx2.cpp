// The CPU loss kernels built for the AVX2 instruction set; see
// loss_kernels_impl.h. Shared headers come first, outside the target
// pragma, so only this unit's own (namespaced) code gets AVX2 instructions.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "kernel_args.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(_M_X64))
#define SWT_HAVE_AVX2 1
#endif

#ifdef SWT_HAVE_AVX2
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,popcnt")
// Sleef declares its vector functions only under the ISA macros that
// -m flags would define; the pragma alone does not define them.
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define SWT_ISA_NAMESPACE isa_avx2
#include "loss_kernels_impl.h"
#pragma GCC pop_options
#else
// Not an x86-64 GCC/Clang build: the portable kernels stand in.
namespace samplewt {
namespace cpu {
namespace AVX2 {
void row_loss_kernel(const RowArgs& a) { DEFAULT::row_loss_kernel(a); }
void elem_loss_kernel(const ElemArgs& a) { DEFAULT::elem_loss_kernel(a); }
}  // namespace AVX2
}  // namespace cpu
}  // namespace samplewt
#endif
