// row-loss launchers for float: one translation unit per dtype, built in parallel.
#include "row_launch.cuh"

namespace samplewt {
namespace cuda {
SWT_INSTANTIATE_ROW_LOSS(float)
}  // namespace cuda
}  // namespace samplewt
