// row-loss launchers for __nv_bfloat16: one translation unit per dtype, built in parallel.
#include "row_launch.cuh"

namespace samplewt {
namespace cuda {
SWT_INSTANTIATE_ROW_LOSS(__nv_bfloat16)
}  // namespace cuda
}  // namespace samplewt
