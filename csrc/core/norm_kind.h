// How a p-norm reduces the elements of a gradient list (the finalize step turns the reduction into
// the norm): shared by the CPU clipping ops (csrc/cpu/clip.cpp, via csrc/clip.h) and the CUDA
// multi-tensor kernels (csrc/kernels/multi_tensor.cu). Framework-free.
#pragma once
#include <cstdint>

namespace rnnfast {
namespace core {

enum class NormKind : int32_t { Zero = 0, One = 1, Two = 2, Inf = 3, NegInf = 4, P = 5 };

}  // namespace core
}  // namespace rnnfast
