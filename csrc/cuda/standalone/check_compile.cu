// The torch-free compile check of the CUDA kernels (make nvcc-check):
//     nvcc -std=c++17 -arch=sm_90 -c csrc/cuda/standalone/check_compile.cu
// Every launcher unit of the extension in one translation unit, which needs
// only the CUDA toolkit. It sits outside csrc/cuda/*.cu, the build's glob.
#include "../elem_loss_bfloat16.cu"
#include "../elem_loss_double.cu"
#include "../elem_loss_float.cu"
#include "../elem_loss_half.cu"
#include "../row_loss_bfloat16.cu"
#include "../row_loss_double.cu"
#include "../row_loss_float.cu"
#include "../row_loss_half.cu"
#include "../table_update.cu"
