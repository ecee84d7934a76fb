// One translation unit of the CPU loss kernels (loss_kernels_impl.h) built for
// an x86 instruction set: kernels_avx2.cpp and kernels_avx512.cpp each define
// SWT_ISA_AVX2 or SWT_ISA_AVX512 and include this file, which holds all that
// the two units share. Shared headers come first, outside the target pragma,
// so only the unit's own (namespaced) code gets the set's instructions.
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

#if defined(SWT_ISA_AVX512)
#define SWT_ISA AVX512
#elif defined(SWT_ISA_AVX2)
#define SWT_ISA AVX2
#else
#error "isa_unit.h: define SWT_ISA_AVX2 or SWT_ISA_AVX512 first"
#endif

#if defined(__GNUC__) && (defined(__x86_64__) || defined(_M_X64))
#pragma GCC push_options
#if defined(SWT_ISA_AVX512)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2,popcnt")
#else
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,popcnt")
#endif
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
#if defined(SWT_ISA_AVX512)
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
#else
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define SWT_ISA_NAMESPACE isa_avx2
#endif
#include "loss_kernels_impl.h"
#pragma GCC pop_options
#else
// Not an x86-64 GCC/Clang build: the portable kernels stand in.
namespace samplewt {
namespace cpu {
namespace SWT_ISA {
void row_loss_kernel(const RowArgs& a) { DEFAULT::row_loss_kernel(a); }
void elem_loss_kernel(const ElemArgs& a) { DEFAULT::elem_loss_kernel(a); }
}  // namespace SWT_ISA
}  // namespace cpu
}  // namespace samplewt
#endif
