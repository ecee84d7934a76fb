// The element-wise launchers of the extension, compiled for the host emulation.
#include "elem_loss_bfloat16.cu"
#include "elem_loss_double.cu"
#include "elem_loss_float.cu"
#include "elem_loss_half.cu"
