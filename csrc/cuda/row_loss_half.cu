// row-loss launchers for __half: one translation unit per dtype, built in parallel.
#include "row_launch.cuh"

namespace samplewt {
namespace cuda {
SWT_INSTANTIATE_ROW_LOSS(__half)
}  // namespace cuda
}  // namespace samplewt
