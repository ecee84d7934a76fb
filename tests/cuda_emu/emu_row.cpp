// The row-loss launchers of the extension, compiled for the host emulation.
#include "row_loss_bfloat16.cu"
#include "row_loss_double.cu"
#include "row_loss_float.cu"
#include "row_loss_half.cu"
