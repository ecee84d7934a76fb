// row-loss launchers for double: one translation unit per dtype, built in parallel.
#include "row_launch.cuh"

namespace samplewt {
namespace cuda {
SWT_INSTANTIATE_ROW_LOSS(double)
}  // namespace cuda
}  // namespace samplewt
