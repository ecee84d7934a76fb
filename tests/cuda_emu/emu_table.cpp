// The adaptive table's kernels, compiled for the host emulation.
#include "table_update.cu"
