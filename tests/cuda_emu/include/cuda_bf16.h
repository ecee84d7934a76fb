// Stand-in for the CUDA toolkit header under the host emulation.
#pragma once
#include "../emulator.h"
