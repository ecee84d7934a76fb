// elem-loss launchers for __half: one translation unit per dtype, built in parallel.
#include "elem_launch.cuh"

namespace samplewt {
namespace cuda {
SWT_INSTANTIATE_ELEM_LOSS(__half)
}  // namespace cuda
}  // namespace samplewt
