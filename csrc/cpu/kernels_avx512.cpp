// The CPU loss kernels built for the AVX512 instruction set; see
// loss_kernels_impl.h. Shared headers come first, outside the target
// pragma, so only this unit's own (namespaced) code gets AVX512 instructions.
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
#define SWT_HAVE_AVX512 1
#endif

#ifdef SWT_HAVE_AVX512
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2,popcnt")
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
#ifndef __AVX512F__
#define __AVX512F__ 1
#endif
#ifndef __AVX512BW__
#define __AVX512BW__ 1
#endif
#ifndef __AVX512VL__
#define __AVX512VL__ 1
#endif
#ifndef __AVX512DQ__
#define __AVX512DQ__ 1
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#define SWT_ISA_NAMESPACE isa_avx512
#include "loss_kernels_impl.h"
#pragma GCC pop_options
#else
// Not an x86-64 GCC/Clang build: the portable kernels stand in.
namespace samplewt {
namespace cpu {
namespace AVX512 {
void row_loss_kernel(const RowArgs& a) { DEFAULT::row_loss_kernel(a); }
void elem_loss_kernel(const ElemArgs& a) { DEFAULT::elem_loss_kernel(a); }
}  // namespace AVX512
}  // namespace cpu
}  // namespace samplewt
#endif
