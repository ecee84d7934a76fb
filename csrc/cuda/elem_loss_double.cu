// elem-loss launchers for double: one translation unit per dtype, built in parallel.
#include "elem_launch.cuh"

namespace samplewt {
namespace cuda {
SWT_INSTANTIATE_ELEM_LOSS(double)
}  // namespace cuda
}  // namespace samplewt
