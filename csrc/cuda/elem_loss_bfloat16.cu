// elem-loss launchers for __nv_bfloat16: one translation unit per dtype, built in parallel.
#include "elem_launch.cuh"

namespace samplewt {
namespace cuda {
SWT_INSTANTIATE_ELEM_LOSS(__nv_bfloat16)
}  // namespace cuda
}  // namespace samplewt
