// elem-loss launchers for float: one translation unit per dtype, built in parallel.
#include "elem_launch.cuh"

namespace samplewt {
namespace cuda {
SWT_INSTANTIATE_ELEM_LOSS(float)
}  // namespace cuda
}  // namespace samplewt
