// The backward's scaling kernel (grad *= grad_output), compiled for the host
// emulation.
#include "grad_scale.cu"
